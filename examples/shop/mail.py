"""The mail service's handler: a plain gRPC servicer; the outbound mail sits behind `MailSender`.

    python -m handlers examples.shop.mail:MailService

The sender is chosen from the environment when the servicer is created with no
arguments: ``MAIL_SMTP_HOST`` (and ``MAIL_SMTP_PORT``, ``MAIL_FROM``) sends through
SMTP; otherwise mails are written as ``.eml`` files into ``MAIL_OUTBOX`` (default
``.outbox/``), which is what tests read.
"""

from __future__ import annotations

import email.message
import os
import smtplib
import uuid
from pathlib import Path
from typing import Protocol

import grpc
from shop.mail.v1 import mail_pb2, mail_pb2_grpc


class MailError(Exception):
    """The mail could not be sent."""


class MailSender(Protocol):
    def send(self, message: email.message.EmailMessage) -> None:
        """Send or raise MailError."""


class OutboxSender:
    """Writes each mail as an .eml file: for development and tests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def send(self, message: email.message.EmailMessage) -> None:
        path = self.folder / f"{message['Message-ID'].strip('<>')}.eml"
        path.write_bytes(bytes(message))


class SmtpSender:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def send(self, message: email.message.EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(str(exc)) from exc


def sender_from_env() -> MailSender:
    if host := os.environ.get("MAIL_SMTP_HOST"):
        return SmtpSender(host, int(os.environ.get("MAIL_SMTP_PORT", "25")))
    return OutboxSender(Path(os.environ.get("MAIL_OUTBOX", ".outbox")))


class MailService(mail_pb2_grpc.MailServiceServicer):
    def __init__(self, sender: MailSender | None = None) -> None:
        self.sender = sender or sender_from_env()
        self.sender_address = os.environ.get("MAIL_FROM", "coupons@shop.example")

    def SendMail(self, request: mail_pb2.SendMailRequest, context: grpc.ServicerContext) -> mail_pb2.SendMailReply:
        if "@" not in request.to:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a mail address: {request.to!r}")
        message = email.message.EmailMessage()
        message_id = f"<{uuid.uuid4()}@shop.example>"
        message["Message-ID"] = message_id
        message["From"] = self.sender_address
        message["To"] = request.to
        message["Subject"] = request.subject
        message.set_content(request.body)
        try:
            if request.to.endswith(".invalid"):
                raise MailError(f"domain of {request.to} does not exist")
            self.sender.send(message)
        except MailError as exc:
            return mail_pb2.SendMailReply(result=mail_pb2.FAILED, detail=str(exc))
        return mail_pb2.SendMailReply(result=mail_pb2.SENT, message_id=message_id)
