"""Non-synthetic baselines for VTSS: tuned cost-sensitive weighting.

Instead of adding synthetic minority rows, reweight the minority class's loss by
``w`` and pick ``w`` by the same balanced validation loss VTSS uses, on the same
splits. Ma & Zhang (arXiv 2601.16120) compare the two in experiment 6 (see
``benchmarks/paper/exp6_remedies.py``); offering both lets users check whether
synthetic data earns its place on their data. (Random oversampling, the other
baseline, is a generator: :class:`vtss_lightning.generators.RandomOversampler`.)

Lives outside :mod:`vtss_lightning.search` because it uses the search's strategies
without being part of a search; import it as ``from vtss_lightning.baselines import
tune_class_weight``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vtss_lightning._random import seeded
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings

if TYPE_CHECKING:  # either Lightning package at run time (vtss_lightning._lightning)
    import pytorch_lightning as pl

__all__ = ["DEFAULT_WEIGHTS", "ClassWeightResult", "tune_class_weight"]

#: Minority-loss weights tried by default (1 = plain ERM).
DEFAULT_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class ClassWeightResult:
    """Balanced validation loss per candidate weight (mean over splits).

    ``val_balanced_loss[i]`` is ``None`` when a fit diverged (non-finite loss).
    """

    weights: list[float]
    val_balanced_loss: list[float | None]
    best_weight: float
    fold_losses: list[list[float | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "val_balanced_loss": self.val_balanced_loss,
            "best_weight": self.best_weight,
            "fold_losses": self.fold_losses,
        }


def tune_class_weight(
    make_model: Callable[[float], pl.LightningModule],
    dm,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    trainer_kwargs: Mapping[str, Any] | None = None,
    folds: int | None = None,
    repeats: int = 1,
    seed: int = 0,
) -> ClassWeightResult:
    """Pick the minority-class loss weight with the lowest balanced validation loss.

    Parameters
    ----------
    make_model
        Builds a fresh model whose training loss weights the minority class by its
        argument, e.g. ``lambda w: TabularClassifier(class_weight=w)``.
    dm
        A VTSS DataModule; only its real training rows are used (no generator).
    weights
        Candidate weights (> 0).
    trainer_kwargs
        Budget and device of every fit (``max_epochs``, ``accelerator``, ...).
    folds, repeats
        Stratified (repeated) K-fold instead of the DataModule's hold-out: the same
        folds :class:`~vtss_lightning.VTSSCallback` uses with the same DataModule seed.
    seed
        Seed of every fit (each weight starts from the same initial weights).

    Returns
    -------
    ClassWeightResult
        Ties go to the smaller weight (closer to plain ERM).
    """
    weights = [float(w) for w in weights]
    if not weights or any(not (math.isfinite(w) and w > 0) for w in weights):
        raise VTSSError(f"weights must be a non-empty list of numbers > 0, got {weights}")
    settings = TrainerSettings.from_kwargs(trainer_kwargs)
    dm.setup()
    splits = [None] if folds is None else list(dm.fold_indices(folds, repeats))
    losses: list[list[float | None]] = [[] for _ in weights]
    for split in splits:
        with nullcontext() if split is None else dm.use_split(*split):
            for i, w in enumerate(weights):
                loss = _weight_loss(make_model, w, dm, settings, seed)
                losses[i].append(loss if math.isfinite(loss) else None)
    means = [None if None in row else sum(row) / len(row) for row in losses]
    finite = [(m, w) for m, w in zip(means, weights, strict=True) if m is not None]
    if not finite:
        raise VTSSError("every class-weight fit diverged (non-finite validation loss)")
    best = min(finite)[1]
    return ClassWeightResult(weights, means, best, losses if len(splits) > 1 else [])


def _weight_loss(
    make_model: Callable[[float], pl.LightningModule],
    w: float,
    dm,
    settings: TrainerSettings,
    seed: int,
) -> float:
    """Balanced validation loss of a model weighting the minority by ``w``, on real rows.

    The model is built under ``seed`` so that every weight starts from the same
    initial weights, then trained like a ``retrain`` candidate of size zero.
    """
    with seeded(seed):
        model = make_model(w)
        if hasattr(model, "configure_from_data"):
            model.configure_from_data(dm)
    return RetrainScorer(model, settings, seed).score(dm, {})
