"""Scoring a trained model: balanced validation loss and test metrics."""

from __future__ import annotations

import torch
from torch import nn

from vtss_lightning.metrics import BalancedCrossEntropy, classification_metrics


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
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
    """Mean over classes of the per-class mean cross-entropy (the VTSS objective)."""
    logits = predict_logits(model, x)
    metric = BalancedCrossEntropy(num_classes).to(logits.device)
    metric.update(logits, y.to(logits.device))
    return float(metric.compute())


def test_metrics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Balanced log loss, balanced accuracy and (binary) AUPRC on held-out data."""
    logits = predict_logits(model, x)
    return classification_metrics(logits, y.to(logits.device), num_classes)
