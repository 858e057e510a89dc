"""BalancedCrossEntropy and classification_metrics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from vtss_lightning import TabularDataModule, VTSSCallback
from vtss_lightning.errors import VTSSError
from vtss_lightning.metrics import (
    BalancedCrossEntropy,
    balanced_cross_entropy,
    classification_metrics,
    logit_adjusted_balanced_log_loss,
    per_class_loss_sums,
)
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search.objective import (
    logit_adjusted_loss,
    minority_class,
    predict_logits,
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
    assert set(out) == {
        "balanced_log_loss",
        "balanced_accuracy",
        "accuracy",
        "macro_auroc",
        "macro_auprc",
    }
    assert out["balanced_accuracy"] == pytest.approx(1.0)
    assert out["macro_auroc"] == pytest.approx(1.0)
    assert out["macro_auprc"] == pytest.approx(1.0)


# ------------------------------------------------------------ the positive class


def _fraud_scores(seed: int = 3, n_fraud: int = 30, n_ok: int = 170):
    """String labels with ``fraud`` the minority; sorted, fraud is index 0."""
    rng = np.random.default_rng(seed)
    labels = np.array(["fraud"] * n_fraud + ["ok"] * n_ok)
    classes = sorted(set(labels))
    target = torch.as_tensor([classes.index(v) for v in labels])
    z = torch.as_tensor(rng.normal(size=len(labels)) + 1.2 * (labels == "ok"))  # logit of "ok"
    return labels, classes, target, z


def test_binary_ranking_metrics_score_the_minority_class_against_sklearn() -> None:
    labels, classes, target, z = _fraud_scores()
    fraud = classes.index("fraud")
    assert fraud == 0 and minority_class(torch.bincount(target).tolist()) == fraud
    p_fraud = torch.sigmoid(-z).numpy()  # single logit: p(index 1) = sigmoid(z)
    out = classification_metrics(z, target, 2, positive=fraud)
    assert out["auprc"] == pytest.approx(average_precision_score(labels == "fraud", p_fraud))
    assert out["auroc"] == pytest.approx(roc_auc_score(labels == "fraud", p_fraud))
    two = torch.stack([torch.zeros_like(z), z], dim=1)
    assert classification_metrics(two, target, 2, positive=fraud) == pytest.approx(out)
    # the old default (index 1, here the majority) scores a different, easier class
    legacy = classification_metrics(z, target, 2)
    assert legacy == pytest.approx(classification_metrics(z, target, 2, positive=1))
    assert legacy["auprc"] == pytest.approx(average_precision_score(labels == "ok", 1 - p_fraud))
    assert legacy["auprc"] > out["auprc"]


@pytest.mark.parametrize("positive", [2, -1, 0.0, True])
def test_positive_is_validated(positive) -> None:
    with pytest.raises(VTSSError, match="positive"):
        classification_metrics(torch.zeros(4), torch.tensor([0, 1, 0, 1]), 2, positive=positive)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [([10, 90], 0), ([90, 10], 1), ([50, 50], 1), ([5, 1, 1], 2), ([1, 4, 3], 0)],
)
def test_minority_class_ties_go_to_the_later_index(counts, expected) -> None:
    assert minority_class(counts) == expected


def test_multiclass_macro_auprc_matches_sklearn_one_vs_rest() -> None:
    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, 4, (120,), generator=g)
    logits = torch.randn(120, 4, generator=g) + 1.5 * F.one_hot(target, 4)
    prob = logits.double().softmax(dim=1).numpy()
    y = target.numpy()
    expected = np.mean([average_precision_score(y == k, prob[:, k]) for k in range(4)])
    out = classification_metrics(logits, target, 4)
    assert out["macro_auprc"] == pytest.approx(expected)
    assert out["macro_auroc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr"))


def test_report_names_the_minority_as_positive_class(tmp_path) -> None:
    rng = np.random.default_rng(0)

    def rows(n_fraud, n_ok):
        x = rng.normal(size=(n_fraud + n_ok, 3))
        x[:n_fraud] += 1.5
        return x, np.array(["fraud"] * n_fraud + ["ok"] * n_ok)

    (x, y), (x_test, y_test) = rows(20, 100), rows(15, 60)
    dm = TabularDataModule.from_arrays(x, y, x_test, y_test)
    pl.seed_everything(0)
    callback = VTSSCallback(ratios=[0, 1], progress=False, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[callback],
    )
    model = TabularClassifier()
    trainer.fit(model, datamodule=dm)
    metrics = callback.result.test_metrics
    assert dm.class_names == ["fraud", "ok"] and metrics["positive_class"] == "fraud"
    logits = predict_logits(model, dm.x_test).double()
    z = (
        logits.reshape(-1)
        if logits.ndim == 1 or logits.shape[1] == 1
        else logits[:, 1] - logits[:, 0]
    )
    p_fraud = torch.sigmoid(-z).numpy()
    assert metrics["auprc"] == pytest.approx(average_precision_score(y_test == "fraud", p_fraud))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y_test == "fraud", p_fraud))


# ------------------------------------------------------------ logit adjustment


def _numpy_logit_adjusted(logits: np.ndarray, target: np.ndarray, priors) -> float:
    z = logits - np.log(np.asarray(priors, dtype=float) / np.sum(priors))
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -log_p[np.arange(len(target)), target]
    return float(np.mean([ce[target == k].mean() for k in np.unique(target)]))


def test_logit_adjusted_loss_matches_numpy_multiclass() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(60, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (60,), generator=g)
    priors = [0.7, 0.2, 0.1]
    got = logit_adjusted_balanced_log_loss(logits, target, 3, priors)
    assert got.item() == pytest.approx(
        _numpy_logit_adjusted(logits.numpy(), target.numpy(), priors)
    )
    # counts give the same as shares: only the ratios matter
    counts = logit_adjusted_balanced_log_loss(logits, target, 3, torch.tensor([70, 20, 10]))
    assert counts.item() == pytest.approx(got.item())


def test_logit_adjusted_loss_binary_single_logit() -> None:
    g = torch.Generator().manual_seed(6)
    z = torch.randn(40, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (40,), generator=g)
    priors = [0.85, 0.15]
    two = torch.stack([torch.zeros_like(z), z], dim=1).numpy()
    expected = _numpy_logit_adjusted(two, target.numpy(), priors)
    assert logit_adjusted_balanced_log_loss(z, target, 2, priors).item() == pytest.approx(expected)
    assert logit_adjusted_balanced_log_loss(z[:, None], target, 2, priors).item() == pytest.approx(
        expected
    )


def test_logit_adjustment_with_uniform_priors_is_the_balanced_log_loss() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(30, 4, generator=g)
    target = torch.randint(0, 4, (30,), generator=g)
    plain = balanced_cross_entropy(logits, target, 4)
    adjusted = logit_adjusted_balanced_log_loss(logits, target, 4, [0.25] * 4)
    assert torch.allclose(adjusted, plain, atol=1e-6)
    z = logits[:, 0]
    binary = target % 2
    assert torch.allclose(
        logit_adjusted_balanced_log_loss(z, binary, 2, [0.5, 0.5]),
        balanced_cross_entropy(z, binary, 2),
        atol=1e-6,
    )


def test_logit_adjusted_loss_is_differentiable_and_validates_priors() -> None:
    preds, target = _hand_example()
    preds = preds.clone().requires_grad_(True)
    logit_adjusted_balanced_log_loss(preds, target, 2, [0.75, 0.25]).backward()
    assert preds.grad is not None and torch.isfinite(preds.grad).all()
    for bad in ([0.5, 0.5, 0.0], [1.0, 0.0], [1.0, float("nan")], [-0.5, 1.5]):
        with pytest.raises(VTSSError, match="priors"):
            logit_adjusted_balanced_log_loss(preds.detach(), target, 2, bad)


def test_logit_adjusted_loss_of_a_model() -> None:
    torch.manual_seed(8)
    model = nn.Linear(3, 3)
    x = torch.randn(50, 3)
    y = torch.randint(0, 3, (50,))
    priors = [0.6, 0.3, 0.1]
    with torch.no_grad():
        expected = _numpy_logit_adjusted(model(x).double().numpy(), y.numpy(), priors)
    assert logit_adjusted_loss(model, x, y, 3, priors) == pytest.approx(expected, rel=1e-5)
