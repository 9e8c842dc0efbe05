"""Kafka boundary helpers that need no broker: offsets of dropped batches, and librdkafka's settings."""

from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from inspector.errors import ConfigError
from inspector.kafka.transport import first_offsets, next_offsets
from inspector.settings import KafkaSettings


def _records(*spec: tuple[int, int]) -> list:
    return [SimpleNamespace(topic="frames", partition=p, offset=o) for p, o in spec]


def test_a_dropped_batch_is_read_again_from_its_first_offset_per_partition():
    records = _records((0, 7), (1, 3), (0, 5), (0, 6), (1, 4))
    assert first_offsets(records) == {TopicPartition("frames", 0): 5, TopicPartition("frames", 1): 3}
    assert next_offsets(records) == {TopicPartition("frames", 0): 8, TopicPartition("frames", 1): 5}
    assert first_offsets([]) == {}


def test_librdkafka_settings_carry_sasl_and_tls_under_their_own_names(tmp_path):
    confluent = pytest.importorskip("inspector.kafka.confluent")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = confluent.librdkafka_config(KafkaSettings(
        bootstrap_servers="a:9093,b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="line-7", sasl_password="s3cret", ssl_cafile=ca))
    assert cfg["bootstrap.servers"] == "a:9093,b:9093"
    assert (cfg["security.protocol"], cfg["sasl.mechanisms"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (cfg["sasl.username"], cfg["sasl.password"]) == ("line-7", "s3cret")
    assert cfg["ssl.ca.location"] == str(ca)
    assert not any(k.startswith("sasl") for k in confluent.librdkafka_config(KafkaSettings()))


def test_librdkafka_settings_refuse_what_kafka_python_refuses(tmp_path):
    confluent = pytest.importorskip("inspector.kafka.confluent")
    with pytest.raises(ConfigError, match="SASL needs"):
        confluent.librdkafka_config(KafkaSettings(security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(ConfigError, match="does not exist"):
        confluent.librdkafka_config(KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem"))


def test_a_delivery_report_reads_like_a_kafka_python_future():
    confluent = pytest.importorskip("inspector.kafka.confluent")
    ok, bad = confluent._Delivery(), confluent._Delivery()
    assert not ok.is_done
    ok(None, object())
    bad("MSG_TIMED_OUT", None)
    assert ok.is_done and not ok.failed()
    assert bad.is_done and bad.failed() and bad.exception == "MSG_TIMED_OUT"


def test_the_fetch_wait_defaults_to_what_each_transport_was_measured_best_with():
    # kafka-python: a fetch for idle partitions alone holds back the busy ones for the whole wait (RESULTS, run E).
    assert KafkaSettings().fetch_wait_ms() == 5
    assert KafkaSettings(transport="confluent").fetch_wait_ms() == 50
    assert KafkaSettings(transport="confluent", fetch_max_wait_ms=0).fetch_wait_ms() == 0
    with pytest.raises(ValueError):
        KafkaSettings(fetch_max_wait_ms=60_000)
