"""What answers a request record when its handler's reply cannot: a rejection sent to the caller,
an error status when Kafka refused the reply, or a copy of the record on the dead-letter topic.

    answers = Answers(config, metrics, tracker, produce)
    if not answers.reply_allowed(request.reply_topic): ...
    await answers.rejected(record, where, "malformed request: ...", generation, answer=True)
    await answers.refused(record, where, generation, error)    # Kafka refused the reply

Nothing is lost: an answer Kafka refuses becomes a dead letter, retried until Kafka takes it. In
the exactly-once mode an answer's record is marked done in the transaction that carries it, as
replies are (`handlers.transactions`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable

import grpc

from adapter.errors import ConfigError, MalformedRecord, RecordRefused, TransactionAborted
from adapter.kafka import Record
from adapter.protocol import wire
from adapter.protocol.topics import check_topic
from adapter.runtime.config import WorkerConfig
from adapter.runtime.logs import record_fields
from adapter.runtime.metrics import HandlerMetrics
from handlers.calls import refused_status
from handlers.offsets import OffsetTracker

log = logging.getLogger(__name__)

#: Longest wait between two tries to dead-letter a request whose reply Kafka refused.
DEAD_LETTER_BACKOFF = 30.0
#: Calls whose reply an aborted transaction lost because Kafka refused it, remembered so that
#: their run again goes to the dead-letter topic instead of failing the next transaction too.
REFUSED_REMEMBERED = 1000

#: Hands a record to the producer (into the open transaction, exactly-once); the future it returns
#: ends when Kafka acknowledged the record: ``await produce(topic, value, key, headers, partition)``.
Produce = Callable[[str, bytes, bytes | None, list[tuple[str, bytes]], int | None], Awaitable[asyncio.Future[None]]]


class Answers:
    """Rejections, error statuses and dead letters for the request records of one handler process."""

    def __init__(self, config: WorkerConfig, metrics: HandlerMetrics, tracker: OffsetTracker, produce: Produce) -> None:
        self._config = config
        self._metrics = metrics
        self._tracker = tracker
        self._produce = produce
        #: Exactly-once: correlation id -> why Kafka refused its reply in an aborted transaction.
        self._refused: dict[bytes, str] = {}
        #: Set by a drain: dead letters stop retrying (their records stay uncommitted).
        self.draining = False

    def reply_allowed(self, topic: str) -> bool:
        """Whether replies may go to `topic` (`--allow-reply-topic`)."""
        try:
            check_topic(topic)
        except ConfigError:
            return False  # not even a legal topic name: the producer would refuse it
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self._config.reply_topics)

    def refused_before(self, correlation_id: bytes) -> str | None:
        """Why Kafka refused this call's reply in an aborted transaction, if it did (asked once)."""
        return self._refused.pop(correlation_id, None)

    async def rejected(self, record: Record, where: str, reason: str, generation: int, answer: bool) -> None:
        """Tell the caller `reason` with INVALID_ARGUMENT when `answer` and the record says where,
        else dead-letter it. A refused answer raises: the caller of this then goes to `refused`."""
        headers = record.headers
        cid = wire.correlation_id_of(headers)
        reply_to = [bytes(v or b"") for n, v in headers if n == wire.REPLY_TOPIC]
        reply_topic = reply_to[-1].decode(errors="replace") if reply_to else None
        if not (answer and cid and reply_topic and self.reply_allowed(reply_topic)):
            await self.dead_letter(record, where, reason, generation)
            return
        reply = wire.Reply(cid, code=grpc.StatusCode.INVALID_ARGUMENT, message=reason)
        # To the caller's partition when the header says it: with several frontends on one reply
        # topic, another partition's owner would drop it and the caller would wait for its deadline.
        await self._answer(record, generation, reply_topic, b"", reply.encode_headers(), wire.reply_partition_of(headers))

    async def refused(self, record: Record, where: str, generation: int, error: BaseException) -> None:
        """Kafka refused an answer to `record`: tell the caller with an error reply if that gets
        through, else dead-letter the request, retrying until it is (never lost)."""
        fields = record_fields(record)
        call = f"{fields.get('method') or '?'} call {fields.get('correlation_id') or '?'} ({where})"
        self._metrics.reply_errors.inc()
        log.warning("reply to %s refused by Kafka: %s", call, error, extra=fields)
        code, reason = refused_status(error)
        try:
            request = wire.decode_request(record.headers, record.value)
        except MalformedRecord:
            request = None  # a rejected record whose rejection was refused
        if self._config.exactly_once and isinstance(request, wire.Request) and isinstance(error, RecordRefused):
            # If this transaction aborts (a refusal seen only at delivery fails it), the call runs
            # again: it then goes to the dead-letter topic at once instead of failing the next one.
            self._refused[request.correlation_id] = reason
            while len(self._refused) > REFUSED_REMEMBERED:
                self._refused.pop(next(iter(self._refused)))
        if isinstance(request, wire.Request) and request.reply_topic and self.reply_allowed(request.reply_topic):
            reply = wire.Reply(request.correlation_id, code=code, message=reason)
            try:
                await self._answer(record, generation, request.reply_topic, b"", reply.encode_headers(),
                                   request.reply_partition)
                return
            except TransactionAborted:
                raise
            except Exception as again:
                log.warning("the %s status for %s was refused too (%s): dead-lettering the request", code.name,
                            call, again, extra=fields)
        await self.dead_letter(record, where, reason, generation)

    async def dead_letter(self, record: Record, where: str, reason: str, generation: int) -> None:
        """Copy `record` to the dead-letter topic with `reason`, retrying until Kafka takes it (or a drain)."""
        backoff = 1.0
        while True:
            try:
                await self._answer(record, generation, self._config.dead_letter_topic, record.value or b"",
                                   wire.dead_letter_headers(record.headers, reason, where))
                break
            except TransactionAborted:
                raise
            except Exception as exc:
                if self.draining:
                    raise
                log.error("cannot dead-letter %s, retrying in %.0fs: %s", where, backoff, exc,
                          extra=record_fields(record))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DEAD_LETTER_BACKOFF)
        self._metrics.records_dead_lettered.inc()

    async def _answer(self, record: Record, generation: int, topic: str, value: bytes,
                      headers: list[tuple[str, bytes]], partition: int | None = None) -> None:
        """Produce what answers `record` and wait for Kafka; in the exactly-once mode its offset is
        done in the transaction that carries the answer, as for replies."""
        future = await self._produce(topic, value, record.key, headers, partition)
        if self._config.exactly_once:
            self._tracker.done(record.topic, record.partition, record.offset, generation)
        await future
