"""`inspector ui`: the aiohttp application (its live state: `inspector.ui.server`). The wall (/) gets its alerts pushed
by server-sent events (/events), each with what the sorter did with it (ejections topic); an alert page
(/alert/{frame_id}) shows the evidence beside the original frame, fetched from the frames topic by its origin;
feedback (POST /feedback) goes to the feedback topic. The calibration page (/calibration) shows the line's threshold
proposal, and POST /calibration/apply writes it as a new model version.

Safe by default: every string from Kafka reaches the page as text (html.escape here, textContent in app.js), the
content security policy allows no inline script, and the feedback token (which also guards applying a proposal) is
compared in constant time and never written into a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from inspector.contracts import FEEDBACK_VERDICTS, Feedback
from inspector.errors import ConfigError, TransportError
from inspector.settings import Settings
from inspector.ui.calibration import (
    BadQuery,
    StaleProposal,
    apply_proposal,
    compute_proposal,
    parse_query,
    proposal_html,
)
from inspector.ui.feed import FeedbackWriter, TopicFeed
from inspector.ui.metrics import build_ui_metrics
from inspector.ui.server import UiServer
from inspector.ui.state import ejection_detail

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
HEARTBEAT_S = 15.0  # an SSE comment keeps proxies from closing an idle stream


STATE = web.AppKey("ui", UiServer)


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, ui: UiServer) -> web.Response:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_escape(title)}</title><link rel="stylesheet" href="/static/style.css"></head>
<body data-token-required="{'1' if ui.token_required() else '0'}">
{body}
<script src="/static/app.js"></script>
</body></html>"""
    return web.Response(text=doc, content_type="text/html", headers=_SECURITY_HEADERS)


async def wall(request: web.Request) -> web.Response:
    ui = request.app[STATE]
    body = """<header><h1>Inspection alerts</h1>
<label>Camera <select id="camera-filter"><option value="">all cameras</option></select></label>
<label>Operator <input id="operator" maxlength="64" placeholder="your name (optional)"></label>
<span id="status" class="status">connecting…</span><a href="/calibration">thresholds from the line</a></header>
<section><h2>Last minutes, per camera</h2><table id="counts"><thead><tr><th>camera</th><th>frames</th>
<th>alerts</th></tr></thead><tbody></tbody></table></section>
<section><h2>Recent alerts</h2><div id="wall" class="wall" data-live="1"></div></section>"""
    return _page("Inspection alerts", body, ui)


async def alert_page(request: web.Request) -> web.Response:
    ui = request.app[STATE]
    frame_id = request.match_info["frame_id"]
    view = ui.state.alerts.get(frame_id)
    if view is None:
        raise web.HTTPNotFound(text="no such alert among the recent ones")
    alert, quoted_id = view.alert, quote(frame_id, safe="")
    box_text, object_text = (f"{b.x0},{b.y0} – {b.x1},{b.y1} ({b.area_fraction:.2%})" if b else "none"
                             for b in (alert.box, alert.object_box))
    rows = [("camera", alert.camera_id), ("frame", alert.frame_id), ("score", f"{alert.score:.6f}"),
            ("threshold", f"{alert.threshold:.6f}"), ("model", f"{alert.model_id}:{alert.model_version}"),
            ("captured", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(alert.captured_ns / 1e9)) + " UTC"),
            ("capture to alert", f"{max(0, alert.published_ns - alert.captured_ns) / 1e6:.1f} ms"), ("box", box_text),
            ("object", object_text), ("frame origin", alert.origin or "unknown"), ("verdict", view.verdict or "none yet")]
    if ui.settings.kafka.ejections_topic:
        rows.append(("ejection", ejection_detail(view.ejection) if view.ejection else "none yet"))
    table = "".join(f"<tr><th>{_escape(name)}</th><td>{_escape(value)}</td></tr>" for name, value in rows)
    body = f"""<header><h1>Alert on camera <span class="camera">{_escape(alert.camera_id)}</span></h1>
<a href="/">back to the wall</a><label>Operator <input id="operator" maxlength="64"></label></header>
<div class="alert-page" data-frame-id="{_escape(alert.frame_id)}">
<figure><img alt="evidence" src="/evidence/{quoted_id}.jpg"><figcaption>heat map and box</figcaption></figure>
<figure><img alt="original frame" src="/frame/{quoted_id}.jpg"><figcaption>the original frame</figcaption></figure>
<table class="details">{table}</table>
<div class="feedback"><button class="false-alarm" data-frame-id="{_escape(alert.frame_id)}">false alarm</button>
<button class="confirmed" data-frame-id="{_escape(alert.frame_id)}">confirmed defect</button>
<span class="feedback-result"></span></div></div>"""
    return _page(f"Alert {alert.frame_id}", body, ui)


