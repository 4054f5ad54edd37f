"""Batching strategies behind one interface (`Strategy`); `STRATEGIES` names them for options."""

from __future__ import annotations

from batchq.engine.strategies.auto import AutoStrategy
from batchq.engine.strategies.base import Strategy
from batchq.engine.strategies.continuous import ContinuousBatches
from batchq.engine.strategies.naive import NaiveLoop
from batchq.engine.strategies.static import StaticBatches

BY_NAME: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (AutoStrategy, StaticBatches, ContinuousBatches, NaiveLoop)}
STRATEGIES: tuple[str, ...] = tuple(BY_NAME)

__all__ = ["BY_NAME", "STRATEGIES", "Strategy"]
