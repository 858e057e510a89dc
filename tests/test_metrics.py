"""BalancedCrossEntropy and classification_metrics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vtss_lightning.errors import VTSSError
from vtss_lightning.metrics import (
    BalancedCrossEntropy,
    balanced_cross_entropy,
    classification_metrics,
    per_class_loss_sums,
)

LN2 = math.log(2.0)


def _hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    # Logits are log-probabilities, so log_softmax returns them unchanged.
    # Class 0 rows: p(0) = 0.5, 0.5, 0.25 -> losses ln2, ln2, 2 ln2 -> mean (4/3) ln2.
    # Class 1 row:  p(1) = 0.5            -> loss ln2                -> mean ln2.
    # Balanced = ((4/3) ln2 + ln2) / 2 = (7/6) ln2 ~ 0.8087;
    # plain mean = 5 ln2 / 4 = 1.25 ln2 ~ 0.8664 (the majority dominates it).
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.25, 0.75], [0.5, 0.5]])
    return probs.log(), torch.tensor([0, 0, 0, 1])


def test_hand_computation_differs_from_plain_mean() -> None:
    preds, target = _hand_example()
    metric = BalancedCrossEntropy(num_classes=2)
    metric.update(preds, target)
    assert metric.compute().item() == pytest.approx(7 / 6 * LN2, rel=1e-6)
    assert balanced_cross_entropy(preds, target, 2).item() == pytest.approx(7 / 6 * LN2, rel=1e-6)
    plain = F.cross_entropy(preds, target).item()
    assert plain == pytest.approx(1.25 * LN2, rel=1e-6)
    assert torch.allclose(metric.per_class(), torch.tensor([4 / 3 * LN2, LN2]))
    sums, counts = per_class_loss_sums(preds, target, 2)
    assert torch.allclose(sums, torch.tensor([4 * LN2, LN2]))
    assert counts.tolist() == [3.0, 1.0]


def test_multiclass_matches_mean_of_per_class_means() -> None:
    g = torch.Generator().manual_seed(0)
    preds = torch.randn(50, 4, generator=g)
    target = torch.randint(0, 4, (50,), generator=g)
    losses = F.cross_entropy(preds, target, reduction="none")
    expected = torch.stack([losses[target == k].mean() for k in range(4)]).mean()
    metric = BalancedCrossEntropy(num_classes=4)
    metric.update(preds, target)
    assert torch.allclose(metric.compute(), expected, atol=1e-6)


def test_binary_single_logit_equals_two_column_form() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20, generator=g)
    target = torch.randint(0, 2, (20,), generator=g)
    two = torch.stack([torch.zeros_like(z), z], dim=1)
    ref = balanced_cross_entropy(two, target, 2)
    assert torch.allclose(balanced_cross_entropy(z, target, 2), ref, atol=1e-6)
    assert torch.allclose(balanced_cross_entropy(z[:, None], target, 2), ref, atol=1e-6)
    metric = BalancedCrossEntropy(num_classes=2)
    metric.update(z[:, None], target.float())  # float 0./1. targets are accepted too
    assert torch.allclose(metric.compute(), ref, atol=1e-6)


def test_batch_accumulation_equals_single_update() -> None:
    g = torch.Generator().manual_seed(2)
    preds = torch.randn(31, 3, generator=g)
    target = torch.randint(0, 3, (31,), generator=g)
    whole = BalancedCrossEntropy(num_classes=3)
    whole.update(preds, target)
    halves = BalancedCrossEntropy(num_classes=3)
    halves.update(preds[:10], target[:10])
    halves.update(preds[10:], target[10:])
    assert torch.allclose(whole.compute(), halves.compute(), atol=1e-6)
    halves.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(halves.compute().item())


def test_absent_class_is_ignored() -> None:
    preds, target = _hand_example()
    three = torch.cat([preds, torch.full((4, 1), -1e4)], dim=1)  # class 2 never occurs
    metric = BalancedCrossEntropy(num_classes=3)
    metric.update(three, target)
    assert metric.compute().item() == pytest.approx(7 / 6 * LN2, rel=1e-5)
    assert math.isnan(metric.per_class()[2].item())


def test_balanced_cross_entropy_is_differentiable() -> None:
    preds, target = _hand_example()
    preds = preds.clone().requires_grad_(True)
    balanced_cross_entropy(preds, target, 2).backward()
    assert preds.grad is not None and torch.isfinite(preds.grad).all()


@pytest.mark.parametrize(
    ("preds", "target", "num_classes", "match"),
    [
        (torch.zeros(3, 2), torch.tensor([0, 1, 2]), 2, "target values"),
        (torch.zeros(3, 2), torch.tensor([0, -1, 1]), 2, "target values"),
        (torch.zeros(3, 2), torch.tensor([0, 1]), 2, "number of rows"),
        (torch.zeros(3, 3), torch.tensor([0, 1, 1]), 2, "shape"),
        (torch.zeros(3), torch.tensor([0, 1, 1]), 3, "num_classes=2"),
        (torch.zeros(3, 2), torch.tensor([0.0, 0.5, 1.0]), 2, "fractional"),
    ],
)
def test_errors(preds, target, num_classes, match) -> None:
    with pytest.raises(VTSSError, match=match):
        balanced_cross_entropy(preds, target, num_classes)
    with pytest.raises(VTSSError, match=match):
        BalancedCrossEntropy(num_classes=num_classes).update(preds, target)


def test_num_classes_validated() -> None:
    with pytest.raises(VTSSError, match="num_classes"):
        BalancedCrossEntropy(num_classes=1)


def test_classification_metrics_binary_perfect() -> None:
    target = torch.tensor([0, 0, 0, 0, 1, 1])
    logits = torch.where(target[:, None] == torch.arange(2), 5.0, -5.0)
    out = classification_metrics(logits, target, 2)
    assert set(out) == {"balanced_log_loss", "balanced_accuracy", "accuracy", "auprc", "auroc"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["balanced_accuracy"] == pytest.approx(1.0)
    assert out["accuracy"] == pytest.approx(1.0)
    assert out["auprc"] == pytest.approx(1.0)
    assert out["auroc"] == pytest.approx(1.0)
    assert out["balanced_log_loss"] == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-4)
    # single-logit form gives the same numbers
    single = classification_metrics(logits[:, 1] - logits[:, 0], target, 2)
    assert single == pytest.approx(out)


def test_classification_metrics_balanced_vs_plain_accuracy() -> None:
    # Always predicting class 0: accuracy 4/5, balanced accuracy (1 + 0)/2.
    target = torch.tensor([0, 0, 0, 0, 1])
    logits = torch.tensor([[1.0, 0.0]]).repeat(5, 1)
    out = classification_metrics(logits, target, 2)
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["balanced_accuracy"] == pytest.approx(0.5)


def test_classification_metrics_multiclass() -> None:
    target = torch.tensor([0, 0, 1, 2, 2, 2])
    logits = 4.0 * F.one_hot(target, 3).float()
    out = classification_metrics(logits, target, 3)
    assert set(out) == {"balanced_log_loss", "balanced_accuracy", "accuracy", "macro_auroc"}
    assert out["balanced_accuracy"] == pytest.approx(1.0)
    assert out["macro_auroc"] == pytest.approx(1.0)
