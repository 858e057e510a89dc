"""Built-in datasets: shapes, class balance, determinism and the simulated laws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vtss_lightning.data.builtin import (
    BUILTIN_DATASETS,
    load_builtin,
    simulate_paper_linear,
    simulate_paper_nonlinear,
)
from vtss_lightning.errors import VTSSError

PAPER = ("paper_linear", "paper_nonlinear")


@pytest.mark.parametrize("name", PAPER)
def test_paper_shapes_and_counts(name: str) -> None:
    ds = load_builtin(name)
    assert ds.target == "y"
    cols = ["x1", "x2", "x3", "x4", "x5", "y"]
    assert list(ds.train.columns) == cols and list(ds.test.columns) == cols
    assert ds.train["y"].value_counts().to_dict() == {0: 4000, 1: 200}
    assert ds.test["y"].value_counts().to_dict() == {0: 10_000, 1: 10_000}
    assert ds.train["y"].dtype == np.int64
    assert ds.train["x1"].dtype == np.float64
    assert ds.description


def test_breast_cancer() -> None:
    ds = load_builtin("breast_cancer")
    assert ds.target == "diagnosis"
    assert ds.train.shape[1] == 31 and "mean radius" in ds.train.columns
    total = pd.concat([ds.train, ds.test])["diagnosis"].value_counts()
    assert total.to_dict() == {"benign": 357, "malignant": 36}
    for part in (ds.train, ds.test):
        counts = part["diagnosis"].value_counts()
        assert set(counts.index) == {"benign", "malignant"}
        assert 7 <= counts["benign"] / counts["malignant"] <= 13
    assert len(ds.test) == pytest.approx(0.25 * 393, abs=1)


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_determinism(name: str) -> None:
    a, b, c = load_builtin(name, seed=3), load_builtin(name, seed=3), load_builtin(name, seed=4)
    pd.testing.assert_frame_equal(a.train, b.train)
    pd.testing.assert_frame_equal(a.test, b.test)
    assert not a.train.equals(c.train)
    assert not a.test.equals(c.test)


def test_paper_linear_minority_mean() -> None:
    X, y = simulate_paper_linear(100, 200_000, np.random.default_rng(0))
    assert X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_allclose(X[y == 1].mean(axis=0), [2, 0, 0, 0, 0], atol=0.02)
    # The two components sit at +-1.75 along e2: variance there is 1 + 1.75^2.
    assert X[y == 1, 1].var() == pytest.approx(1 + 1.75**2, rel=0.02)
    np.testing.assert_allclose(X[y == 0].mean(axis=0), 0, atol=0.3)


def test_paper_nonlinear_ring_and_majority() -> None:
    X, y = simulate_paper_nonlinear(50_000, 50_000, np.random.default_rng(0))
    ring = X[y == 1]
    radius = np.hypot(ring[:, 0] - 4.8, ring[:, 1])
    assert radius.mean() == pytest.approx(2.2, abs=0.01)
    assert radius.std() == pytest.approx(np.hypot(0.12, 0.08), abs=0.01)
    assert ring[:, 2:].std() == pytest.approx(0.08, abs=0.005)
    maj = X[y == 0]
    assert maj[:, 0].mean() == pytest.approx(0.3 * 1.5, abs=0.03)
    assert np.corrcoef(maj[:, 1], maj[:, 2])[0, 1] == pytest.approx(0, abs=0.03)
    # Corr(x1, x2) is 0.5 before the shift of x1; the shift inflates Var(x1) only.
    cov12 = np.cov(maj[:, 0], maj[:, 1])[0, 1]
    assert cov12 == pytest.approx(0.5, abs=0.03)


def test_changing_test_size_keeps_train() -> None:
    # Train and test use separate child streams of the seed.
    ds = load_builtin("paper_linear", seed=7)
    train_ss, _ = np.random.SeedSequence(7).spawn(2)
    X, y = simulate_paper_linear(4000, 200, np.random.default_rng(train_ss))
    np.testing.assert_array_equal(ds.train[["x1", "x2", "x3", "x4", "x5"]].to_numpy(), X)
    np.testing.assert_array_equal(ds.train["y"].to_numpy(), y)


def test_unknown_name() -> None:
    with pytest.raises(VTSSError, match="breast_cancer, paper_linear, paper_nonlinear") as err:
        load_builtin("mnist")
    assert "\n" not in str(err.value)


def test_digits_ovr() -> None:
    ds = load_builtin("digits_ovr")
    assert ds.target == "digit" and ds.train.shape[1] == 65
    total = pd.concat([ds.train, ds.test])["digit"].value_counts().to_dict()
    assert total == {"other": 1623, "eight": 162}
    for part in (ds.train, ds.test):
        counts = part["digit"].value_counts()
        assert 9 <= counts["other"] / counts["eight"] <= 11
    assert len(ds.test) == pytest.approx(0.25 * 1785, abs=1)


def test_wine_ovr() -> None:
    ds = load_builtin("wine_ovr")
    assert ds.target == "cultivar" and ds.train.shape[1] == 14
    total = pd.concat([ds.train, ds.test])["cultivar"].value_counts().to_dict()
    assert total == {"other": 130, "cultivar_3": 48}
    for part in (ds.train, ds.test):
        counts = part["cultivar"].value_counts()
        assert 2 <= counts["other"] / counts["cultivar_3"] <= 3.5
    assert len(ds.test) == pytest.approx(0.25 * 178, abs=1)
