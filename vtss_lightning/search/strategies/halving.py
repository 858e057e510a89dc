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

Resume: with a :attr:`HalvingScorer.journal` (the search's progress file), the
schedule (every candidate of the split and its budget) is recorded before the first
rung, each rung's losses before anyone is pruned there, and each pruned candidate's
status before its (NaN) score. A rerun, given only the candidates still to finish,
replays that schedule: recorded rungs decide as they did (the pruned candidates are
not trained again and keep their "pruned at rung r" status), the survivors still
to finish are trained through the same rungs (stacked members thus continue from
the same steps), and the first unrecorded rung trains on. So a killed halving search
ends with the report of an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import torch

from vtss_lightning.search.strategies.base import Job, Scored

#: Halving trains on the hold-out only: its records are those of split 0.
SPLIT = 0


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
        #: Where the schedule, rung losses and statuses are kept (a store with
        #: ``entries``/``record``/``put_note``, e.g. the progress file; see the module
        #: docstring) and replayed from; ``None``: not kept.
        self.journal = None

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
        return next(iter(self._halve(dm, [(0, dict(sizes))], None)))[1]

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        """Halve over ``jobs``; on a resume (some of the schedule's candidates already
        scored, see the module docstring) over the recorded schedule."""
        return self._halve(dm, jobs, self.journal)

    def _halve(self, dm, jobs: list[Job], journal) -> Iterator[Scored]:
        runner, budgets = self.runner, self.runner.begin(dm, jobs)
        if budgets is None:
            self.fallback_reason = self.runner.fallback_reason
            if self.fallback is None:
                raise RuntimeError(f"halving cannot run: {self.fallback_reason}")
            runner, budgets = self.fallback, self.fallback.begin(dm, jobs)
        self._active = runner
        plan = _Plan.find(journal, jobs, budgets, self.eta)
        alive = list(range(len(plan.indices)))  # positions in the plan
        for r, target in enumerate(plan.rungs):
            losses = plan.rung(r, alive)
            if losses is None:  # not recorded: train the rung
                trained = runner.advance(dm, plan.jobs_of(alive), target)
                losses = {p: trained.get(plan.job(p), math.nan) for p in alive}
                plan.record_rung(r, alive, losses)
                keep = survivors(alive, losses, self.eta)
            else:  # the survivors still to finish reach the steps they had there
                keep = survivors(alive, losses, self.eta)
                if plan.jobs_of(keep):
                    runner.advance(dm, plan.jobs_of(keep), target)
            for p in alive:
                i = plan.indices[p]
                if p in keep or plan.job(p) is None:  # kept, or already scored
                    continue
                seconds = runner.prune(plan.job(p))
                status = pruned_status(
                    r + 1, len(plan.rungs) + 1, target, plan.budgets[p], losses[p]
                )
                self._status(journal, i, runner.statuses.get(i, status))
                yield i, math.nan, seconds
            alive = keep
        for item in runner.complete(dm, plan.jobs_of(alive)):
            if item[0] in runner.statuses:
                self._status(journal, item[0], runner.statuses[item[0]])
            yield item

    def _status(self, journal, i: int, status: str) -> None:
        """Set candidate ``i``'s status, kept before its score so a rerun reports it."""
        self.statuses[i] = status
        if journal is not None:
            journal.put_note(SPLIT, i, status)


class _Plan:
    """One split's schedule: all its candidates, their budgets, the recorded rungs.

    ``indices``/``budgets`` are the whole schedule's; ``job(p)`` is the position in
    this call's jobs of plan position ``p`` (``None``: already scored).
    """

    def __init__(self, journal, indices, budgets, jobs: list[Job], eta: float) -> None:
        self.journal, self.indices, self.budgets = journal, list(indices), list(budgets)
        self.rungs = rung_steps(self.budgets, eta)
        self._pos = {i: j for j, (i, _) in enumerate(jobs)}
        self._rungs: dict[int, dict] = {}
        for e in _entries(journal):
            if e.get("halving") == "rung" and e.get("plan") == self.indices:
                self._rungs[int(e["rung"])] = e

    @classmethod
    def find(cls, journal, jobs: list[Job], budgets: list[int], eta: float) -> _Plan:
        """The recorded schedule these jobs belong to (a resume), else a new one."""
        wanted = {i for i, _ in jobs}
        for e in reversed(_entries(journal)):
            indices, budgets_there = e.get("plan") or [], e.get("budgets") or []
            if e.get("halving") == "plan" and wanted <= set(indices):
                return cls(journal, indices, budgets_there, jobs, eta)
        plan = cls(journal, [i for i, _ in jobs], budgets, jobs, eta)
        if journal is not None and plan.rungs:
            journal.record({"halving": "plan", "plan": plan.indices, "budgets": plan.budgets})
        return plan

    def job(self, p: int) -> int | None:
        return self._pos.get(self.indices[p])

    def jobs_of(self, positions: list[int]) -> list[int]:
        """Job positions of the plan positions still to finish."""
        return [self.job(p) for p in positions if self.job(p) is not None]

    def rung(self, r: int, alive: list[int]) -> dict[int, float] | None:
        """Rung ``r``'s recorded losses by plan position, if recorded for ``alive``."""
        e = self._rungs.get(r)
        if e is None or e.get("alive") != alive or len(e.get("losses", ())) != len(alive):
            return None
        values = zip(alive, e["losses"], strict=True)
        return {p: math.nan if v is None else float(v) for p, v in values}

    def record_rung(self, r: int, alive: list[int], losses: dict[int, float]) -> None:
        if self.journal is None or not self.rungs:
            return
        values = [None if math.isnan(losses[p]) else losses[p] for p in alive]  # inf stays
        entry = {"halving": "rung", "plan": self.indices, "rung": r, "alive": alive}
        self.journal.record({**entry, "losses": values})


def _entries(journal) -> list[dict]:
    return [] if journal is None else list(getattr(journal, "entries", []))
