"""TabularClassifier options: losses, intercept, class weights, random features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vtss_lightning import TabularDataModule, VTSSError
from vtss_lightning.models import TabularClassifier
from vtss_lightning.models.tabular import RandomFourierFeatures
from vtss_lightning.search.objective import balanced_loss
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings


def _data(seed: int = 0, n0: int = 300, n1: int = 60):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(0, 1, (n0, 3)), rng.normal(1, 1, (n1, 3))])
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    dm = TabularDataModule.from_arrays(x, y, scale=False, synthetic_ratio=0.0)
    dm.setup()
    return dm


def _fit(model: TabularClassifier, dm, epochs: int = 1) -> TabularClassifier:
    model.configure_from_data(dm)
    return RetrainScorer(model, TrainerSettings.from_kwargs({"max_epochs": epochs})).fit(
        model, dm, {}
    )


def test_logistic_lbfgs_matches_sklearn_mle():
    from sklearn.linear_model import LogisticRegression

    dm = _data()
    model = _fit(TabularClassifier(weight_decay=0.0), dm)  # the MLE, as sklearn C=inf
    x, y = dm.holdout.x_train.numpy(), dm.holdout.y_train.numpy()
    ref = LogisticRegression(C=1e8, max_iter=5000, tol=1e-10).fit(x, y)
    lin = model.net[-1]
    np.testing.assert_allclose(lin.weight.detach().numpy().ravel(), ref.coef_.ravel(), atol=2e-3)
    np.testing.assert_allclose(lin.bias.detach().numpy(), ref.intercept_, atol=2e-3)


def test_mse_without_intercept_is_least_squares_and_scored_by_balanced_squared_error():
    dm = _data(1)
    model = _fit(TabularClassifier(loss="mse", fit_intercept=False, weight_decay=0.0), dm)
    assert model.net[-1].bias is None
    x, y = dm.holdout.x_train.numpy().astype(np.float64), dm.holdout.y_train.numpy()
    beta, *_ = np.linalg.lstsq(x, y.astype(float), rcond=None)
    np.testing.assert_allclose(model.net[-1].weight.detach().numpy().ravel(), beta, atol=1e-4)
    xv, yv = dm.holdout.x_val, dm.holdout.y_val
    pred = xv.numpy().astype(np.float64) @ beta
    err = (pred - yv.numpy()) ** 2
    expected = np.mean([err[yv.numpy() == k].mean() for k in (0, 1)])
    assert balanced_loss(model, xv, yv, 2) == pytest.approx(expected, rel=1e-4)
    # argmax of the binary scores thresholds the regression output at 0.5
    scores = model(xv)
    assert torch.equal(scores.argmax(1), (scores[:, 1] > 0.5).long())


def test_class_weights_balanced_and_numeric():
    dm = _data()
    counts = dm.holdout.class_counts
    model = TabularClassifier(class_weight="balanced")
    model.configure_from_data(dm)
    n = sum(counts)
    expected = torch.tensor([n / (2 * counts[0]), n / (2 * counts[1])])
    torch.testing.assert_close(model.class_weights, expected)
    scores = torch.randn(5, 2)
    y = torch.tensor([0, 1, 1, 0, 1])
    per_row = model.per_sample_loss(scores, y)
    w = expected[y]
    assert model.loss(scores, y).item() == pytest.approx(((w * per_row).sum() / w.sum()).item())
    numeric = TabularClassifier(class_weight=4.0, n_features=3, num_classes=2)
    torch.testing.assert_close(numeric.class_weights, torch.tensor([1.0, 4.0]))


def test_numeric_class_weight_goes_to_the_minority_even_at_index_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(110, 2)).astype(np.float32)
    y = np.array(["rare"] * 10 + ["zcommon"] * 100)  # sorted labels: minority is index 0
    dm = TabularDataModule.from_arrays(x, y)
    dm.setup()
    assert dm.holdout.class_counts[0] < dm.holdout.class_counts[1]
    model = TabularClassifier(class_weight=4.0)
    model.configure_from_data(dm)
    torch.testing.assert_close(model.class_weights, torch.tensor([4.0, 1.0]))


def test_class_weighting_raises_minority_predictions():
    dm = _data(2)
    plain = _fit(TabularClassifier(), dm)
    weighted = _fit(TabularClassifier(class_weight="balanced"), dm)
    x = dm.holdout.x_val
    p_plain = torch.softmax(plain(x), 1)[:, 1].mean()
    p_weighted = torch.softmax(weighted(x), 1)[:, 1].mean()
    assert p_weighted > p_plain + 0.1


def test_random_fourier_features_are_fixed_and_seeded():
    torch.manual_seed(3)
    a = TabularClassifier(random_features=16, n_features=3, num_classes=2)
    torch.manual_seed(3)
    b = TabularClassifier(random_features=16, n_features=3, num_classes=2)
    rff = a.net[0]
    assert isinstance(rff, RandomFourierFeatures)
    torch.testing.assert_close(rff.weight, b.net[0].weight)
    assert all(p is not rff.weight for p in a.parameters())  # buffers, not parameters
    before = rff.weight.clone()
    dm = _data()
    _fit(a, dm)
    torch.testing.assert_close(a.net[0].weight, before)
    z = rff(torch.zeros(4, 3))
    assert z.shape == (4, 16) and float(z.abs().max()) <= np.sqrt(2 / 16) + 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": "hinge"},
        {"class_weight": "inverse"},
        {"class_weight": -1.0},
        {"random_features": -2},
        {"rff_lengthscale": 0.0},
        {"optimizer": "sgd"},
        {"hidden_dims": [0]},
    ],
)
def test_bad_options_raise_vtss_error(kwargs):
    with pytest.raises(VTSSError):
        TabularClassifier(**kwargs)


def test_numeric_class_weight_rejects_multiclass_and_balanced_needs_counts():
    with pytest.raises(VTSSError, match="binary"):
        TabularClassifier(class_weight=2.0, n_features=3, num_classes=3)
    with pytest.raises(VTSSError, match="class counts"):
        TabularClassifier(class_weight="balanced", n_features=3, num_classes=2)
