"""The hot loop's decisions, without a broker or a model: its scheduling between its scoring threads, and what it
does with an exactly-once transaction that cannot commit. A stand-in consumer hands out the records the test
releases, a stand-in scorer finishes each batch when the test says, and a stand-in producer acknowledges at once
(and fails the commits the test asks it to). What is checked is the order of decisions, never how long anything
took."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from inspector.contracts import FrameMeta
from inspector.errors import TransportError
from inspector.kafka.transport import ConsumedRecord, Partition, Pending
from inspector.model.artifact import load
from inspector.settings import load_settings
from inspector.stream.batch_scoring import Batch, BatchScorer, ScoredBatch, ScoredFrame
from inspector.stream.metrics import build_metrics
from inspector.stream.worker import MAX_TRANSACTIONS_GIVEN_UP, Worker
from tests.consumed import ConsumedFrame

WAIT_S = 10.0  # a bound on each wait for the worker's next step, so a wrong decision fails instead of hanging



def _records(first: int, count: int) -> list[ConsumedRecord]:
    return [ConsumedFrame("frames", 0, i, b"cam-1", b"", FrameMeta(frame_id=f"f-{i}", camera_id="cam-1", sequence=i,
                                                           captured_ns=1).to_headers()) for i in range(first, first + count)]


class _Consumer:
    """Hands out the records released so far, in order (one partition)."""

    def __init__(self) -> None:
        self._released: list[ConsumedRecord] = []
        self._next = 0  # the offset the next poll reads from
        self._lock = threading.Lock()
        self.committed: dict[Partition, int] = {}

    def release(self, records: list[ConsumedRecord]) -> None:
        with self._lock:
            self._released.extend(records)

    def rewind(self) -> None:
        with self._lock:
            self._next = self.committed.get(Partition("frames", 0), 0)

    def subscribe(self, on_revoked, on_assigned) -> None:  # type: ignore[no-untyped-def]  # noqa: ARG002
        on_assigned([Partition("frames", 0)])

    def poll(self, timeout_s: float, max_records: int) -> list[ConsumedRecord]:
        with self._lock:
            taken = self._released[self._next:self._next + max_records]
            self._next += len(taken)
        if not taken:
            threading.Event().wait(min(timeout_s, 0.01))
        return taken

    def commit(self, offsets: dict[Partition, int]) -> bool:
        self.committed.update(offsets)
        return True

    def commit_async(self, offsets: dict[Partition, int]) -> None:
        self.committed.update(offsets)

    def group_metadata(self) -> object:
        return None

    def assignment(self) -> set[Partition]:
        return {Partition("frames", 0)}

    def lag(self) -> dict[Partition, int]:
        return {}

    def close(self) -> None:
        pass


class _Producer:
    """Acknowledges every record at once; keeps the frame ids of the score records in the order they were sent (with
    exactly-once, of those whose transaction committed), and fails the next `failing_commits` commits."""

    def __init__(self, consumer: _Consumer, transactional: bool) -> None:
        self.consumer, self.transactional = consumer, transactional
        self.scored: list[str] = []
        self._transaction: list[str] = []
        self.failing_commits = 0
        self.renewals = 0

    def connected(self) -> bool:
        return True

    def begin(self) -> None:
        self._transaction = []

    def send(self, _topic: str, _key: str, _value: bytes, _headers: object, what: str) -> Pending:
        if what.startswith("score for frame "):
            (self._transaction if self.transactional else self.scored).append(what.removeprefix("score for frame "))
        return Pending(None, what)  # type: ignore[arg-type]

    def commit_with_offsets(self, offsets: dict[Partition, int], _group_metadata: object) -> None:
        if self.failing_commits:
            self.failing_commits -= 1
            raise TransportError("commit transaction did not finish in 60s")
        self.scored += self._transaction
        self.consumer.committed.update(offsets)

    def renew(self) -> None:
        self.renewals += 1
        self._transaction = []

    def flush_and_check(self, _pending: object) -> None:
        pass

    def acknowledged(self, _pending: object) -> bool:
        return True

    def wait_acknowledged(self, _pending: object) -> None:
        pass

    def close(self, _timeout_s: float = 10.0) -> None:
        pass


@dataclass
class _Scorer:
    """Starts batches as BatchScorer does and scores each one when the test calls `finish`."""

    artifact: object
    started: list[Batch] = field(default_factory=list)
    started_event: threading.Condition = field(default_factory=threading.Condition)

    def start(self, records: list[ConsumedRecord]) -> Batch:
        batch = Batch(list(records))
        with self.started_event:
            self.started.append(batch)
            self.started_event.notify_all()
        return batch

    def score_ahead(self, batch: Batch) -> None:
        batch.scoring = Future()

    def finish(self, index: int) -> None:
        batch = self.started[index]
        frames = [ScoredFrame(r, FrameMeta.from_headers(r.headers), 0.1, 1.0) for r in batch.records]
        assert batch.scoring is not None
        batch.scoring.set_result(ScoredBatch(frames, [], self.artifact, 1))  # type: ignore[arg-type]

    def scored(self, batch: Batch) -> ScoredBatch:
        if batch.scoring is None:  # not scored ahead (the overlap is off): scored now
            batch.scoring = Future()
            self.finish(self.started.index(batch))
        return batch.scoring.result()

    def wait_for_any(self, batches: list[Batch]) -> None:
        BatchScorer.wait_for_any(self, batches)  # type: ignore[arg-type]

    def wait_started(self, count: int) -> list[int]:
        """The sizes of the first `count` batches started, once they are."""
        with self.started_event:
            assert self.started_event.wait_for(lambda: len(self.started) >= count, WAIT_S), \
                f"the worker started {len(self.started)} batches, not {count}"
            return [len(batch.records) for batch in self.started[:count]]

    def shutdown(self) -> None:
        pass


class _Runner:
    device = torch.device("cpu")

    def __init__(self, artifact: object, streams: int) -> None:
        self.artifact, self.streams = artifact, streams


@pytest.fixture(params=[(2, 32, False)])
def line(default_model_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A worker with (scoring threads, batch size, exactly-once) of `request.param` running in a thread of its own,
    its stand-ins, and a list that receives what the loop raised, if it did."""
    streams, max_size, exactly_once = request.param
    settings = load_settings(model={"path": default_model_path, "device": "cpu"}, kafka={"evidence_topic": ""},
                             batch={"max_size": max_size})
    artifact = load(default_model_path)
    consumer = _Consumer()
    producer = _Producer(consumer, exactly_once)
    worker = Worker(settings, _Runner(artifact, streams), consumer, producer,  # type: ignore[arg-type]
                    build_metrics(CollectorRegistry()))
    worker.scorer.shutdown()  # the real one's threads; the stand-in takes its place
    scorer = worker.scorer = _Scorer(artifact)  # type: ignore[assignment]
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except Exception as exc:
            raised.append(exc)

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    yield consumer, producer, scorer, raised
    worker.stop()
    loop.join(WAIT_S)
    assert not loop.is_alive()


