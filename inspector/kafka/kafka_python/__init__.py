"""The kafka-python transport (the default), implementing the protocols of `inspector.kafka.transport`.

Partitions leave as `transport.Partition`. Everything Kafka raises leaves this package as `TransportError` (or
`ConfigError` for bad settings), so the rest of the code deals with our own two exception types only.
"""
