"""A consumed frame record as the unit tests hand it to the worker's stages (`transport.ConsumedRecord`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsumedFrame:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