def _jpeg(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="image/jpeg",
                        headers={**_SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"})


async def evidence_image(request: web.Request) -> web.Response:
    view = request.app[STATE].state.alerts.get(request.match_info["frame_id"])
    if view is None or view.evidence_jpeg is None:
        raise web.HTTPNotFound(text="no evidence for this alert")
    return _jpeg(view.evidence_jpeg)


async def frame_image(request: web.Request) -> web.Response:
    ui = request.app[STATE]
    view = ui.state.alerts.get(request.match_info["frame_id"])
    if view is None or view.alert.origin is None:
        raise web.HTTPNotFound(text="no such alert, or it does not say where its frame is")
    jpeg = await asyncio.get_running_loop().run_in_executor(None, ui.fetcher.fetch, view.alert.origin,
                                                            view.alert.frame_id)
    if jpeg is None:
        raise web.HTTPNotFound(text="the frame is no longer retained on its topic")
    return _jpeg(jpeg)


async def events(request: web.Request) -> web.StreamResponse:
    ui = request.app[STATE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           **_SECURITY_HEADERS})
    await response.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue()
    ui.clients.add(queue)
    try:
        for view in ui.state.recent():  # the wall as it stands, oldest first, then what comes
            queue.put_nowait(f"event: alert\ndata: {json.dumps(view.to_json())}\n\n")
        queue.put_nowait(f"event: counts\ndata: {json.dumps(ui.state.counts())}\n\n")
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                message = ": heartbeat\n\n"
            await response.write(message.encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        ui.clients.discard(queue)
    return response


async def post_feedback(request: web.Request) -> web.Response:
    ui = request.app[STATE]
    if not ui.token_ok(request.headers.get("X-Feedback-Token")):
        raise web.HTTPForbidden(text="feedback needs the access token")
    try:
        body = await request.json()
        frame_id, verdict = str(body["frame_id"]), str(body["verdict"])
        operator = str(body.get("operator") or "")[:64] or None
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text="expected JSON with frame_id and verdict") from None
    if verdict not in FEEDBACK_VERDICTS:
        raise web.HTTPBadRequest(text=f"verdict must be one of {', '.join(FEEDBACK_VERDICTS)}")
    view = ui.state.alerts.get(frame_id)
    if view is None:
        raise web.HTTPNotFound(text="no such alert among the recent ones")
    if view.verdict == verdict:  # a double click, or a resend after a lost answer: already recorded
        return web.json_response({"recorded": False, "verdict": verdict})
    alert = view.alert
    feedback = Feedback(frame_id=alert.frame_id, camera_id=alert.camera_id, verdict=verdict,
                        operator=operator, at_ns=time.time_ns(), origin=alert.origin, score=alert.score,
                        threshold=alert.threshold, model_version=alert.model_version)
    assert ui.writer is not None
    try:
        await asyncio.get_running_loop().run_in_executor(None, ui.writer.write, feedback)
    except TransportError as exc:
        raise web.HTTPServiceUnavailable(text=f"feedback not recorded: {exc}") from None
    view.verdict = verdict
    ui.metrics.feedback.labels(verdict, ui.cameras(alert.camera_id)).inc()
    ui.push("alert", view.to_json())
    return web.json_response({"recorded": True, "verdict": verdict})


async def calibration_page(request: web.Request) -> web.Response:
    ui = request.app[STATE]
    try:
        minutes, target = parse_query(request.query)
    except BadQuery as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    status = 200
    async with ui.calibration_lock:
        try:
            line, checksum = await asyncio.to_thread(compute_proposal, ui.settings, minutes * 60, target)
        except (ConfigError, TransportError, OSError) as exc:
            status = 503 if isinstance(exc, TransportError) else 500
            result = f'<p class="error">cannot propose thresholds: {_escape(exc)}</p>'
        else:
            result = proposal_html(ui.proposals.add(line, checksum), ui.settings.kafka.scores_topic)
            ui.metrics.line_calibration_proposals.inc()
    body = f"""<header><h1>Thresholds from the line</h1><a href="/">back to the wall</a></header>
<section class="calibration"><form id="calibration-window">
<label>Window <input name="minutes" type="number" min="1" max="1440" step="any" value="{minutes:g}"> min</label>
<label>Target false-alarm <input name="target_percent" type="number" min="0.1" max="20" step="any"
value="{target * 100:g}"> %</label><button type="submit">propose</button></form>
{result}</section>"""
    response = _page("Thresholds from the line", body, ui)
    response.set_status(status)
    return response


async def apply_calibration(request: web.Request) -> web.Response:
    ui = request.app[STATE]
    if not ui.token_ok(request.headers.get("X-Feedback-Token")):
        raise web.HTTPForbidden(text="applying a threshold needs the access token")
    try:
        proposal_id = str((await request.json())["proposal_id"])
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text="expected JSON with proposal_id") from None
    path = ui.settings.model.path
    async with ui.calibration_lock:
        shown = ui.proposals.get(proposal_id)
        if shown is None:
            raise web.HTTPNotFound(text="no such proposal: it expired, was applied already, or the page restarted; "
                                        "open the calibration page again")
        try:
            saved = await asyncio.to_thread(apply_proposal, shown, path)
        except StaleProposal as exc:
            ui.proposals.discard(proposal_id)
            raise web.HTTPConflict(text=str(exc)) from None
        except (ConfigError, OSError) as exc:
            raise web.HTTPInternalServerError(text=f"not applied: {exc}") from None
        ui.proposals.discard(proposal_id)
    cameras = [p.camera_id for p in shown.line.cameras if p.proposed is not None]
    log.info("line calibration applied from the operator's page: %s version %s, thresholds of %s", path,
             saved.model_version, ", ".join(cameras))
    ui.metrics.line_calibration_applied.inc()
    return web.json_response({"model_version": saved.model_version, "cameras": cameras})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {"app.js": "text/javascript", "style.css": "text/css"}
    if name not in types:
        raise web.HTTPNotFound()
    return web.Response(text=(STATIC / name).read_text(), content_type=types[name], headers=_SECURITY_HEADERS)


