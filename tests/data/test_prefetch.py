"""EpochPrefetcher on plain Python sources: order, overlap, bounds, errors and thread shutdown.

The Ray Data side (the same batches as ``train_batches``, no thread left after an early stop)
is in ``test_pipeline.py``; a stopped Tune trial in ``tests/sweep/test_trainable.py``.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

import pytest

from cryotune.data.prefetch import EpochPrefetcher


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cryotune-prefetch")]


def parked_in_put(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked inside ``queue.Queue.put`` (waiting for room) right now."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "put" and frame.f_code.co_filename == queue.__file__:
            return True
        frame = frame.f_back
    return False


class Source:
    """Epoch e yields (e, 0), (e, 1), ...; records which epochs started, what it yielded and
    which iterators were closed before their end."""

    def __init__(self, batches: int = 5, fail: tuple[int, int] | None = None):
        self.batches, self.fail = batches, fail
        self.started: dict[int, threading.Event] = {}
        self.yielded: dict[int, int] = {}
        self.closed: list[int] = []

    def __call__(self, epoch: int):
        self.started.setdefault(epoch, threading.Event()).set()
        return self._epoch(epoch)

    def _epoch(self, epoch: int):
        self.yielded[epoch] = 0
        try:
            for i in range(self.batches):
                if self.fail == (epoch, i):
                    raise ValueError(f"batch {i} of epoch {epoch} is unreadable")
                self.yielded[epoch] += 1
                yield epoch, i
        except GeneratorExit:
            self.closed.append(epoch)
            raise

    def wait_started(self, epoch: int, timeout: float = 10.0) -> bool:
        return self.started.setdefault(epoch, threading.Event()).wait(timeout)


@pytest.mark.parametrize("ahead", [1, 3, 100])
def test_batches_and_order_are_the_sources(ahead):
    source = Source(batches=7)
    with EpochPrefetcher(source, [3, 1, 2], ahead=ahead) as epochs:
        got = [(epoch, list(batches)) for epoch, batches in epochs]
    assert got == [(e, [(e, i) for i in range(7)]) for e in (3, 1, 2)]
    assert source.closed == [] and prefetch_threads() == []


def test_the_next_epoch_starts_while_one_is_consumed_and_holds_at_most_ahead():
    source = Source(batches=20)
    with EpochPrefetcher(source, range(3), ahead=2) as epochs:
        it = iter(epochs)
        epoch, batches = next(it)
        assert epoch == 0 and next(batches) == (0, 0)
        assert source.wait_started(1)  # epoch 1 started before epoch 0 was consumed
        # each thread fills its queue of 2 and pulls one more batch, which waits for room: once
        # both threads are parked in Queue.put, nothing more can be pulled until a batch is taken
        deadline = time.monotonic() + 10
        def settled() -> bool:
            threads = prefetch_threads()
            return (len(threads) == 2 and all(map(parked_in_put, threads))
                    and (source.yielded.get(1), source.yielded[0]) == (3, 1 + 3))

        while time.monotonic() < deadline and not settled():
            time.sleep(0.01)
        assert settled(), (source.yielded, [parked_in_put(t) for t in prefetch_threads()])
        assert not source.started.get(2, threading.Event()).is_set()  # one epoch ahead
        assert list(batches) == [(0, i) for i in range(1, 20)]
        epoch, batches = next(it)
        assert epoch == 1 and list(batches) == [(1, i) for i in range(20)]
        assert source.wait_started(2)


def test_an_error_is_raised_where_the_consumer_reaches_it():
    source = Source(batches=5, fail=(1, 3))
    seen = []
    with pytest.raises(ValueError, match="batch 3 of epoch 1 is unreadable"):
        with EpochPrefetcher(source, range(4), ahead=2) as epochs:
            for _, batches in epochs:
                seen.extend(batches)
    assert seen == [(0, i) for i in range(5)] + [(1, i) for i in range(3)]
    assert prefetch_threads() == [] and 2 in source.closed  # epoch 2 had started: closed


def test_an_error_in_make_is_raised_at_its_epoch():
    def make(epoch):
        if epoch == 1:
            raise KeyError("no epoch 1")
        return [epoch]

    with pytest.raises(KeyError, match="no epoch 1"):
        with EpochPrefetcher(make, range(3)) as epochs:
            assert [(e, list(b)) for e, b in epochs] == [(0, [0])]
    assert prefetch_threads() == []


def test_stopping_early_closes_the_sources_and_leaves_no_thread():
    source = Source(batches=50)
    with EpochPrefetcher(source, range(10), ahead=4) as epochs:
        for epoch, batches in epochs:
            next(batches)
            assert source.wait_started(epoch + 1)
            break
    assert prefetch_threads() == []
    assert sorted(source.closed) == [0, 1]  # the one in hand and the one started ahead


def test_a_stopped_trial_leaves_no_thread():
    # tune.report raises SystemExit in the trial's thread when the scheduler stops the trial
    source = Source(batches=50)
    with pytest.raises(SystemExit):
        with EpochPrefetcher(source, range(10)) as epochs:
            for _, batches in epochs:
                next(batches)
                raise SystemExit(0)
    assert prefetch_threads() == [] and sorted(source.closed) == [0, 1]


def test_an_epoch_left_early_is_stopped_when_the_next_is_taken():
    source = Source(batches=30)
    with EpochPrefetcher(source, range(3), ahead=2) as epochs:
        got = {}
        for epoch, batches in epochs:
            got[epoch] = [next(batches)] if epoch == 0 else list(batches)
            if epoch == 1:
                assert 0 in source.closed  # ended when epoch 1 was taken
    assert got == {0: [(0, 0)], 1: [(1, i) for i in range(30)], 2: [(2, i) for i in range(30)]}
    assert prefetch_threads() == []


def test_no_epochs_and_close_twice():
    prefetcher = EpochPrefetcher(Source(), [])
    assert list(prefetcher) == []
    prefetcher.close()
    prefetcher.close()
    assert prefetch_threads() == []
