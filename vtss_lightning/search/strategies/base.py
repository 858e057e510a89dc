"""What every strategy shares: the scorer contract, its defaults and the guarded loop.

A strategy turns ``(candidate index, per-class sizes)`` jobs into balanced validation
losses. :class:`BaseScorer` gives the contract a default for everything but
:meth:`~BaseScorer.score`: ``score_many`` runs the jobs one at a time, each timed and
guarded against running out of memory (:mod:`vtss_lightning.search.guard`), so a
strategy that only knows how to score one candidate is complete, and a strategy that
trains several at once overrides ``score_many`` and explains its NaNs in ``statuses``.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch

from vtss_lightning.search.guard import CandidateFailed, score_guarded
from vtss_lightning.search.objective import balanced_loss, logit_adjusted_loss
from vtss_lightning.search.strategies.inner_fit import clone_module, fit_candidate
from vtss_lightning.search.strategies.settings import TrainerSettings

#: A LightningModule of either Lightning package (see :mod:`vtss_lightning._lightning`).
LightningModule = Any
__all__ = [
    "BaseScorer",
    "Job",
    "Scored",
    "Scorer",
    "StagedScored",
    "StagedScorer",
    "TrainerSettings",
    "clone_module",
]
#: One job of a search: the candidate's index in the grid and its per-class sizes.
Job = tuple[int, dict[int, int]]
#: What a strategy yields per finished job: index, balanced validation loss, seconds.
Scored = tuple[int, float, float]
#: The same for a job staged with :meth:`StagedScorer.stage`: split first.
StagedScored = tuple[int, int, float, float]


def is_full_batch(module: torch.nn.Module) -> bool:
    """Whether the module trains on all rows at once (e.g. L-BFGS logistic regression)."""
    return bool(getattr(module, "full_batch", False))


def scored_by_log_loss(model: torch.nn.Module) -> bool:
    """Whether the model's validation loss is cross-entropy (logit adjustment applies)."""
    if getattr(model, "per_sample_loss", None) is None:
        return True
    return dict(getattr(model, "hparams", {}) or {}).get("loss", "cross_entropy") == "cross_entropy"


def full_budget(loader, settings: TrainerSettings) -> int:
    """Optimizer steps of a Lightning fit over ``loader`` with the trainer's limits."""
    per_epoch = len(loader)
    epochs = settings.kwargs.get("max_epochs")
    steps = settings.kwargs.get("max_steps")
    steps = steps if steps is not None and steps > 0 else math.inf
    if epochs is None or epochs < 0:
        epochs = math.inf if steps < math.inf else 1000  # Lightning's default
    return int(min(epochs * per_epoch, steps))


def state_key(sizes: Mapping[int, int]) -> tuple:
    """Hashable candidate identity: its non-zero per-class sizes."""
    return tuple(sorted((int(k), int(v)) for k, v in sizes.items() if v))


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the module's state, safe to keep after training moves on."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Scorer(Protocol):
    """What the engine and the Lightning adapters need from a strategy."""

    #: Why a candidate's loss is NaN (or how it was trained differently), by index.
    statuses: dict[int, str]
    #: Set when the strategy trained one candidate at a time instead of its own way.
    fallback_reason: str | None
    #: Balanced val loss of the no-synthetic candidate after logit adjustment, by split.
    comparators: dict[str, float]

    def begin_split(self, dm) -> None: ...

    def score(self, dm, sizes: Mapping[int, int]) -> float: ...

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]: ...

    def trained_state(self, sizes: Mapping[int, int]) -> dict[str, torch.Tensor] | None: ...


class StagedScorer(Scorer, Protocol):
    """A strategy that schedules every split's jobs together (``scores_across_splits``).

    The engine enters each split with pending jobs as for any scorer (pool prepared,
    :meth:`begin_split` called) and hands its jobs to :meth:`stage`; after the last
    split it iterates :meth:`run_staged`, with the DataModule back on the hold-out.
    ``trained_state`` keeps its meaning: weights from the last split staged. Statuses
    stay keyed by candidate index, as for ``score_many``.
    """

    #: Declares the two-phase call; a scorer without it is fed one split at a time.
    scores_across_splits: bool

    def stage(self, dm, split: int, jobs: list[Job]) -> None:
        """Copy what the jobs of split ``split`` (the active one) need; train nothing yet."""

    def run_staged(self, verbose: bool = False) -> Iterator[StagedScored]:
        """Train every staged job; yield ``(split, index, loss, seconds)`` as each finishes.

        ``verbose`` is the search's: whether the strategy may print its own progress.
        """