def _until(condition: Callable[[], bool]) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the worker did not get there")


def test_frames_are_shared_among_the_idle_scoring_threads_and_one_slow_batch_holds_up_no_thread(line) -> None:
    consumer, producer, scorer, _ = line
    consumer.release(_records(0, 1))  # the first batch is scored at once: quick, it turns the overlap on
    assert scorer.wait_started(1) == [1]

    consumer.release(_records(1, 10))  # both scoring threads idle: half each
    assert scorer.wait_started(3)[1:] == [5, 5]

    scorer.finish(2)  # the newer batch is through first; the older one still scores
    consumer.release(_records(11, 3))
    assert scorer.wait_started(4)[3] == 3  # started on the idle thread, not held until the older batch is through

    scorer.finish(3)
    scorer.finish(1)
    consumer.release(_records(14, 2))  # a thread each again
    assert scorer.wait_started(6)[4:] == [1, 1]
    scorer.finish(4)
    scorer.finish(5)

    _until(lambda: len(producer.scored) == 16)
    assert producer.scored == [f"f-{i}" for i in range(16)]  # published in record order all the same
    assert consumer.committed[Partition("frames", 0)] == 16


@pytest.mark.parametrize("line", [(1, 4, False)], indirect=True)
def test_with_one_scoring_thread_the_next_batch_is_taken_while_one_scores(line) -> None:
    consumer, producer, scorer, _ = line
    consumer.release(_records(0, 1))
    assert scorer.wait_started(1) == [1]  # scored at once: the overlap comes on
    consumer.release(_records(1, 7))
    assert scorer.wait_started(3)[1:] == [4, 3]  # the second taken (decoding, on CUDA) while the first scores
    scorer.finish(1)
    scorer.finish(2)
    _until(lambda: len(producer.scored) == 8)
    assert producer.scored == [f"f-{i}" for i in range(8)]


@pytest.mark.parametrize("line", [(2, 8, True)], indirect=True)
def test_exactly_once_a_transaction_that_cannot_commit_is_given_up_and_its_frames_scored_again(line) -> None:
    consumer, producer, scorer, raised = line
    producer.failing_commits = 1
    consumer.release(_records(0, 3))
    _until(lambda: consumer.committed.get(Partition("frames", 0)) == 3)
    assert producer.renewals == 1  # a new client fenced the transaction given up
    assert [len(batch.records) for batch in scorer.started] == [3, 3]  # read again from the committed offset
    assert producer.scored == ["f-0", "f-1", "f-2"]  # once each: the first transaction's scores were never committed
    assert not raised


@pytest.mark.parametrize("line", [(2, 8, True)], indirect=True)
def test_exactly_once_the_worker_stops_when_transactions_fail_in_a_row(line) -> None:
    consumer, producer, _, raised = line
    producer.failing_commits = MAX_TRANSACTIONS_GIVEN_UP + 1
    consumer.release(_records(0, 2))
    _until(lambda: bool(raised))
    assert isinstance(raised[0], TransportError) and producer.renewals == MAX_TRANSACTIONS_GIVEN_UP
    assert producer.scored == [] and not consumer.committed
