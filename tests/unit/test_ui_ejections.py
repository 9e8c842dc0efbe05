"""What the sorter did with each alert, on the operator's page, without a broker: the wall pairs ejection records
with their alerts in either order, the latest wins (but a duplicate never hides the first outcome), records for
alerts never seen are bounded, and a malformed record is skipped with one log line."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from inspector.contracts import EJECTION_OUTCOMES, Alert, EjectionRecord
from inspector.settings import KafkaSettings, Settings
from inspector.ui.app import STATE, alert_page
from inspector.ui.metrics import build_ui_metrics
from inspector.ui.server import UiServer
from inspector.ui.state import WallState, ejection_detail, ejection_label

ARRIVAL_NS = 1_700_000_000_123_456_789  # 2023-11-14 22:13:20.123 UTC


def _alert(frame_id: str) -> Alert:
    return Alert(frame_id=frame_id, camera_id="cam-1", sequence=0, captured_ns=0, scored_ns=0,
                 published_ns=40_000_000, score=0.3, threshold=0.1, model_id="m", model_version="1")


def _ejection(frame_id: str, outcome: str, ejected: bool | None = None, decided_ns: int = 1) -> EjectionRecord:
    return EjectionRecord(frame_id=frame_id, camera_id="cam-1", lane="a", outcome=outcome,
                          object_ejected=outcome == "fired" if ejected is None else ejected,
                          arrival_ns=ARRIVAL_NS, fire_ns=ARRIVAL_NS - 5_000_000, decided_ns=decided_ns)


def test_an_ejection_marks_its_alert_whichever_comes_first():
    wall = WallState(max_alerts=5, window_minutes=5)
    assert wall.add_ejection(_ejection("f1", "late")) is None  # read back before its alert (after a restart)
    shown = wall.add_alert(_alert("f1"))
    assert shown is not None and shown.to_json()["ejection"] == {"outcome": "late", "label": "late", "ejected": False}
    wall.add_alert(_alert("f2"))
    assert wall.alerts["f2"].to_json()["ejection"] is None
    view = wall.add_ejection(_ejection("f2", "fired"))
    assert view is wall.alerts["f2"]
    assert view.to_json()["ejection"] == {"outcome": "fired", "label": "ejected", "ejected": True}


def test_the_latest_record_wins_but_a_duplicate_never_hides_the_first_outcome():
    wall = WallState(max_alerts=5, window_minutes=5)
    wall.add_alert(_alert("f1"))
    wall.add_ejection(_ejection("f1", "late"))
    assert wall.add_ejection(_ejection("f1", "fired", decided_ns=2)).ejection.outcome == "fired"
    assert wall.add_ejection(_ejection("f1", "duplicate")) is None  # the same frame again: nothing to push
    assert wall.alerts["f1"].ejection.outcome == "fired"
    # The same before the alert arrives.
    wall.add_ejection(_ejection("f2", "merged", ejected=False))
    wall.add_ejection(_ejection("f2", "merged", ejected=True))
    wall.add_ejection(_ejection("f2", "duplicate"))
    view = wall.add_alert(_alert("f2"))
    assert view is not None and view.to_json()["ejection"] == {"outcome": "merged", "label": "merged", "ejected": True}
    # A duplicate is shown when it is all that is known.
    wall.add_alert(_alert("f3"))
    assert wall.add_ejection(_ejection("f3", "duplicate")).ejection.outcome == "duplicate"


def test_ejections_for_alerts_never_seen_are_forgotten_past_the_walls_size():
    wall = WallState(max_alerts=2, window_minutes=5)
    for i in range(1, 5):
        wall.add_ejection(_ejection(f"f{i}", "fired"))
    wall.add_ejection(_ejection("f3", "failed"))  # refreshed: now the newest waiting
    wall.add_ejection(_ejection("f5", "fired"))
    assert wall.add_alert(_alert("f4")).ejection is None
    assert wall.add_alert(_alert("f3")).ejection.outcome == "failed"
    assert wall.add_alert(_alert("f5")).ejection is not None


def test_every_outcome_reads_as_words_and_the_page_line_says_when_the_fruit_reaches_the_ejector():
    words = {o: ejection_label(_ejection("f", o)) for o in EJECTION_OUTCOMES}
    assert words["fired"] == "ejected" and words["unconfirmed"] == "not confirmed" and words["late"] == "late"
    assert all(w and "_" not in w for w in words.values())
    assert ejection_label(_ejection("f", "merged", ejected=False)) == "merged, not ejected"
    assert ejection_detail(_ejection("f", "fired")) == "ejected; lane a; fruit at the ejector 22:13:20.123 UTC"
    bare = EjectionRecord(frame_id="f", camera_id="c", outcome="unknown_camera", object_ejected=False, decided_ns=1)
    assert ejection_detail(bare) == "no lane"


def _server(**kafka: str) -> tuple[UiServer, asyncio.Queue[str]]:
    ui = UiServer(Settings(kafka=KafkaSettings(**kafka)), build_ui_metrics(CollectorRegistry()))
    queue: asyncio.Queue[str] = asyncio.Queue()
    ui.clients.add(queue)
    return ui, queue


def _record(topic: str, value: bytes, offset: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=0, offset=offset, key=b"f1", value=value, headers=[])


def test_the_server_pushes_an_ejection_to_open_pages_and_skips_a_malformed_one_with_one_line(caplog):
    ui, queue = _server(alerts_topic="alerts", ejections_topic="ej")
    ui.on_record(_record("alerts", _alert("f1").to_json()))
    queue.get_nowait()  # the alert itself
    with caplog.at_level(logging.DEBUG, logger="inspector.ui.server"):
        ui.on_record(_record("ej", b"{not json", offset=1))
        ui.on_record(_record("ej", b'{"frame_id": "f1", "outcome": "exploded"}', offset=2))
        ui.on_record(_record("ej", b"", offset=3))  # a tombstone
    assert ui.skipped == 3 and queue.empty()
    lines = [r for r in caplog.records if "ej/0/" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert all("\n" not in r.getMessage() for r in lines)
    ui.on_record(_record("ej", _ejection("f1", "fired").to_json(), offset=4))
    message = queue.get_nowait()
    assert message.startswith("event: alert\n") and '"ejection": {"outcome": "fired", "label": "ejected"' in message


async def _page_text(ui: UiServer, frame_id: str) -> str:
    app = web.Application()
    app[STATE] = ui
    response = await alert_page(make_mocked_request("GET", f"/alert/{frame_id}", match_info={"frame_id": frame_id},
                                                    app=app))
    return response.text or ""


def test_the_alert_page_has_an_ejection_row_unless_the_topic_is_off():
    ui, _ = _server(alerts_topic="alerts", ejections_topic="ej")
    ui.on_record(_record("alerts", _alert("f1").to_json()))
    assert "<th>ejection</th><td>none yet</td>" in asyncio.run(_page_text(ui, "f1"))
    ui.on_record(_record("ej", _ejection("f1", "late", decided_ns=5).model_copy(update={"lane": "<b>"}).to_json()))
    assert "<th>ejection</th><td>late; lane &lt;b&gt;; fruit at the ejector 22:13:20.123 UTC</td>" in asyncio.run(
        _page_text(ui, "f1"))
    off, _ = _server(alerts_topic="alerts", ejections_topic="")
    off.on_record(_record("alerts", _alert("f1").to_json()))
    assert "<th>ejection</th>" not in asyncio.run(_page_text(off, "f1"))
