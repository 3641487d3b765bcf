"""Log lines for people and for log shippers.

    log.warning("rejected %s: %s", where, reason, extra=logs.record_fields(record))

Errors about one call or one record carry the fields that find it: `method`,
`correlation_id` (hex), `topic`, `partition`, `offset`. The text format has them in the
message; `JsonFormatter` (``--log-format json``) also writes them as keys of their own, so a
log shipper can search by correlation id without parsing messages.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from adapter.protocol import wire

#: The call fields a log record may carry (`extra=`), in the order JSON lines show them.
FIELDS = ("method", "correlation_id", "topic", "partition", "offset")


def call_fields(method: str | None = None, correlation_id: bytes | None = None, topic: str | None = None,
                partition: int | None = None, offset: int | None = None) -> dict[str, Any]:
    """`extra=` for a log line about one call; unknown fields are left out."""
    values = {"method": method or None, "correlation_id": correlation_id.hex() if correlation_id else None,
              "topic": topic, "partition": partition, "offset": offset}
    return {name: value for name, value in values.items() if value is not None}


#: A handler's peer, ``kafka:TOPIC/PARTITION@OFFSET`` (topic names have no ``/`` or ``@``).
_PEER = re.compile(r"^[^:]*:(?P<topic>[^/]+)/(?P<partition>\d+)@(?P<offset>\d+)$")


def peer_location(peer: str) -> tuple[str | None, int | None, int | None]:
    """The topic, partition and offset of a handler's peer string (Nones for any other peer)."""
    where = _PEER.match(peer)
    if where is None:
        return None, None, None
    return where["topic"], int(where["partition"]), int(where["offset"])


def record_fields(record: Any) -> dict[str, Any]:
    """`extra=` for a log line about a Kafka record (a request, frame or reply), from its headers."""
    method = None
    for name, value in record.headers or ():
        if name == wire.METHOD and value:
            method = bytes(value).decode(errors="replace")
    return call_fields(method, wire.correlation_id_of(record.headers), record.topic, record.partition, record.offset)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, logger, message, then any call fields."""

    converter = staticmethod(time.gmtime)

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": f"{self._process_name}[{record.process}]",
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
