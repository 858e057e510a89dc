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

``"halving"`` runs each rung as fresh Lightning fits from the initial weights (cost
about ``s + 1`` full fits for ``K = eta**s``); ``"parallel_halving"`` trains each rung
as one stacked model and continues the survivors from where they stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytorch_lightning as pl
from pytorch_lightning.utilities.seed import isolate_rng

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.parallel import Member, ParallelScorer, full_budget
from vtss_lightning.search.strategies import ISOLATED, clone_module, quiet_lightning, seed_all


def rung_steps(budgets: list[int], eta: float) -> list[int]:
    """Step targets of the intermediate rungs (the last rung is each full budget)."""
    if eta <= 1:
        raise VTSSError(f"halving_eta must be > 1, got {eta}")
    k = len(budgets)
    if k < 2 or not budgets:
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


class HalvingScorer(ParallelScorer):
    """Successive halving over the candidates of a split (see the module docstring).

    Parameters
    ----------
    eta
        Halving factor: each rung keeps the best ``1/eta`` of the candidates.
    parallel
        Train each rung as one stacked model (falls back to one fit at a time, with
        the reason, when the module cannot be stacked).
    **kwargs
        :class:`ParallelScorer` arguments (``snapshot``, ``keep_states``, ...).
    """

    def __init__(
        self, template, settings, seed: int = 0, eta: float = 3.0, parallel: bool = False, **kw
    ) -> None:
        super().__init__(template, settings, seed, **kw)
        if eta <= 1:
            raise VTSSError(f"halving_eta must be > 1, got {eta}")
        self.eta, self.parallel = float(eta), parallel

    def score_many(self, dm, jobs: list[tuple[int, dict[int, int]]]) -> Iterator:
        if self.parallel and self.prepare(dm):
            yield from self._stacked(dm, jobs)
        else:
            yield from self._sequential(dm, jobs)

    # ------------------------------------------------------------ stacked
    def _stacked(self, dm, jobs) -> Iterator:
        members = self.members(dm, jobs)
        rungs = rung_steps([m.budget for m in members], self.eta)
        alive = list(range(len(members)))
        for r, target in enumerate(rungs):
            for chunk in self.chunks([members[j] for j in alive]):
                self.train(dm, chunk, {m.index: target for m in chunk})
            losses = {j: members[j].loss() for j in alive}
            keep = survivors(alive, losses, self.eta)
            for j in alive:
                if j not in keep:
                    yield self._prune(members[j], r + 1, len(rungs) + 1, target, losses[j])
            alive = keep
        for chunk in self.chunks([members[j] for j in alive]):
            self.train(dm, chunk, {m.index: m.budget for m in chunk})
            for m in chunk:
                yield self.result(m)

    def _prune(self, m: Member, rung: int, rungs: int, steps: int, loss: float):
        status = m.failed or pruned_status(rung, rungs, steps, m.budget, loss)
        self.statuses[m.index] = status
        keep, self.keep_states = self.keep_states, False
        self.finish(m)
        self.keep_states = keep
        return m.index, math.nan, m.seconds

    # --------------------------------------------------------- sequential
    def _sequential(self, dm, jobs) -> Iterator:
        full = bool(getattr(self.template, "full_batch", False))
        budgets = [
            full_budget(dm.make_train_loader(s, full_batch=full), self.settings) for _, s in jobs
        ]
        rungs = rung_steps(budgets, self.eta)
        seconds = [0.0] * len(jobs)
        alive = list(range(len(jobs)))
        for r, target in enumerate(rungs):
            losses = {}
            for j in alive:
                t0 = time.perf_counter()
                model = self.fit_steps(clone_module(self.template), dm, jobs[j][1], target)
                losses[j] = self.evaluate(model, dm)
                seconds[j] += time.perf_counter() - t0
            keep = survivors(alive, losses, self.eta)
            for j in alive:
                if j not in keep:
                    i = jobs[j][0]
                    self.statuses[i] = pruned_status(
                        r + 1, len(rungs) + 1, target, budgets[j], losses[j]
                    )
                    yield i, math.nan, seconds[j]
            alive = keep
        for j in alive:
            t0 = time.perf_counter()
            loss = super(ParallelScorer, self).score(dm, jobs[j][1])  # a full retrain fit
            yield jobs[j][0], loss, seconds[j] + time.perf_counter() - t0

    def fit_steps(self, model: pl.LightningModule, dm, sizes, steps: int) -> pl.LightningModule:
        """A retrain fit stopped after ``steps`` optimizer steps."""
        loader = dm.make_train_loader(sizes, full_batch=bool(getattr(model, "full_batch", False)))
        kwargs = {**self.settings.kwargs, "max_steps": steps, **ISOLATED}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        with isolate_rng(), quiet_lightning():
            seed_all(self.seed)
            pl.Trainer(**kwargs).fit(model, train_dataloaders=loader)
        return model
