"""Epochs of batches, each started in a background thread while the one before is consumed.

A data source that starts a new execution for every epoch (Ray Data does) makes the trainer
wait for each epoch's first batch. :class:`EpochPrefetcher` overlaps that start with the
training of the epoch before: a daemon thread per epoch pulls the epoch's batches into a
bounded queue, so at most two epochs are in flight and each holds at most ``ahead`` batches.
Batches and their order are the source's own; errors surface where the consumer reaches them;
closing (or leaving the ``with`` block, whatever the reason) stops and joins every thread.
No Ray here: :meth:`cryotune.data.pipeline.DataPipeline.train_epochs` wires it to the pipeline.

Example::

    from cryotune.data.prefetch import EpochPrefetcher
    with EpochPrefetcher(lambda e: range(e, e + 3), range(2), ahead=2) as epochs:
        print([(e, list(b)) for e, b in epochs])   # [(0, [0, 1, 2]), (1, [1, 2, 3])]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["PREFETCH_BATCHES", "EpochPrefetcher"]

# Batches an epoch's thread holds before the consumer takes them: enough to cover an epoch's
# start-up; a few MB at 128 px and batch 20.
PREFETCH_BATCHES = 4
# How often a thread blocked on a full queue looks whether it was stopped.
_POLL_S = 0.05


_END = object()  # an epoch's last batch was queued


class _Raised:
    """An exception of the producer thread, re-raised where the consumer reaches it."""

    def __init__(self, error: BaseException):
        self.error = error


class _Producer:
    """One epoch's batches pulled by a daemon thread into a bounded queue."""

    def __init__(self, batches: Callable[[], Iterable], ahead: int, name: str):
        self._make, self._queue = batches, queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        it = None
        try:
            it = iter(self._make())
            for item in it:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001  (handed to the consumer)
            self._put(_Raised(err))
        finally:
            close = getattr(it, "close", None)
            if close is not None:  # ends Ray Data's execution when the consumer stopped early
                close()

    def batches(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item

    def stop(self) -> None:
        """Stop pulling, drop what is queued and wait for the thread to end."""
        self._stop.set()
        while self.thread.is_alive():
            self._drain()
            self.thread.join(timeout=_POLL_S)
        self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


class EpochPrefetcher:
    """Epochs of batches, each started in a background thread while the one before is consumed.

    Iterating yields ``(epoch, batches)``. When the consumer takes epoch ``e``, a daemon thread
    builds epoch ``e + 1`` with ``make(e + 1)`` and pulls up to ``ahead`` of its batches into a
    bounded queue; epoch ``e``'s own thread goes on feeding it. The batches are those of
    ``make(e)``, in its order. An exception in a thread is raised where the consumer reaches
    it. Leaving an epoch early stops its thread when the next one is taken; :meth:`close`
    (also on leaving the ``with`` block, e.g. on the ``SystemExit`` of a stopped Tune trial)
    stops them all and waits for them.

    Args:
        make: ``epoch -> iterable of batches``.
        epochs: the epoch numbers, in order.
        ahead: batches held per epoch before the consumer takes them (at least 1).

    Example::

        with EpochPrefetcher(lambda e: [e] * 3, [4, 5]) as epochs:
            for epoch, batches in epochs:
                print(epoch, list(batches))         # 4 [4, 4, 4], then 5 [5, 5, 5]
    """

    def __init__(self, make: Callable[[int], Iterable], epochs: Iterable[int], *,
                 ahead: int = PREFETCH_BATCHES):
        self._make, self._epochs, self._ahead = make, [int(e) for e in epochs], ahead
        self._producers: list[_Producer] = []

    def _start(self, epoch: int) -> _Producer:
        producer = _Producer(lambda: self._make(epoch), self._ahead, f"cryotune-prefetch-epoch-{epoch}")
        self._producers.append(producer)
        return producer

    def __iter__(self) -> Iterator[tuple[int, Iterator]]:
        epochs = self._epochs
        try:
            following = self._start(epochs[0]) if epochs else None
            for i, epoch in enumerate(epochs):
                current = following
                following = self._start(epochs[i + 1]) if i + 1 < len(epochs) else None
                yield epoch, current.batches()
                current.stop()  # ends it when the consumer left the epoch early
                self._producers.remove(current)
        finally:
            self.close()

    def close(self) -> None:
        """Stop every epoch's thread and wait for it; idempotent."""
        while self._producers:
            self._producers.pop().stop()

    def __enter__(self) -> EpochPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