async def healthz(request: web.Request) -> web.Response:
    feed = request.app[STATE].feed
    connected = bool(feed and feed.connected)
    return web.json_response({"kafka": connected}, status=200 if connected else 503)


def build_app(settings: Settings, registry: CollectorRegistry | None = None) -> web.Application:
    """The application; Kafka is connected on start-up and closed on clean-up."""
    registry = registry or CollectorRegistry()
    ui = UiServer(settings, build_ui_metrics(registry))
    app = web.Application()
    app[STATE] = ui

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def kafka_lifetime(_app: web.Application) -> AsyncIterator[None]:
        ui.loop = asyncio.get_running_loop()
        loop = ui.loop
        ui.writer = await loop.run_in_executor(None, FeedbackWriter, settings)
        ui.feed = (await loop.run_in_executor(None, TopicFeed, settings, ui.deliver)).start()
        counts = asyncio.create_task(ui.push_counts())
        yield
        counts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counts
        await loop.run_in_executor(None, ui.feed.close)
        await loop.run_in_executor(None, ui.writer.close)
        await loop.run_in_executor(None, ui.fetcher.close)

    app.cleanup_ctx.append(kafka_lifetime)
    app.router.add_get("/", wall)
    app.router.add_get("/events", events)
    app.router.add_get("/alert/{frame_id}", alert_page)
    app.router.add_get("/evidence/{frame_id}.jpg", evidence_image)
    app.router.add_get("/frame/{frame_id}.jpg", frame_image)
    app.router.add_post("/feedback", post_feedback)
    app.router.add_get("/calibration", calibration_page)
    app.router.add_post("/calibration/apply", apply_calibration)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


def serve_ui(settings: Settings) -> int:
    """Run the UI until SIGINT/SIGTERM; returns the exit code."""
    app = build_app(settings)
    log.info("operator page on http://%s:%d/", settings.ui.host, settings.ui.port)
    # Open event streams never end by themselves: a short grace lets a stop not wait a minute for them.
    try:
        web.run_app(app, host=settings.ui.host, port=settings.ui.port, print=None, handle_signals=True,
                    shutdown_timeout=3)
    except OSError as exc:  # the address is taken, or not this host's
        raise ConfigError(f"ui cannot listen on {settings.ui.host}:{settings.ui.port}: {exc.strerror or exc}") from None
    return 0

