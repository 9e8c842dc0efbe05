"""`inspector kafka-health`: the Kafka cluster's health (brokers, under-replicated and offline partitions) for Prometheus."""
