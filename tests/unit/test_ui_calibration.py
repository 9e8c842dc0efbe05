"""The operator's calibration page without a broker: the line's proposal (from scores given in place of the topic)
is shown as text, and applying it writes exactly the proposed thresholds as a new model version, but only with the
token, for a proposal the page showed, against the model file it was computed against."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from inspector.contracts import FrameScore
from inspector.errors import TransportError
from inspector.model import artifact as artifact_io
from inspector.settings import ModelSettings, Settings, UiSettings
from inspector.training import line_calibration
from inspector.training.line_calibration import CameraProposal, LineProposal
from inspector.ui.app import STATE, apply_calibration, calibration_page
from inspector.ui.calibration import ShownProposal, ShownProposals, parse_query, proposal_html
from inspector.ui.metrics import build_ui_metrics
from inspector.ui.server import UiServer

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="alert(1)">'


def _scores(camera: str, values: np.ndarray, version: str) -> list[FrameScore]:
    return [FrameScore(frame_id=f"{camera}-{i}", camera_id=camera, seq=i, score=float(v), thr=1.0, alert=False,
                       captured_ns=i, scored_ns=i, model_version=version) for i, v in enumerate(values)]


def _line(*cameras: CameraProposal, overridden: tuple[str, ...] = ()) -> LineProposal:
    return LineProposal(model_id="<m>", model_version="3", target_false_alarm=0.01, window_s=3600, scores=900,
                        confirmed_defects=4, cameras=cameras, overridden=overridden)


def test_the_proposal_table_is_text_whatever_the_camera_is_called():
    proposed = CameraProposal(camera_id=HOSTILE, frames=600, left_out=4, current=3.2, proposed=0.9123,
                              false_alarm_bound=0.0151, alert_rate_current=0.002, alert_rate_proposed=0.011)
    too_few = CameraProposal(camera_id="cam-2", frames=50, left_out=0, current=3.2, proposed=None,
                             false_alarm_bound=None, alert_rate_current=0.0, alert_rate_proposed=None)
    page = proposal_html(ShownProposal("id-1", _line(proposed, too_few, overridden=(HOSTILE,)), "", 0.0),
                         "frame-scores")
    assert "<script>" not in page and "<img" not in page
    assert page.count("&lt;script&gt;window.__pwned=1&lt;/script&gt;") == 2  # its row and the override note
    row = re.search(r'<tr><td class="camera">&lt;script.*?</tr>', page)
    assert row is not None and [c for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(0))][1:] == [
        "596", "4", "3.2000", "0.20%", "0.9123", "1.10%", "1.51%"]
    assert '<td class="camera">cam-2</td><td>50</td><td>0</td><td class="current">3.2000</td><td>0.00%</td>' \
           '<td class="proposed too-few" colspan="3">too few good frames</td>' in page
    assert "model &lt;m&gt;:3; target false-alarm 1.00%; 900 scores in the last 60 min of frame-scores; " \
           "4 frames confirmed defective by operators (left out)" in page
    assert 'data-proposal-id="id-1"' in page and "note: the settings override the threshold of" in page
    nothing = proposal_html(ShownProposal("id-2", _line(too_few), "", 0.0), "frame-scores")
    assert "apply-proposal" not in nothing and "nothing to apply" in nothing


def test_shown_proposals_expire_and_only_the_newest_are_kept():
    now = [0.0]
    shown = ShownProposals(ttl_s=60, max_kept=2, clock=lambda: now[0])
    first, second = shown.add(_line(), "a"), shown.add(_line(), "b")
    assert first.proposal_id != second.proposal_id and shown.get(first.proposal_id) is first
    third = shown.add(_line(), "c")
    assert shown.get(first.proposal_id) is None and shown.get(third.proposal_id) is third
    now[0] = 61
    assert shown.get(second.proposal_id) is None and shown.get("no-such-id") is None


def test_the_window_and_target_are_bounded():
    assert parse_query({}) == (60.0, 0.01)
    assert parse_query({"minutes": "15", "target_percent": "0.5"}) == (15.0, 0.005)
    for bad in ({"minutes": "0"}, {"minutes": "nan"}, {"minutes": "1e9"}, {"minutes": "x"},
                {"target_percent": "50"}, {"target_percent": "-1"}):
        with pytest.raises(Exception, match="must be a number from"):
            parse_query(bad)


@pytest.fixture()
def model_file(tmp_path: Path, default_model_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    shutil.copy2(default_model_path, path)
    return path


@pytest.fixture()
def line_scores(monkeypatch: pytest.MonkeyPatch, model_file: Path) -> None:
    """The scores topic, as read_line would return it: two cameras with enough good frames, one with too few."""
    version = artifact_io.load(model_file).model_version
    rng = np.random.default_rng(0)
    scores = (_scores("cam-a", rng.normal(0.8, 0.05, 600), version) + _scores("cam-b", rng.normal(1.1, 0.05, 600), version)
              + _scores(HOSTILE, rng.normal(1.0, 0.05, 20), version))
    monkeypatch.setattr(line_calibration, "read_line", lambda _kafka, _window_s: (scores, set()))


def _run(settings: Settings, check: Callable[[TestClient, UiServer], Awaitable[None]]) -> CollectorRegistry:
    """`check` against the calibration routes of a UI server on `settings` (no Kafka)."""
    registry = CollectorRegistry()
    ui = UiServer(settings, build_ui_metrics(registry))

    async def run() -> None:
        app = web.Application()
        app[STATE] = ui
        app.router.add_get("/calibration", calibration_page)
        app.router.add_post("/calibration/apply", apply_calibration)
        async with TestClient(TestServer(app)) as client:
            await check(client, ui)

    asyncio.run(run())
    return registry


async def _shown_id(client: TestClient) -> str:
    response = await client.get("/calibration?minutes=30")
    page = await response.text()
    assert response.status == 200, page
    found = re.search(r'data-proposal-id="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


async def _apply(client: TestClient, proposal_id: str, token: str | None = None) -> tuple[int, str]:
    headers = {"X-Feedback-Token": token} if token else {}
    response = await client.post("/calibration/apply", json={"proposal_id": proposal_id}, headers=headers)
    return response.status, await response.text()


@pytest.mark.usefixtures("line_scores")
def test_apply_with_the_token_writes_the_proposed_thresholds_and_refuses_without_it(model_file: Path):
    before = artifact_io.load(model_file)
    settings = Settings(model=ModelSettings(path=model_file), ui=UiSettings(feedback_token="s3cret"))

    async def check(client: TestClient, ui: UiServer) -> None:
        proposal_id = await _shown_id(client)
        page = await (await client.get("/calibration")).text()
        assert "s3cret" not in page and "too few good frames" in page and "&lt;script&gt;" in page
        assert await _apply(client, proposal_id) == (403, "applying a threshold needs the access token")
        assert (await _apply(client, proposal_id, "wrong"))[0] == 403
        assert (await _apply(client, "no-such-id", "s3cret"))[0] == 404
        assert artifact_io.load(model_file).model_version == before.model_version  # nothing written yet
        shown = ui.proposals.get(proposal_id)
        assert shown is not None
        status, text = await _apply(client, proposal_id, "s3cret")
        assert status == 200, text
        after = artifact_io.load(model_file)
        assert after.model_version.startswith(f"{before.model_version}+line.") and after.model_version in text
        assert after.calibration is not None and after.calibration.camera_thresholds == {
            p.camera_id: p.proposed for p in shown.line.cameras if p.proposed is not None}
        assert set(after.calibration.camera_thresholds) == {"cam-a", "cam-b"}
        assert after.threshold == before.threshold
        assert (await _apply(client, proposal_id, "s3cret"))[0] == 404  # applied once: a second click writes nothing

    registry = _run(settings, check)
    assert registry.get_sample_value("inspector_line_calibration_proposals_total") == 2
    assert registry.get_sample_value("inspector_line_calibration_applied_total") == 1


@pytest.mark.usefixtures("line_scores")
def test_apply_refuses_a_proposal_computed_against_another_model_version(model_file: Path):
    settings = Settings(model=ModelSettings(path=model_file))
    version = artifact_io.load(model_file).model_version

    async def check(client: TestClient, _ui: UiServer) -> None:
        proposal_id = await _shown_id(client)
        artifact_io.save(replace(artifact_io.load(model_file), model_version="retrained"), model_file)
        status, text = await _apply(client, proposal_id)
        assert status == 409 and f"it was for version {version}, the file is now retrained" in text
        assert artifact_io.load(model_file).model_version == "retrained"
        assert (await _apply(client, proposal_id))[0] == 404  # a stale proposal is gone

    registry = _run(settings, check)
    assert registry.get_sample_value("inspector_line_calibration_applied_total") == 0


def test_a_broker_or_model_file_error_is_a_message_on_the_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def unreachable(_kafka: object, _window_s: float) -> None:
        raise TransportError("no broker at 127.0.0.1:1 <in time>")

    monkeypatch.setattr(line_calibration, "read_line", unreachable)

    async def check(client: TestClient, _ui: UiServer) -> None:
        response = await client.get("/calibration")
        assert response.status == 503
        assert "cannot propose thresholds: no broker at 127.0.0.1:1 &lt;in time&gt;" in await response.text()
        response = await client.get("/calibration?minutes=99999")
        assert response.status == 400 and "minutes must be a number from 1 to 1440" in await response.text()

    _run(Settings(), check)

    async def missing_model(client: TestClient, _ui: UiServer) -> None:
        response = await client.get("/calibration")
        assert response.status == 500 and "cannot propose thresholds: model file not found" in await response.text()

    _run(Settings(model=ModelSettings(path=tmp_path / "none.safetensors")), missing_model)