class BaseScorer:
    """Shared state and defaults of every strategy.

    Parameters
    ----------
    template
        The user's module at its initial weights; cloned for every fit, never trained.
    settings
        The inner Trainer's settings (device, precision, budget).
    seed
        Seed of every candidate fit: candidates differ only in their training rows.
    keep_states
        Keep each candidate's trained weights so the winner can become the final model.
    """

    def __init__(
        self,
        template: LightningModule,
        settings: TrainerSettings,
        seed: int = 0,
        keep_states: bool = False,
    ) -> None:
        self.template = template
        self.settings = settings
        self.seed = seed
        self.keep_states = keep_states
        self.statuses: dict[int, str] = {}
        self.fallback_reason: str | None = None
        self.comparators: dict[str, float] = {}
        self._states: dict[tuple, dict[str, torch.Tensor]] = {}
        self._states_split: weakref.ref | None = None  # the split they were trained in

    @property
    def full_batch(self) -> bool:
        return is_full_batch(self.template)

    def begin_split(self, dm) -> None:
        """Forget the previous split's weights: they are reusable only where trained.

        Entering the same split again (the hold-out, when the grid is extended) keeps
        them, so a winner trained before the extension is still handed over.
        """
        split = dm.active
        if self._states_split is None or self._states_split() is not split:
            self._states.clear()
        self._states_split = weakref.ref(split)

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        """The retrain recipe: a clone of the template trained afresh, then scored."""
        model = self.fit(clone_module(self.template), dm, sizes)
        if self.keep_states:
            self.keep(sizes, cpu_state(model))
        self.record_comparator(model, dm, sizes)
        return self.evaluate(model, dm)

    def record_comparator(self, model: LightningModule, dm, sizes: Mapping[int, int]) -> None:
        """For the no-synthetic candidate, the free non-synthetic remedy on the same rows:
        its logits minus the log training priors (post-hoc logit adjustment)."""
        if any(sizes.values()) or not scored_by_log_loss(model):
            return
        split = dm.active
        model.to(split.x_val.device)
        priors = torch.as_tensor(split.class_counts, dtype=torch.float64)
        self.comparators[split.name] = logit_adjusted_loss(
            model, split.x_val, split.y_val, dm.num_classes, priors
        )

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        """Each job in turn, timed, retried smaller after running out of memory.

        A candidate that fails even at the smallest batch is scored NaN with the
        reason in :attr:`statuses`; other errors propagate.
        """
        for i, sizes in jobs:
            t0 = time.perf_counter()
            try:
                loss, note = score_guarded(self, dm, sizes)
            except CandidateFailed as exc:
                loss, note = math.nan, str(exc)
            if note is not None:
                self.statuses[i] = note
            yield i, loss, time.perf_counter() - t0

    def trained_state(self, sizes: Mapping[int, int]) -> dict[str, torch.Tensor] | None:
        """Weights of the candidate trained at ``sizes`` on the last split, if kept."""
        return self._states.get(state_key(sizes))

    def keep(self, sizes: Mapping[int, int], state: dict[str, torch.Tensor]) -> None:
        """Remember a candidate's weights when the winner may be reused."""
        if self.keep_states:
            self._states[state_key(sizes)] = state

    def train_loader(self, dm, sizes: Mapping[int, int]):
        """The candidate's training batches: real rows plus its pool prefix."""
        return dm.make_train_loader(sizes, full_batch=self.full_batch)

    def fit(
        self,
        model: LightningModule,
        dm,
        sizes: Mapping[int, int],
        fraction: float = 1.0,
        max_steps: int | None = None,
    ) -> LightningModule:
        """Train ``model`` on the candidate's rows with the inner-fit recipe."""
        loader = dm.make_train_loader(sizes, full_batch=is_full_batch(model))
        return fit_candidate(
            model, loader, self.settings, self.seed, fraction, max_steps, dm=dm, sizes=sizes
        )

    def evaluate(self, model: LightningModule, dm) -> float:
        """Balanced loss of ``model`` on the active split's validation rows."""
        split = dm.active
        model.to(split.x_val.device)
        return balanced_loss(model, split.x_val, split.y_val, dm.num_classes)
