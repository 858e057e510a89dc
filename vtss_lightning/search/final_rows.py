"""Which rows the final model trains on once the size is chosen (``final_rows``).

After K-fold selection every development row has been used for validation and no
hold-out is needed any more, so the paper refits the final model on all of them at
the chosen ratio: on small tables that is 25% more rows (and more minority rows for
the generator) than the hold-out's training part. But a Lightning user's callbacks
that *monitor* a metric (``EarlyStopping``, ``ModelCheckpoint(monitor=...)``, a
``ReduceLROnPlateau`` scheduler) need validation rows the model does not train on.
``"auto"`` therefore refits on all rows after K-fold unless something monitors,
and keeps the hold-out's training rows otherwise (and after a hold-out search,
whose candidates trained on those rows); ``"all"`` and ``"train"`` force either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vtss_lightning._random import round_half_up
from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.report import VTSSResult
from vtss_lightning.search.validation import ValidationPlan, development_counts

ALL, TRAIN = "all", "train"


@dataclass(frozen=True)
class FinalRows:
    """``rows`` is ``"all"`` (every development row) or ``"train"``; ``reason`` says why."""

    rows: str
    reason: str


def validation_monitors(trainer) -> list[str]:
    """What in ``trainer`` watches a logged metric: callbacks and LR schedulers.

    Any monitored metric counts (a name alone does not say whether validation logs it).
    """
    found = callback_monitors(trainer.callbacks)
    for config in getattr(trainer, "lr_scheduler_configs", None) or []:
        if getattr(config, "monitor", None):
            found.append(f"{type(config.scheduler).__name__}(monitor={config.monitor!r})")
    return found


def callback_monitors(callbacks: Sequence[Any]) -> list[str]:
    """The callbacks among ``callbacks`` that watch a logged metric (EarlyStopping, ...)."""
    return [
        f"{type(cb).__name__}(monitor={cb.monitor!r})"
        for cb in callbacks
        if getattr(cb, "monitor", None) and not getattr(cb, "runs_vtss_search", False)
    ]


def plan_final_rows(
    config: SearchConfig, plan: ValidationPlan, monitors: Sequence[str] = (), n_splits: int = 1
) -> FinalRows:
    """The rows of the final fit for ``config.final_rows`` under the scheme that ran
    (``n_splits``: how many splits the search scored, 0 when there was nothing to search)."""
    if config.final_rows != "auto":
        return FinalRows(config.final_rows, "as configured")
    if n_splits == 0:
        return FinalRows(TRAIN, "no search ran (the classes are balanced)")
    if plan.folds is None:
        return FinalRows(TRAIN, "the hold-out chose the size on these rows' candidates")
    if monitors:
        return FinalRows(
            TRAIN,
            f"{', '.join(monitors)} needs validation rows the model does not train on; "
            "final_rows='all' refits on every development row instead",
        )
    return FinalRows(
        ALL,
        f"{plan.name} selection validated every development row, so the final model "
        "trains on all of them at the chosen ratio (as the paper refits)",
    )


def scaled_sizes(
    ratio: float | None,
    selected: Mapping[int, int],
    holdout_gaps: Mapping[int, int],
    gaps: Mapping[int, int],
) -> dict[int, int]:
    """The selected candidate's sizes on rows whose gaps are ``gaps``.

    A ratio fills the same share of each class's new gap; absolute sizes keep their
    share of the hold-out's gap, as candidates are rescaled on every fold.
    """
    out = {}
    for k, gap in gaps.items():
        if gap <= 0:
            continue
        if ratio is not None:
            share = ratio
        else:
            share = selected.get(k, 0) / holdout_gaps[k] if holdout_gaps.get(k, 0) > 0 else 0.0
        out[k] = round_half_up(share * gap)
    return out


def describe_final_rows(result: VTSSResult, dm, final: FinalRows) -> None:
    """Record in ``result`` which rows the final fit uses, and at which sizes."""
    result.final_rows = final.rows
    if final.rows == ALL:
        counts = development_counts(dm)
        gaps = {k: max(counts) - n for k, n in enumerate(counts)}
        sizes = scaled_sizes(
            result.selected_ratio, result.selected_index_sizes, dm.holdout.gaps, gaps
        )
        n_rows = sum(counts)
    else:
        sizes, n_rows = dict(result.selected_index_sizes), len(dm.holdout.y_train)
    result.final_index_sizes = sizes
    result.diagnostics["final_rows"] = {
        "rows": final.rows,
        "n_rows": n_rows,
        "sizes": {dm.class_names[k]: m for k, m in sorted(sizes.items())},
        "reason": final.reason,
    }
