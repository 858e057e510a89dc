"""Scoring a trained model: balanced validation loss and test metrics."""

from __future__ import annotations

import torch
from torch import nn

from vtss_lightning._random import EVAL_CHUNK_ROWS
from vtss_lightning.metrics import BalancedCrossEntropy, BalancedMeanLoss, classification_metrics


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


def test_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Balanced log loss, balanced accuracy and (binary) AUPRC on held-out data.

    ``balanced_loss`` is the balanced mean of the model's own training loss (equal
    to ``balanced_log_loss`` for cross-entropy models).
    """
    scores = predict_logits(model, x)
    out = classification_metrics(scores, y.to(scores.device), num_classes)
    out["balanced_loss"] = _balanced(model, scores, y, num_classes)
    return out
