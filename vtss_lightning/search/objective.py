"""Scoring a trained model: balanced validation loss and test metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vtss_lightning._random import EVAL_CHUNK_ROWS
from vtss_lightning.errors import VTSSError
from vtss_lightning.metrics import (
    BalancedCrossEntropy,
    BalancedMeanLoss,
    classification_metrics,
    logit_adjusted_balanced_log_loss,
)


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_CHUNK_ROWS
) -> torch.Tensor:
    """Logits in eval mode, batched, on the model's device; restores the train flag."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else x.device
        outs = [
            model(x[i : i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def balanced_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Mean over classes of the per-class mean loss (the VTSS objective).

    The loss is the model's own ``per_sample_loss(scores, y)`` when it defines one
    (e.g. squared error), otherwise cross-entropy on the logits.
    """
    return _balanced(model, predict_logits(model, x), y, num_classes)


def _balanced(model: nn.Module, scores: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    y = y.to(scores.device)
    per_row = getattr(model, "per_sample_loss", None)
    # sync_on_compute=False: under DDP one rank scores candidates alone; no collective
    if per_row is None:
        metric = BalancedCrossEntropy(num_classes, sync_on_compute=False).to(scores.device)
        metric.update(scores, y)
    else:
        metric = BalancedMeanLoss(num_classes, sync_on_compute=False).to(scores.device)
        with torch.no_grad():
            metric.update(per_row(scores, y), y)
    return float(metric.compute())


def logit_adjusted_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    priors: torch.Tensor | Sequence[float],
) -> float:
    """Balanced log loss of the model's logits after post-hoc logit adjustment.

    ``priors`` are the per-class training shares (or counts); the logits lose
    ``log priors`` before the balanced log loss is taken
    (:func:`vtss_lightning.metrics.logit_adjusted_balanced_log_loss`). Cross-entropy
    on logits only: a model's own ``per_sample_loss`` is not used here.
    """
    scores = predict_logits(model, x)
    loss = logit_adjusted_balanced_log_loss(scores, y.to(scores.device), num_classes, priors)
    return float(loss)


def minority_class(class_counts: Sequence[int]) -> int:
    """Index of the class with the fewest rows in ``class_counts`` (training counts).

    Ties go to the later index, so an exactly balanced binary task keeps the usual
    positive class, index 1.
    """
    if len(class_counts) == 0:
        raise VTSSError("class_counts is empty: no classes to choose a minority from.")
    return min(range(len(class_counts)), key=lambda k: (class_counts[k], -k))


def test_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    positive: int | None = None,
) -> dict[str, float]:
    """Balanced log loss, balanced accuracy and ranking metrics on held-out data.

    ``positive`` is the class index binary AUPRC/AUROC treat as positive: pass the
    minority class by *training* counts (:func:`minority_class`). Left ``None``, it
    falls back to the minority class of ``y`` itself (never blindly index 1, which is
    the majority whenever the minority label sorts first). ``balanced_loss`` is the
    balanced mean of the model's own training loss (equal to ``balanced_log_loss``
    for cross-entropy models).
    """
    if positive is None:
        positive = minority_class(torch.bincount(y.long().cpu(), minlength=num_classes).tolist())
    scores = predict_logits(model, x)
    out = classification_metrics(scores, y.to(scores.device), num_classes, positive=positive)
    out["balanced_loss"] = _balanced(model, scores, y, num_classes)
    return out
