"""`inspector ui` in a real headless Chromium against the real broker: a defect frame's alert appears on the wall
with its evidence image, "false alarm" writes exactly one feedback record, a hostile camera id stays text, what the
sorter did with an alert shows beside it, and the page keeps going across a broker restart. Screenshots are saved
as test artifacts (test-artifacts/ui/)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer

from inspector import evidence
from inspector.contracts import Alert, EjectionRecord, EvidenceRef, Feedback
from producers.base import Publisher
from producers.synthetic import ListSource, planned_stream

from .conftest import TopicReader, Topics, producer_settings, restartable_broker, screenshot, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

HOSTILE_CAMERA = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def _evidence_cards(driver) -> list:
    """The wall's cards whose evidence image has loaded."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#wall .card')).filter("
        "c => { const i = c.querySelector('img'); return i && i.complete && i.naturalWidth > 0; })")


def test_a_defect_frames_alert_appears_with_its_evidence_and_false_alarm_writes_one_record(
        topics, start_worker, start_ui, browser):
    start_worker(topics)
    ui = start_ui(topics)
    browser.get(ui.url + "/")
    wait_for(lambda: browser.find_element("id", "status").text == "live", what="the event stream")

    frames = planned_stream(producer_settings(seed=21), n_frames=12, n_defects=3)
    stats = Publisher(topics.kafka_settings(), producer_settings(camera_id="cam-ui")).publish(ListSource(frames))
    assert stats.acked == 12
    card = wait_for(lambda: _evidence_cards(browser), timeout_s=120, what="an alert with its evidence image")[0]
    assert card.find_element("css selector", ".camera").text == "cam-ui"
    assert "threshold" in card.find_element("css selector", ".score").text
    frame_id = card.get_attribute("data-frame-id")
    # Per camera, the frames scored and the alerts among them (pushed every few seconds).
    wait_for(lambda: browser.find_element("css selector", "#counts tbody").text.startswith("cam-ui 12 "),
          timeout_s=60, what="the per-camera counts")
    alerts_shown = int(browser.find_element("css selector", "#counts tbody").text.split()[2])
    assert alerts_shown == len(browser.find_elements("css selector", "#wall .card")) >= 1
    screenshot(browser, "wall")

    card.find_element("css selector", "button.false-alarm").click()
    wait_for(lambda: "false alarm" in card.find_element("css selector", ".feedback-result").text,
          what="the feedback acknowledgement")
    card.find_element("css selector", "button.false-alarm").click()  # a second click records nothing more
    time.sleep(1)
    feedback = TopicReader(topics.bootstrap, topics.feedback)
    try:
        feedback.until(lambda rs: len(rs) >= 1, timeout_s=30)
        feedback.until(lambda _rs: False, timeout_s=3)  # and nothing else arrives
        records = [Feedback.model_validate_json(r.value) for r in feedback.records]
    finally:
        feedback.close()
    assert len(records) == 1
    assert records[0].frame_id == frame_id and records[0].verdict == "false_alarm"
    assert records[0].camera_id == "cam-ui" and records[0].origin and records[0].origin.startswith(topics.frames)
    assert 'inspector_feedback_total{camera="cam-ui",verdict="false_alarm"} 1.0' in ui.get("/metrics")[1].decode()
    # A page started later (a restart, or a second operator's) reads the verdict back from the feedback topic.
    later = start_ui(topics)
    wait_for(lambda: b"<th>verdict</th><td>false_alarm</td>" in later.get("/alert/" + frame_id)[1], timeout_s=120,
          what="the verdict read back by a second page")

    # The alert page: the evidence beside the original frame, fetched from the frames topic by its origin.
    browser.get(ui.url + "/alert/" + frame_id)
    images = wait_for(lambda: [i for i in browser.find_elements("css selector", ".alert-page img")
                            if browser.execute_script("return arguments[0].naturalWidth", i) > 0],
                   what="the alert page's images")
    assert {i.get_attribute("alt") for i in images} == {"evidence", "original frame"}
    screenshot(browser, "alert-page")


def _publish_alert(bootstrap: str, topics: Topics, frame_id: str, camera_id: str) -> None:
    """An alert and its evidence as the worker would publish them (for ids a producer would never send)."""
    frame = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    heat = np.zeros((32, 32), np.float32)
    heat[4:12, 4:12] = 1.0
    now = time.time_ns()
    alert = Alert(frame_id=frame_id, camera_id=camera_id, sequence=1, captured_ns=now - 5_000_000, scored_ns=now,
                  published_ns=now, score=0.5, threshold=0.1, model_id="m", model_version="1",
                  evidence=EvidenceRef(topic=topics.evidence, key=frame_id))
    key, value, headers = evidence.to_record(evidence.render(jpeg, heat, 0.25, None), frame_id, camera_id)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topics.alerts, key=camera_id.encode(), value=alert.to_json()).get(30)
        producer.send(topics.evidence, key=key.encode(), value=value, headers=headers).get(30)
    finally:
        producer.close()


