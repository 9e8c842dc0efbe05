"""The broker side, on a broker this module owns (`own_broker`), never the session one: an outage the producer and
the worker ride out, and SASL/SCRAM."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from inspector.settings import KafkaSettings
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import TopicReader, producer_settings, restartable_broker
from .fault_scenarios import (
    metric,
    new_topics,
    score_ids,
    summary,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


SCRAM_USER, SCRAM_PASSWORD = "alice", "s3cret-Pa55word-9f2c"


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A broker this module may stop and restart, with a SASL_PLAINTEXT/SCRAM-SHA-256 listener as well."""
    with restartable_broker(tmp_path_factory.mktemp("own-kafka"), scram_users={SCRAM_USER: SCRAM_PASSWORD}) as broker:
        yield broker



# ---- the broker goes away and comes back ----------------------------------------------------------------


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_a_broker_outage_is_ridden_out_by_producer_and_worker(own_broker, start_worker, capsys, exactly_once):
    fps, down_s, after_s = 10.0, 20.0, 6.0
    topics = new_topics(own_broker.bootstrap_servers, "outage")
    source = ListSource(planned_stream(producer_settings(seed=41), n_frames=1000, n_defects=20))
    publisher = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-o", fps=fps))
    worker = start_worker(topics, INSPECTOR_BATCH__MAX_SIZE="8",
                          INSPECTOR_KAFKA__EXACTLY_ONCE=str(exactly_once).lower())
    publishing = threading.Thread(target=publisher.publish, args=(source,), daemon=True)
    publishing.start()
    scores = TopicReader(own_broker.bootstrap_servers, topics.scores)
    try:
        scores.until(lambda rs: len(score_ids(rs)) >= 30, timeout_s=60)
        scored_before = len(score_ids(scores.records))
        scores.close()
        sent_before = publisher.stats.sent
        own_broker.kill()  # SIGKILL: no controlled shutdown
        time.sleep(down_s)
        t_restart = time.monotonic()
        own_broker.start()
        restart_s = time.monotonic() - t_restart
        sent_down = publisher.stats.sent - sent_before  # while the broker was down or starting
        time.sleep(after_s)
        source.stop()  # the producer keeps going for a while after the broker is back, then ends
        publishing.join(timeout=90)
        assert not publishing.is_alive(), "the producer did not finish"
        n = publisher.stats.sent
        assert publisher.stats.acked == n and publisher.stats.failed == 0, publisher.stats

        scores = TopicReader(own_broker.bootstrap_servers, topics.scores)
        scores.until(lambda rs: len(score_ids(rs)) >= n or worker.proc.poll() is not None, timeout_s=120)
        ids = score_ids(scores.records)
        sent_ids = {f"cam-o-{publisher._run_id}-{i}" for i in range(n)}
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log()}"
        assert set(ids) == sent_ids, f"lost {len(sent_ids - set(ids))} frames"
        assert sent_down > 0 and n - sent_before - sent_down > 0, "frames must be produced during and after"
        duplicated = sum(ids.values()) - len(ids)
        assert duplicated <= (0 if exactly_once else 2 * 8), f"{duplicated} duplicates from one outage"
        # kafka-python can lose a transaction's request as the broker dies: given up, fenced, its frames scored again.
        given_up = metric(worker, "inspector_transactions_given_up_total")
        assert worker.terminate() == 0
    finally:
        scores.close()
        publisher.close()
    summary(capsys, "broker-outage" + ("-eos" if exactly_once else ""), runs=1, down_s=down_s, restart_s=round(restart_s, 1), sent=n,
             sent_before=sent_before, sent_during=sent_down, sent_after=n - sent_before - sent_down,
             scored_before=scored_before, scored=len(ids), lost=len(sent_ids - set(ids)), duplicated=duplicated,
             dead_lettered=0, transactions_given_up=int(given_up))


# ---- security: SASL_PLAINTEXT + SCRAM-SHA-256 -------------------------------------------------------------


def test_sasl_scram_worker_scores_and_a_wrong_password_fails_in_one_line(own_broker, start_worker, capsys):
    topics = new_topics(own_broker.bootstrap_servers, "sasl")
    sasl = {"INSPECTOR_KAFKA__BOOTSTRAP_SERVERS": own_broker.sasl_bootstrap_servers,
            "INSPECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "INSPECTOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256", "INSPECTOR_KAFKA__SASL_USERNAME": SCRAM_USER}
    over_sasl = KafkaSettings(**{
        **topics.kafka_settings().model_dump(), "bootstrap_servers": own_broker.sasl_bootstrap_servers,
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": SCRAM_USER,
        "sasl_password": SCRAM_PASSWORD})
    publisher = Publisher(over_sasl, producer_settings(camera_id="cam-a"))
    frames = planned_stream(producer_settings(seed=101), n_frames=30, n_defects=3)
    worker = start_worker(topics, **sasl, INSPECTOR_KAFKA__SASL_PASSWORD=SCRAM_PASSWORD)
    publisher.publish(ListSource(frames))
    publisher.close()
    scores = TopicReader(own_broker.bootstrap_servers, topics.scores)  # the test reads over PLAINTEXT
    try:
        scores.until(lambda rs: len(score_ids(rs)) >= 30, timeout_s=90)
        ids = score_ids(scores.records)
    finally:
        scores.close()
    assert set(ids) == {f"cam-a-{publisher._run_id}-{i}" for i in range(30)}
    metrics = worker.metrics_text()
    assert worker.terminate() == 0
    assert SCRAM_PASSWORD not in worker.log_path.read_text() and SCRAM_PASSWORD not in metrics

    wrong = "wrong-" + SCRAM_PASSWORD[::-1]
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "inspector", "serve"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **topics.env(), **sasl, "INSPECTOR_KAFKA__SASL_PASSWORD": wrong,
                               "INSPECTOR_KAFKA__REQUEST_TIMEOUT_MS": "5000", "INSPECTOR_HTTP__PORT": "0",
                               "INSPECTOR_MODEL__DEVICE": "cpu"})
    refused_s = time.monotonic() - t0
    ours = [line for line in done.stderr.splitlines() if line.startswith("inspector serve: error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(ours) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "not the SCRAM-SHA-256 login of user" in ours[0] and SCRAM_USER in ours[0], ours
    assert wrong not in done.stdout + done.stderr and SCRAM_PASSWORD not in done.stdout + done.stderr
    summary(capsys, "sasl-scram", runs=2, sent=30, scored=len(ids), lost=30 - len(ids),
             duplicated=sum(ids.values()) - len(ids), dead_lettered=0, wrong_password_exit=done.returncode,
             wrong_password_seconds=round(refused_s, 1))
