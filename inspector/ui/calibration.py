"""The calibration page of `inspector ui`: the line's threshold proposal (`inspector.training.line_calibration`, as
`inspector calibrate --from-line` computes it) shown per camera with its effect on the window, and kept under an id
with the model file it was computed against, so that one click applies exactly what the operator saw, and nothing
if the file has changed since."""

from __future__ import annotations

import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inspector.errors import InspectorError
from inspector.settings import Settings

if TYPE_CHECKING:  # torch loads only when an operator opens the page (in a worker thread), not with the UI
    from pathlib import Path

    from inspector.model.artifact import ModelArtifact
    from inspector.training.line_calibration import LineProposal

DEFAULT_WINDOW_MINUTES = 60.0
DEFAULT_TARGET_FALSE_ALARM = 0.01  # the same as `inspector calibrate --target-far`
WINDOW_MINUTES_RANGE = (1.0, 24 * 60.0)  # the read takes seconds per hour of a busy line
TARGET_PERCENT_RANGE = (0.1, 20.0)
PROPOSAL_TTL_S = 30 * 60.0  # a proposal older than this describes a line that has moved on
MAX_PROPOSALS = 32  # every page load computes one: the newest are kept


class StaleProposal(InspectorError):
    """The model file changed after the proposal was computed."""


class BadQuery(InspectorError):
    """A window or target outside what the page accepts."""


@dataclass(frozen=True)
class ShownProposal:
    """A line proposal as a page showed it: its id, and the model file (version and checksum) it was computed
    against."""

    proposal_id: str
    line: LineProposal
    model_checksum: str
    shown_at: float  # monotonic seconds


class ShownProposals:
    """The proposals pages have shown, by id, for `ttl_s` (the newest `max_kept`)."""

    def __init__(self, ttl_s: float = PROPOSAL_TTL_S, max_kept: int = MAX_PROPOSALS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s, self._max_kept, self._clock = ttl_s, max_kept, clock
        self._shown: OrderedDict[str, ShownProposal] = OrderedDict()

    def add(self, line: LineProposal, model_checksum: str) -> ShownProposal:
        shown = ShownProposal(secrets.token_urlsafe(16), line, model_checksum, self._clock())
        self._shown[shown.proposal_id] = shown
        while len(self._shown) > self._max_kept:
            self._shown.popitem(last=False)
        return shown

    def get(self, proposal_id: str) -> ShownProposal | None:
        """The proposal, or None when it is unknown, applied already or expired."""
        shown = self._shown.get(proposal_id)
        if shown is not None and self._clock() - shown.shown_at > self._ttl_s:
            del self._shown[proposal_id]
            return None
        return shown

    def discard(self, proposal_id: str) -> None:
        self._shown.pop(proposal_id, None)


def parse_query(query: Mapping[str, str]) -> tuple[float, float]:
    """(window in minutes, target false-alarm rate) from the page's query; BadQuery when out of bounds."""
    minutes = _number(query, "minutes", DEFAULT_WINDOW_MINUTES, WINDOW_MINUTES_RANGE)
    target_percent = _number(query, "target_percent", DEFAULT_TARGET_FALSE_ALARM * 100, TARGET_PERCENT_RANGE)
    return minutes, target_percent / 100


def _number(query: Mapping[str, str], name: str, default: float, bounds: tuple[float, float]) -> float:
    text = query.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = float("nan")
    low, high = bounds
    if not low <= value <= high:  # also NaN
        raise BadQuery(f"{name} must be a number from {low:g} to {high:g}")
    return value


def compute_proposal(settings: Settings, window_s: float, target_false_alarm: float) -> tuple[LineProposal, str]:
    """(blocking) The line's proposal against the model file in force, and that file's checksum."""
    from inspector.model import artifact as artifact_io
    from inspector.training.line_calibration import propose_from_line

    artifact = artifact_io.load(settings.model.path)
    return propose_from_line(settings, artifact, window_s, target_false_alarm), artifact.checksum


def apply_proposal(shown: ShownProposal, path: Path) -> ModelArtifact:
    """(blocking) Write the proposal as a new version of the model file (the workers hot-reload it); StaleProposal
    if the file is no longer the one it was computed against."""
    from inspector.model import artifact as artifact_io
    from inspector.training.line_calibration import with_line_thresholds

    on_disk = artifact_io.load(path)
    line = shown.line
    if on_disk.model_version != line.model_version or on_disk.checksum != shown.model_checksum:
        raise StaleProposal(f"the model file changed since this proposal was computed (it was for version "
                            f"{line.model_version}, the file is now {on_disk.model_version}): nothing written; "
                            "open the calibration page again for a proposal against it")
    return artifact_io.save(with_line_thresholds(on_disk, line.cameras), path)


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def proposal_html(shown: ShownProposal, scores_topic: str) -> str:
    """The proposal as HTML, every string from Kafka or the model file escaped: the summary, the per-camera table,
    the settings' override note and the apply button."""
    line = shown.line
    summary = (f"model {line.model_id}:{line.model_version}; target false-alarm {line.target_false_alarm:.2%}; "
               f"{line.scores} scores in the last {line.window_s / 60:g} min of {scores_topic}; "
               f"{line.confirmed_defects} frames confirmed defective by operators (left out)")
    rows = []
    for p in line.cameras:
        if p.proposed is None:
            proposed = '<td class="proposed too-few" colspan="3">too few good frames</td>'
        else:
            proposed = (f'<td class="proposed">{p.proposed:.4f}</td><td>{_percent(p.alert_rate_proposed)}</td>'
                        f"<td>{_percent(p.false_alarm_bound)}</td>")
        rows.append(f'<tr><td class="camera">{_text(p.camera_id)}</td><td>{p.good}</td><td>{p.left_out}</td>'
                    f'<td class="current">{p.current:.4f}</td><td>{_percent(p.alert_rate_current)}</td>{proposed}</tr>')
    table = ('<table class="proposal"><thead><tr><th>camera</th><th>good frames</th><th>left out</th>'
             "<th>threshold in force</th><th>alert rate</th><th>proposed</th><th>alert rate</th>"
             f"<th>false-alarm bound (95 %)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    note = line.override_note()
    parts = [f'<p class="summary">{_text(summary)}</p>', table]
    if note:
        parts.append(f'<p class="note">note: {_text(note)}</p>')
    if line.any_proposed:
        parts.append(f'<div class="apply"><button class="apply-proposal" data-proposal-id="{_text(shown.proposal_id)}">'
                     "apply: write these thresholds as a new model version</button>"
                     '<span class="apply-result"></span></div>')
    else:
        parts.append('<p class="nothing">no camera has enough good frames in the window for a threshold at this '
                     "target: nothing to apply</p>")
    return "\n".join(parts)
