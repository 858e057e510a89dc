"""``strategy="retrain"`` and ``"finetune"``: one fresh Lightning fit per candidate.

``retrain`` is the reference every other strategy is measured against: each
candidate trains from the template's initial weights with the same seed and budget,
so candidates differ only in their training rows (real rows + their pool prefix).
:class:`RetrainRungs` offers the same fits to successive halving, stopped early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from vtss_lightning.search.guard import free_device_memory, is_out_of_memory
from vtss_lightning.search.strategies.base import (
    BaseScorer,
    Job,
    Scored,
    clone_module,
    full_budget,
)

if TYPE_CHECKING:  # either Lightning package at run time (vtss_lightning._lightning)
    import pytorch_lightning as pl


class RetrainScorer(BaseScorer):
    """Every candidate: same initial weights, same settings, a fresh Trainer.

    The template module is cloned (never trained), so the outer model keeps its
    initial weights for the final fit. This is :class:`BaseScorer`'s own recipe,
    named: other strategies fall back to it.
    """


class FinetuneScorer(BaseScorer):
    """One model on real rows per split; each candidate fine-tunes a copy of it.

    Costs one full fit plus ``fraction`` of a fit per candidate instead of one full fit
    per candidate. The price: candidates share a starting point shaped by the real
    rows only, so a short fine-tune may understate the effect of large synthetic sizes,
    and warm starts generalise worse than fresh ones (Ash & Adams, 2020). Use it to
    screen, ``retrain`` to decide.
    """

    def __init__(self, template, settings, seed: int = 0, fraction: float = 0.3) -> None:
        super().__init__(template, settings, seed)
        self.fraction = fraction
        self._base: pl.LightningModule | None = None

    def begin_split(self, dm) -> None:
        super().begin_split(dm)
        self._base = self.fit(clone_module(self.template), dm, {})

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        model = self.fit(clone_module(self._base), dm, sizes, fraction=self.fraction)
        return self.evaluate(model, dm)


class RetrainRungs:
    """Halving rungs as fresh fits: every rung restarts from the initial weights.

    A rung of ``steps`` is a retrain fit stopped after ``steps`` optimizer steps; the
    survivors of the last rung get full retrain fits (guarded like ``retrain``), so the
    winner is exactly a ``retrain`` candidate.
    """

    def __init__(self, scorer: RetrainScorer) -> None:
        self.scorer = scorer
        self.statuses = scorer.statuses
        self.fallback_reason: str | None = None
        self._jobs: list[Job] = []
        self._seconds: list[float] = []

    def begin(self, dm, jobs: list[Job]) -> list[int] | None:
        """Each job's full budget in optimizer steps."""
        self._jobs, self._seconds = list(jobs), [0.0] * len(jobs)
        loaders = [self.scorer.train_loader(dm, sizes) for _, sizes in jobs]
        return [full_budget(loader, self.scorer.settings) for loader in loaders]

    def advance(self, dm, alive: list[int], steps: int) -> dict[int, float]:
        """Train each alive job afresh for ``steps`` steps; its balanced val loss."""
        losses = {}
        for j in alive:
            t0 = time.perf_counter()
            try:
                model = clone_module(self.scorer.template)
                self.scorer.fit(model, dm, self._jobs[j][1], max_steps=steps)
                losses[j] = self.scorer.evaluate(model, dm)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(exc):
                    raise
                free_device_memory()
                losses[j] = math.nan
                self.statuses[self._jobs[j][0]] = f"failed: out of memory after {steps} steps"
            self._seconds[j] += time.perf_counter() - t0
        return losses

    def prune(self, j: int) -> float:
        """Seconds spent on job ``j``, which trains no further."""
        return self._seconds[j]

    def complete(self, dm, alive: list[int]) -> Iterator[Scored]:
        """Full retrain fits of the survivors."""
        jobs = [self._jobs[j] for j in alive]
        spent = {self._jobs[j][0]: self._seconds[j] for j in alive}
        for i, loss, secs in self.scorer.score_many(dm, jobs):
            yield i, loss, spent[i] + secs
