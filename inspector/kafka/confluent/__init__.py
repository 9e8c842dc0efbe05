"""The optional confluent-kafka (librdkafka) transport, implementing the protocols of `inspector.kafka.transport`.

kafka-python parses every record in Python, and on a GPU that caps one worker near 3,400 frames/s of 20 KB
JPEGs (bench/RESULTS.md). librdkafka fetches and parses in C threads. Select it with
`INSPECTOR_KAFKA__TRANSPORT=confluent`; kafka-python stays the default. Records, partitions and offsets
cross this boundary as the project's types (`FrameRecord`, `transport.Partition`), and every librdkafka error
leaves as `TransportError` or `ConfigError`.
"""
