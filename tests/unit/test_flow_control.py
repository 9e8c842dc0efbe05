"""The worker's flow control without a broker: the batch size against the poll interval."""

import logging

import pytest

from inspector.stream.flow_control import BatchSizeGovernor

LIMIT_S = 2.0  # max poll interval: over 1.0 s a batch is slow, under 0.25 s it is fast


def test_a_slow_batch_halves_the_batch_size_and_says_so(caplog):
    governor = BatchSizeGovernor(LIMIT_S, max_size=8)
    with caplog.at_level(logging.WARNING, logger="inspector.stream.flow_control"):
        governor.observe(8, 1.5)
        governor.observe(4, 1.2)
    assert governor.max_size == 2
    assert [int(r.getMessage().rsplit(" ", 1)[1]) for r in caplog.records] == [4, 2]
    assert "a batch of 8 took 1.5s of the 2.0s max poll interval: batch size lowered to 4" in caplog.text
    governor.observe(1, 1.9)
    governor.observe(1, 1.9)
    assert governor.max_size == 1  # never below one record


def test_a_slow_partial_batch_halves_from_its_own_size():
    governor = BatchSizeGovernor(LIMIT_S, max_size=32)
    governor.observe(6, 1.5)
    assert governor.max_size == 3
    governor.observe(16, 1.5)  # half of it would raise the size: a slow batch never does
    assert governor.max_size == 3


def test_the_size_doubles_back_only_after_fast_full_batches_and_stops_at_the_configured_size():
    governor = BatchSizeGovernor(LIMIT_S, max_size=8)
    governor.observe(8, 1.5)
    governor.observe(4, 1.5)
    assert governor.max_size == 2
    governor.observe(1, 0.01)  # fast but not full
    governor.observe(2, 0.5)  # full but not fast (between 1/8 and 1/2 of the limit)
    assert governor.max_size == 2
    governor.observe(2, 0.01)
    assert governor.max_size == 4
    governor.observe(4, 0.01)
    governor.observe(8, 0.01)
    governor.observe(8, 0.01)
    assert governor.max_size == 8


def test_a_configured_size_that_is_not_a_power_of_two_is_still_the_cap():
    governor = BatchSizeGovernor(LIMIT_S, max_size=6)
    governor.observe(6, 1.5)
    governor.observe(3, 0.01)
    governor.observe(6, 0.01)
    assert governor.max_size == 6


def test_the_overlap_starts_off_comes_on_after_a_fast_batch_and_goes_off_after_a_slower_one():
    governor = BatchSizeGovernor(LIMIT_S, max_size=8)
    assert not governor.overlap
    governor.observe(3, 0.1)
    assert governor.overlap
    governor.observe(3, 0.3)  # over 1/8 of the limit, though far from slow
    assert not governor.overlap and governor.max_size == 8
    governor.observe(8, 0.2)
    assert governor.overlap


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError):
        BatchSizeGovernor(LIMIT_S, max_size=0)


def test_records_are_shared_among_the_idle_scoring_threads_only_while_batches_overlap():
    governor = BatchSizeGovernor(LIMIT_S, max_size=8)
    assert governor.shares(2) == 1  # the overlap is off: one batch, scored before the next is taken
    governor.observe(3, 0.1)
    assert [governor.shares(idle) for idle in (0, 1, 2)] == [1, 1, 2]
