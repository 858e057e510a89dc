"""Which validation scheme a search uses when the user leaves it to the data (``folds="auto"``).

A 20% hold-out is precise when every class has many validation rows and cheap (one
fit per candidate). On small minorities it keeps a handful of rows per class and the
chosen size is mostly noise: on real KEEL tables the defaults with a hold-out chose
worse than plain full balancing, 5-fold selection better. So ``"auto"`` takes the
hold-out only when its smallest class has at least :data:`AUTO_MIN_VAL_ROWS`
validation rows, and otherwise stratified K-fold, repeated so that the smallest
class is validated about that many times in all (``benchmarks/results/real_data.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from vtss_lightning.search.config import SearchConfig

#: Fewest validation rows of the smallest class for ``"auto"`` to trust a hold-out.
AUTO_MIN_VAL_ROWS = 100
#: Folds and the most repeats ``"auto"`` uses when the hold-out is too small.
AUTO_FOLDS = 5
AUTO_MAX_REPEATS = 5
#: Selection rules that compare candidates fold by fold (they need K-fold).
RULES_NEEDING_FOLDS = ("one_se",)


@dataclass(frozen=True)
class ValidationPlan:
    """The scheme a search runs: ``folds=None`` is the hold-out; ``reason`` says why."""

    folds: int | None
    repeats: int
    reason: str

    @property
    def name(self) -> str:
        return "holdout" if self.folds is None else f"{self.repeats}x{self.folds}-fold"


def development_counts(dm) -> list[int]:
    """Rows per class index over all development rows (hold-out train + validation)."""
    val = torch.bincount(dm.holdout.y_val.cpu(), minlength=dm.num_classes).tolist()
    return [t + v for t, v in zip(dm.holdout.class_counts, val, strict=True)]


def plan_validation(config: SearchConfig, dm) -> ValidationPlan:
    """The configured scheme, or for ``folds="auto"`` the one the data call for."""
    if config.folds != "auto":
        repeats = 1 if config.folds is None else (config.repeats or 1)
        return ValidationPlan(config.folds, repeats, "as configured")
    if "halving" in config.strategy:
        return ValidationPlan(None, 1, "halving strategies train on the hold-out")
    val_counts = torch.bincount(dm.holdout.y_val.cpu(), minlength=dm.num_classes).tolist()
    dev_counts = development_counts(dm)
    smallest = min(val_counts)
    if smallest >= AUTO_MIN_VAL_ROWS and config.selection not in RULES_NEEDING_FOLDS:
        return ValidationPlan(
            None, 1, f"every class has >= {AUTO_MIN_VAL_ROWS} validation rows in the hold-out"
        )
    n_min = min(dev_counts)
    folds = min(AUTO_FOLDS, n_min)  # every fold needs a row of every class
    if folds < 2:
        return ValidationPlan(None, 1, f"the smallest class has {n_min} row: too few for folds")
    repeats = config.repeats or min(AUTO_MAX_REPEATS, max(1, math.ceil(AUTO_MIN_VAL_ROWS / n_min)))
    why = (
        f"the hold-out keeps only {smallest} validation rows of the smallest class "
        f"(< {AUTO_MIN_VAL_ROWS})"
        if smallest < AUTO_MIN_VAL_ROWS
        else f"selection={config.selection!r} compares candidates fold by fold"
    )
    return ValidationPlan(
        folds, repeats, f"{why}: {repeats}x{folds}-fold over all {n_min} of its rows"
    )


def resolve_validation(config: SearchConfig, dm) -> tuple[SearchConfig, ValidationPlan]:
    """``config`` with a concrete scheme (no ``"auto"``), and the plan behind it."""
    plan = plan_validation(config, dm)
    return replace(config, folds=plan.folds, repeats=plan.repeats), plan
