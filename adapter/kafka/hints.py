"""Hints added to connection errors, the same for every engine."""

from __future__ import annotations

import socket
import ssl


def tls_hint(server: str, protocol: str, setting: str) -> str:
    """'; SERVER expects TLS: ...' when a plaintext client meets a TLS listener, else ''."""
    if protocol.upper() not in ("PLAINTEXT", "SASL_PLAINTEXT") or not speaks_tls(server):
        return ""
    return f"; {server} expects TLS: set {setting} to SSL or SASL_SSL"


def speaks_tls(server: str) -> bool:
    """True if a TLS handshake (certificate not checked) with `server` succeeds within 2 s."""
    host, _, port = server.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2) as sock, \
                context.wrap_socket(sock, server_hostname=host.strip("[]") or None):
            return True
    except (OSError, ValueError):
        return False
