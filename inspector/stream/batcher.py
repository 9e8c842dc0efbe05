"""Size/time micro-batching, no I/O: a batch closes when it holds `max_size` items or its first item has
waited `max_wait_s`. The caller supplies the clock so tests need no sleeping."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    def __init__(self, max_size: int, max_wait_s: float) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._items: list[T] = []
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def room(self) -> int:
        """How many more items fit."""
        return self.max_size - len(self._items)

    def add(self, item: T, now: float) -> None:
        if len(self._items) >= self.max_size:
            raise OverflowError("batch is full; take() it first")
        if not self._items:
            self._opened_at = now
        self._items.append(item)

    def time_left(self, now: float) -> float:
        """Seconds until the open batch must close (max_wait if empty: nothing is waiting)."""
        if self._opened_at is None:
            return self.max_wait_s
        return max(0.0, self._opened_at + self.max_wait_s - now)

    def ready(self, now: float) -> bool:
        return len(self._items) >= self.max_size or (bool(self._items) and self.time_left(now) <= 0)

    def take(self) -> list[T]:
        items, self._items, self._opened_at = self._items, [], None
        return items
