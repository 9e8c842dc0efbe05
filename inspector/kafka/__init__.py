"""Kafka at the boundary: the transport Protocols, the kafka-python and librdkafka clients, a local broker."""
