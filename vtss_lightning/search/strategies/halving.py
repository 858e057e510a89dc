"""``strategy="halving"`` / ``"parallel_halving"``: successive halving over candidates.

The resource is optimizer steps. With ``K`` candidates and factor ``eta`` there are
``s = floor(log_eta K)`` intermediate rungs at ``B * eta**-s, ..., B / eta`` steps,
equal for every candidate, where ``B`` is the smallest candidate's full budget (so a
rung never exceeds anyone's budget); after each rung the best ``1/eta`` (at least
one) by balanced validation loss go on, ties to the smaller size. Survivors of the
last rung get their full retrain budget (``max_epochs`` over their own training
set), so the winner is chosen among fully trained candidates only and is exactly a
``retrain`` fit. Pruned candidates report no loss (they are never compared with
fully trained ones); their status says where they stopped.

How a rung is trained is not this module's business: :class:`HalvingScorer` drives
a *rung runner* (:class:`RungRunner`). ``"halving"`` gets retrain's runner (each rung
fresh Lightning fits from the initial weights: about ``s + 1`` full fits for
``K = eta**s``); ``"parallel_halving"`` gets the stacked runner (each rung one stacked
model, survivors continuing where they stopped), with retrain's runner as fallback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import torch

from vtss_lightning.search.strategies.base import Job, Scored


class RungRunner(Protocol):
    """Trains a split's candidates rung by rung (supplied by retrain or parallel)."""

    statuses: dict[int, str]
    fallback_reason: str | None
    scorer: object  # the strategy whose weights and split state the runner uses

    def begin(self, dm, jobs: list[Job]) -> list[int] | None:
        """Each job's full budget in steps, or ``None`` when this runner cannot run."""

    def advance(self, dm, alive: list[int], steps: int) -> dict[int, float]:
        """Bring the alive jobs (positions in ``jobs``) to ``steps`` steps; their losses."""

    def prune(self, j: int) -> float:
        """Stop job ``j``; the seconds spent on it."""

    def complete(self, dm, alive: list[int]) -> Iterator[Scored]:
        """Train the survivors to their full budgets and score them."""


def rung_steps(budgets: list[int], eta: float) -> list[int]:
    """Step targets of the intermediate rungs (the last rung is each full budget)."""
    k = len(budgets)
    if k < 2:
        return []
    s = int(math.floor(math.log(k) / math.log(eta) + 1e-9))
    ref = min(budgets)
    return [max(1, math.ceil(ref * eta ** (i - s))) for i in range(s)]


def survivors(alive: list[int], losses: dict[int, float], eta: float) -> list[int]:
    """The best ``len(alive) / eta`` (at least one); NaN last, ties to the earlier (smaller)."""
    keep = max(1, int(len(alive) // eta))
    rank = sorted(alive, key=lambda j: (math.isnan(losses[j]), losses[j], j))
    chosen = set(rank[:keep])
    return [j for j in alive if j in chosen]


def pruned_status(rung: int, rungs: int, steps: int, budget: int, loss: float) -> str:
    return (
        f"pruned at rung {rung}/{rungs} after {steps} of {budget} optimizer steps "
        f"({steps / max(1, budget):.0%}); balanced val loss there {loss:.4f} "
        "(not comparable with fully trained candidates)"
    )


class HalvingScorer:
    """Successive halving over the candidates of a split (see the module docstring).

    Parameters
    ----------
    runner
        How rungs are trained.
    eta
        Halving factor: each rung keeps the best ``1/eta`` of the candidates.
    fallback
        Runner used when ``runner.begin`` declines (a module that cannot be stacked).
    """

    def __init__(
        self, runner: RungRunner, eta: float = 3.0, fallback: RungRunner | None = None
    ) -> None:
        self.runner, self.fallback, self.eta = runner, fallback, float(eta)
        self.statuses: dict[int, str] = {}
        self.fallback_reason: str | None = None
        self._active = runner

    @property
    def comparators(self) -> dict[str, float]:
        """The no-synthetic comparator of the runner in use (see ``BaseScorer``)."""
        return self._active.scorer.comparators

    @property
    def full_batch(self) -> bool:
        return bool(getattr(self.runner.scorer, "full_batch", False))

    def _runners(self) -> list[RungRunner]:
        return [r for r in (self.runner, self.fallback) if r is not None]

    def begin_split(self, dm) -> None:
        for r in self._runners():
            r.scorer.begin_split(dm)

    def trained_state(self, sizes: Mapping[int, int]) -> dict[str, torch.Tensor] | None:
        for r in self._runners():
            state = r.scorer.trained_state(sizes)
            if state is not None:
                return state
        return None

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        return next(iter(self.score_many(dm, [(0, dict(sizes))])))[1]

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        runner, budgets = self.runner, self.runner.begin(dm, jobs)
        if budgets is None:
            self.fallback_reason = self.runner.fallback_reason
            if self.fallback is None:
                raise RuntimeError(f"halving cannot run: {self.fallback_reason}")
            runner, budgets = self.fallback, self.fallback.begin(dm, jobs)
        self._active = runner
        rungs = rung_steps(budgets, self.eta)
        alive = list(range(len(jobs)))
        for r, target in enumerate(rungs):
            losses = runner.advance(dm, alive, target)
            keep = survivors(alive, losses, self.eta)
            for j in alive:
                if j not in keep:
                    seconds = runner.prune(j)
                    i = jobs[j][0]
                    status = pruned_status(r + 1, len(rungs) + 1, target, budgets[j], losses[j])
                    self.statuses[i] = runner.statuses.get(i, status)
                    yield i, math.nan, seconds
            alive = keep
        for item in runner.complete(dm, alive):
            if item[0] in runner.statuses:
                self.statuses[item[0]] = runner.statuses[item[0]]
            yield item
