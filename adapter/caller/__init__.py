"""The caller side: the request/reply core (`requester`, `stream`), the broker it talks to
(`transport`: Kafka through `adapter.kafka`, or memory for tests; `replies`: reading reply
partitions) and the public channels for Python callers (`KafkaChannel`, `AioKafkaChannel`).
Used by the frontend and by the handlers' test kit; imports `protocol`, `kafka`, `runtime`."""
