"""The search's curve and selection, sent to every logger of the user's trainer.

Each logger gets the numbers through Lightning's ``log_metrics`` (CSV, TensorBoard,
MLflow, Weights & Biases, ... all take those) and the curve figure through its own
API where it has one: TensorBoard's ``add_figure``, Weights & Biases' ``log_image``,
MLflow's ``log_figure``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from vtss_lightning.search.report import VTSSResult

CURVE_NAME = "vtss/curve"


def log_search(result: VTSSResult, loggers: Iterable[Any]) -> None:
    """One point per candidate (step = its position in the grid; one series per generator
    when several were compared), the selection, the figure."""
    loggers = list(loggers)
    if not loggers:
        return
    import matplotlib.pyplot as plt

    selected = result.selected
    summary = {
        "vtss/selected_ratio": float(result.selected_ratio or 0.0),
        "vtss/selected_synthetic_rows": float(selected.total_size),
        "vtss/selected_val_balanced_loss": float(selected.val_balanced_loss or 0.0),
    }
    try:
        for logger in loggers:
            steps: dict[str | None, int] = {}
            for cand in result.candidates:
                step = steps[cand.generator] = steps.get(cand.generator, -1) + 1
                if cand.val_balanced_loss is None:
                    continue
                prefix = "vtss/" if cand.generator is None else f"vtss/{_tag(cand.generator)}/"
                point = {
                    f"{prefix}val_balanced_loss": float(cand.val_balanced_loss),
                    f"{prefix}synthetic_rows": float(cand.total_size),
                }
                if cand.ratio is not None:
                    point[f"{prefix}ratio"] = float(cand.ratio)
                logger.log_metrics(point, step=step)
            logger.log_metrics(summary, step=0)
            log_figure(logger, CURVE_NAME, result.plot())
    finally:
        plt.close("all")


def _tag(label: str) -> str:
    """A generator's label as a metric-name part every logger accepts (MLflow's rules
    are the strictest): one curve per generator, ``vtss/vae_conditional_True_/...``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)


def log_figure(logger: Any, name: str, figure: Any) -> bool:
    """Send a matplotlib figure through the logger's own API; False when it has none."""
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_figure"):  # TensorBoard
        experiment.add_figure(name, figure, global_step=0, close=False)
        return True
    if callable(getattr(logger, "log_image", None)):  # Weights & Biases (and Neptune-likes)
        logger.log_image(key=name, images=[figure])
        return True
    run_id = getattr(logger, "run_id", None)
    if run_id is not None and hasattr(experiment, "log_figure"):  # MLflow
        experiment.log_figure(run_id, figure, f"{name.replace('/', '_')}.png")
        return True
    return False
