import pytest

from inspector.stream.batcher import MicroBatcher


def test_closes_when_full():
    b = MicroBatcher(max_size=3, max_wait_s=10)
    for i in range(3):
        assert not b.ready(now=0.0)
        b.add(i, now=0.0)
    assert b.ready(now=0.0)
    assert b.take() == [0, 1, 2] and len(b) == 0
    with pytest.raises(OverflowError):
        for i in range(4):
            b.add(i, now=1.0)


def test_closes_when_the_first_item_has_waited_long_enough():
    b = MicroBatcher(max_size=100, max_wait_s=0.02)
    assert not b.ready(now=5.0)  # empty never closes
    b.add("a", now=5.0)
    b.add("b", now=5.015)
    assert not b.ready(now=5.019)
    assert b.time_left(now=5.01) == pytest.approx(0.01)
    assert b.ready(now=5.02)
    assert b.take() == ["a", "b"]
    assert b.time_left(now=9.0) == 0.02
