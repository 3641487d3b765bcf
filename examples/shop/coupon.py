"""The coupon service's handler: issues a coupon, then asks the mail service to send it.

    python -m handlers examples.shop.coupon:CouponService

The mail call goes through the gRPC frontend (``COUPON_MAIL_TARGET``, default
127.0.0.1:50051), hence over Kafka to whichever process serves the mail service.
"""

from __future__ import annotations

import datetime
import hashlib
import os

import grpc
from google.protobuf import timestamp_pb2
from shop.coupon.v1 import coupon_pb2, coupon_pb2_grpc
from shop.mail.v1 import mail_pb2, mail_pb2_grpc


class CouponService(coupon_pb2_grpc.CouponServiceServicer):
    def __init__(self, mail: mail_pb2_grpc.MailServiceStub | None = None) -> None:
        if mail is None:
            channel = grpc.insecure_channel(os.environ.get("COUPON_MAIL_TARGET", "127.0.0.1:50051"))
            mail = mail_pb2_grpc.MailServiceStub(channel)
        self.mail = mail

    def IssueCoupon(self, request: coupon_pb2.IssueCouponRequest, context: grpc.ServicerContext) -> coupon_pb2.IssueCouponReply:
        if not request.user_id or not request.email:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id and email are required")
        percent = request.percent_off or 10
        if percent > 90:
            context.abort(grpc.StatusCode.OUT_OF_RANGE, f"percent_off {percent} is over 90")
        digest = hashlib.sha256(f"{request.user_id}/{request.campaign}".encode()).hexdigest()[:10].upper()
        code = f"{(request.campaign or 'WELCOME').upper()}-{digest}"
        expires = timestamp_pb2.Timestamp()
        expires.FromDatetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30))
        mail = mail_pb2.SendMailRequest(
            user_id=request.user_id,
            to=request.email,
            subject=f"Your {percent}% coupon",
            body=f"Hello,\n\nuse code {code} for {percent}% off until {expires.ToDatetime():%Y-%m-%d}.\n",
        )
        remaining = context.time_remaining()
        try:
            sent = self.mail.SendMail(mail, timeout=min(remaining or 10.0, 10.0))
            result, detail = sent.result, sent.detail
        except grpc.RpcError as exc:
            result, detail = mail_pb2.FAILED, f"mail service: {exc.code().name}: {exc.details()}"
        return coupon_pb2.IssueCouponReply(code=code, expires_at=expires, mail_result=result, mail_detail=detail)
