"""The pieces of the stacked strategies around the stack itself.

:class:`Member` is one candidate inside a stack (its batch stream, step budget and
weights); :class:`StackedRungs` offers stacked training to successive halving;
:func:`settings_blocker` says which trainer settings the stacked loop cannot replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from vtss_lightning.search.strategies._stack import MemberState
from vtss_lightning.search.strategies.base import Job, Scored

if TYPE_CHECKING:
    from vtss_lightning.search.strategies.parallel import ParallelScorer


@dataclass
class Member:
    """One candidate inside the parallel trainer: its data stream, budget and state."""

    index: int
    sizes: dict[int, int]
    loader: object  # TensorBatches: x, y, batch_size, next_order()
    budget: int  # optimizer steps of a full retrain fit
    state: MemberState
    steps: int = 0
    pos: int = 0
    epoch_x: torch.Tensor | None = None
    epoch_y: torch.Tensor | None = None
    best_loss: torch.Tensor | None = None
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    evaluated_at: int = -1
    seconds: float = 0.0
    failed: str | None = None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos == 0:
            order = self.loader.next_order()
            x, y = self.loader.x, self.loader.y
            self.epoch_x, self.epoch_y = (x, y) if order is None else (x[order], y[order])
        end = self.pos + self.loader.batch_size
        return self.epoch_x[self.pos : end], self.epoch_y[self.pos : end]

    def advance(self, rows: int) -> bool:
        """Count one step of ``rows`` rows; True when it ended an epoch."""
        self.steps += 1
        self.pos += rows
        if self.pos >= len(self.loader.y):
            self.pos = 0
            return True
        return False

    def snapshot(self) -> tuple:
        """Everything a stacked run changes, to restart from here after running out of memory."""
        return (
            self.state, self.steps, self.pos, self.epoch_x, self.epoch_y, self.best_loss,
            self.best, self.evaluated_at, self.loader._passes,
        )  # fmt: skip

    def restore(self, snap: tuple) -> None:
        (
            self.state, self.steps, self.pos, self.epoch_x, self.epoch_y, self.best_loss,
            self.best, self.evaluated_at, self.loader._passes,
        ) = snap  # fmt: skip

    def loss(self) -> float:
        if self.failed is not None:
            return math.nan
        value = math.inf if self.best_loss is None else float(self.best_loss)
        return value if math.isfinite(value) else math.nan


def settings_blocker(settings) -> str | None:
    """Trainer settings the stacked loop does not replay, as the reason (else ``None``).

    The stacked loop counts optimizer steps (``max_epochs`` passes, capped by
    ``max_steps``); ``min_epochs``/``min_steps`` only delay an early stop, which the
    stacked loop never makes, so they change nothing there. ``max_time`` is a
    wall-clock budget per candidate fit that a stack of members cannot split fairly.
    """
    kw = settings.kwargs
    if kw.get("max_time") is not None:
        return (
            f"max_time ({kw['max_time']}) is a wall-clock budget per candidate fit, which "
            "the stacked loop (counting steps) cannot honour; only retrain does"
        )
    if settings.callbacks:
        names = ", ".join(type(c).__name__ for c in settings.callbacks)
        return f"the trainer's callbacks ({names}) shape training; only retrain replays them"
    if str(kw.get("precision") or "32-true") not in ("32", "32-true"):
        return f"precision {kw['precision']} is not replayed by the stacked loop"
    if kw.get("gradient_clip_val"):
        return "gradient clipping is per model and not replayed by the stacked loop"
    if (kw.get("accumulate_grad_batches") or 1) != 1:
        return "accumulate_grad_batches is not replayed by the stacked loop"
    if kw.get("limit_train_batches") not in (None, 1, 1.0):
        return "limit_train_batches is not replayed by the stacked loop"
    devices = kw.get("devices")
    if (
        kw.get("strategy") not in (None, "auto")
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, list | tuple) and len(devices) > 1)
    ):
        return "several devices per candidate (DDP) need retrain"
    return None


class StackedRungs:
    """Halving rungs as stacked models: survivors continue from where they stopped.

    Offered to :class:`~vtss_lightning.search.strategies.halving.HalvingScorer` by the
    strategy registry; ``begin`` returns ``None`` when the module cannot be stacked
    (the halving then runs on its fallback rungs, with ``fallback_reason`` set).
    """

    def __init__(self, scorer: ParallelScorer) -> None:
        self.scorer = scorer
        self.statuses = scorer.statuses
        self._members: list[Member] = []

    @property
    def fallback_reason(self) -> str | None:
        return self.scorer.fallback_reason

    def begin(self, dm, jobs: list[Job]) -> list[int] | None:
        if not self.scorer.prepare(dm):
            return None
        self._members = self.scorer.members(dm, jobs)
        return [m.budget for m in self._members]

    def advance(self, dm, alive: list[int], steps: int) -> dict[int, float]:
        for chunk in self.scorer.chunks([self._members[j] for j in alive]):
            self.scorer.train(dm, chunk, {m.index: steps for m in chunk})
        return {j: self._members[j].loss() for j in alive}

    def prune(self, j: int) -> float:
        m = self._members[j]
        if m.failed is not None:
            self.statuses[m.index] = m.failed
        self.scorer.finish(m, keep=False)
        return m.seconds

    def complete(self, dm, alive: list[int]) -> Iterator[Scored]:
        for chunk in self.scorer.chunks([self._members[j] for j in alive]):
            self.scorer.train(dm, chunk, {m.index: m.budget for m in chunk})
            for m in chunk:
                yield self.scorer.result(m)
