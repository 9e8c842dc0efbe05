"""Every poison record is refused with its dead-letter reason on both decode paths: the CPU decode, and the
validate-only path whose bytes go on to nvJPEG on a GPU (tested here without one)."""

from types import SimpleNamespace

import pytest

from inspector.stream.frame_decode import decode_record, decode_records, split_among

from ..poison import MAX_FRAME_BYTES, draw_poison

MAX_PIXELS = 4096 * 4096  # Settings.limits.max_pixels' default


@pytest.mark.parametrize("decode", [True, False], ids=["cpu-decode", "validate-only"])
def test_poison_frames_are_refused_with_their_reason_before_any_decoder(decode: bool) -> None:
    poison = draw_poison(per_kind=5)
    assert {p.kind for p in poison} >= {"bomb", "truncated", "random", "oversized"}
    for p in poison:
        record = SimpleNamespace(value=p.value, headers=p.headers, key=p.key)
        got = decode_record(record, size=64, max_bytes=MAX_FRAME_BYTES, max_pixels=MAX_PIXELS, decode=decode)
        assert got.error is not None, f"{p.kind} frame accepted (decode={decode})"
        assert got.error.reason in p.reasons, f"{p.kind}: {got.error.reason} not in {sorted(p.reasons)}"


@pytest.mark.parametrize("count, runs", [(0, 2), (1, 2), (2, 2), (7, 2), (32, 3), (5, 8)])
def test_a_batch_splits_into_contiguous_runs_of_nearly_equal_length_in_order(count: int, runs: int) -> None:
    records = list(range(count))
    split = split_among(records, runs)
    assert [r for run in split for r in run] == records
    assert len(split) == max(1, min(runs, count))
    assert max(map(len, split)) - min(map(len, split)) <= 1


def test_a_run_of_records_decodes_each_in_order_with_its_poison_refused() -> None:
    poison = draw_poison(per_kind=2)
    records = [SimpleNamespace(value=p.value, headers=p.headers, key=p.key) for p in poison]
    outcomes = decode_records(records, 64, MAX_FRAME_BYTES, MAX_PIXELS)
    assert [o.record for o in outcomes] == records
    assert all(o.error.reason in p.reasons for o, p in zip(outcomes, poison, strict=True))
