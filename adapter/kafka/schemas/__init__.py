"""Kafka protocol messages kafka-python 3.0 lacks, in its JSON schema format (version 0 only).

ConsumerGroupDescribe (API key 69, KIP-848): classic DescribeGroups answers "not a classic
group" for groups on the consumer protocol, the default of the `confluent` engine's handlers."""