def test_a_hostile_camera_id_renders_as_text_on_the_wall_and_the_alert_page(topics, start_ui, browser):
    ui = start_ui(topics)
    browser.get(ui.url + "/")
    wait_for(lambda: browser.find_element("id", "status").text == "live", what="the event stream")
    _publish_alert(topics.bootstrap, topics, "frame-<b>x</b>", HOSTILE_CAMERA)
    card = wait_for(lambda: _evidence_cards(browser), what="the hostile alert")[0]
    assert card.find_element("css selector", ".camera").text == HOSTILE_CAMERA
    assert browser.execute_script("return window.__pwned") is None
    assert browser.find_elements("css selector", "#wall script, #wall img[src='x']") == []
    screenshot(browser, "hostile-camera")

    card.find_element("css selector", "a.details-link").click()
    wait_for(lambda: browser.find_elements("css selector", ".alert-page"), what="the alert page")
    assert browser.find_element("css selector", "h1 .camera").text == HOSTILE_CAMERA
    assert browser.execute_script("return window.__pwned") is None
    status, page = ui.get("/alert/" + urllib.request.quote("frame-<b>x</b>", safe=""))
    assert status == 200 and b"<script>window" not in page and b"&lt;script&gt;" in page


def test_the_sorters_ejection_shows_on_the_wall_and_the_alert_page(topics, start_ui, browser):
    from inspector.kafka.kafka_python.clients import create_topics

    ejections = f"ejections-{topics.group}"
    create_topics(topics.kafka_settings(), {ejections: 1})
    ui = start_ui(topics, INSPECTOR_KAFKA__EJECTIONS_TOPIC=ejections)
    browser.get(ui.url + "/")
    wait_for(lambda: browser.find_element("id", "status").text == "live", what="the event stream")
    _publish_alert(topics.bootstrap, topics, "frame-e", "cam-e")
    card = wait_for(lambda: _evidence_cards(browser), what="the alert")[0]
    assert not card.find_element("css selector", ".ejection").is_displayed()  # nothing from the sorter yet

    now = time.time_ns()
    record = EjectionRecord(frame_id="frame-e", camera_id="cam-e", lane="lane-1", outcome="fired", object_ejected=True,
                            arrival_ns=now, fire_ns=now - 5_000_000, fired_ns=now - 4_900_000, decided_ns=now)
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    try:
        producer.send(ejections, key=b"frame-e", value=b"{not an ejection").get(30)  # skipped, one log line
        producer.send(ejections, key=b"frame-e", value=record.to_json()).get(30)
    finally:
        producer.close()
    badge = wait_for(lambda: (b := card.find_element("css selector", ".ejection")).text == "ejected" and b,
                  what="the ejection badge, pushed to the open page")
    assert "ejected" in badge.get_attribute("class").split() and badge.get_attribute("data-outcome") == "fired"
    assert b"<th>ejection</th><td>ejected; lane lane-1; fruit at the ejector " in ui.get("/alert/frame-e")[1]
    assert ui.log().count("skipped a malformed record") == 1 and ui.proc.poll() is None
    screenshot(browser, "ejection")


def test_feedback_needs_the_token_when_one_is_set(topics, start_ui):
    ui = start_ui(topics, INSPECTOR_UI__FEEDBACK_TOKEN="s3cret-token")
    _publish_alert(topics.bootstrap, topics, "frame-t", "cam-t")
    wait_for(lambda: ui.get("/alert/frame-t")[0] == 200, what="the alert on the UI")
    assert b"s3cret-token" not in ui.get("/")[1] + ui.get("/alert/frame-t")[1]

    def post(token: str | None) -> int:
        headers = {"Content-Type": "application/json", **({"X-Feedback-Token": token} if token else {})}
        body = json.dumps({"frame_id": "frame-t", "verdict": "confirmed_defect"}).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(ui.url + "/feedback", body, headers), timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post(None) == 403 and post("wrong") == 403
    assert post("s3cret-token") == 200
    feedback = TopicReader(topics.bootstrap, topics.feedback)
    try:
        records = feedback.until(lambda rs: len(rs) >= 1, timeout_s=30)
        assert [json.loads(r.value)["verdict"] for r in records] == ["confirmed_defect"]
    finally:
        feedback.close()


@pytest.fixture()
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A broker this test may kill and restart."""
    with restartable_broker(tmp_path_factory.mktemp("ui-kafka")) as broker:
        yield broker


def test_the_page_survives_a_broker_restart_and_shows_alerts_after_it(own_broker, start_ui, browser):
    from inspector.kafka.kafka_python.clients import create_topics

    tag = uuid.uuid4().hex[:6]
    topics = Topics(own_broker.bootstrap_servers, f"frames-{tag}", f"alerts-{tag}", f"scores-{tag}", f"dlq-{tag}",
                    f"group-{tag}", f"evidence-{tag}", f"feedback-{tag}")
    create_topics(topics.kafka_settings(), {topics.alerts: 1, topics.evidence: 1, topics.scores: 1,
                                            topics.feedback: 1})
    ui = start_ui(topics)
    browser.get(ui.url + "/")
    wait_for(lambda: browser.find_element("id", "status").text == "live", what="the event stream")
    _publish_alert(topics.bootstrap, topics, "before-restart", "cam-r")
    # A fresh broker creates its offsets topic on the UI's first group join: slow on a loaded machine.
    wait_for(lambda: len(_evidence_cards(browser)) == 1, timeout_s=120, what="the alert before the restart")

    own_broker.kill()  # SIGKILL: no controlled shutdown
    time.sleep(5)
    own_broker.start()
    _publish_alert(topics.bootstrap, topics, "after-restart", "cam-r")
    cards = wait_for(lambda: len(_evidence_cards(browser)) == 2 and _evidence_cards(browser), timeout_s=120,
                  what="the alert after the restart, on the same page")
    assert [c.get_attribute("data-frame-id") for c in cards] == ["after-restart", "before-restart"]
    assert browser.find_element("id", "status").text == "live" and ui.proc.poll() is None
    screenshot(browser, "after-broker-restart")
