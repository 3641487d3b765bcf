"""Kafka's rule for topic names, which every topic the project names or creates must follow."""

from __future__ import annotations

import re

from adapter.errors import ConfigError

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def check_topic(name: str, setting: str = "topic") -> str:
    """Return `name` if Kafka accepts it as a topic name, else raise ConfigError."""
    if not _TOPIC.match(name) or name in (".", ".."):
        raise ConfigError(f"{setting}: {name!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-')")
    return name
