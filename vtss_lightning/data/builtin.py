"""Built-in datasets that need no download.

They give the examples, configs and tests something real to run on offline, and the
two ``paper_*`` simulations reproduce the end-to-end experiments 1 and 2 of the VTSS
paper (Ma & Zhang, arXiv 2601.16120), so the published curves can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vtss_lightning.errors import VTSSError

__all__ = [
    "BUILTIN_DATASETS",
    "BuiltinDataset",
    "load_builtin",
    "simulate_paper_linear",
    "simulate_paper_nonlinear",
]

BUILTIN_DATASETS: tuple[str, ...] = (
    "breast_cancer",
    "paper_linear",
    "paper_nonlinear",
    "digits_ovr",
    "wine_ovr",
)

_PAPER_D = 5
_PAPER_N0 = 4000
_PAPER_N1 = 200
_PAPER_TEST_PER_CLASS = 10_000
_BREAST_CANCER_MINORITY = 36
_DIGITS_MINORITY_DIGIT = 8
_DIGITS_RATIO = 10
_WINE_MINORITY_CULTIVAR = 2  # scikit-learn class_2, the smallest (48 of 178 rows)


@dataclass(frozen=True)
class BuiltinDataset:
    """A ready-to-use dataset: development rows, optional test rows, target name.

    Attributes
    ----------
    train
        Feature columns plus the target column. This is the development data; the
        DataModule makes its own stratified train/val split from it.
    test
        Held-out rows with the same columns, or ``None``.
    target
        Name of the target column.
    description
        One line saying what the data is, for logs and reports.
    """

    train: pd.DataFrame
    test: pd.DataFrame | None
    target: str
    description: str


def simulate_paper_linear(
    n0: int, n1: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the paper's linear experiment (d = 5).

    Majority ~ N(0, I5); minority = 50/50 mixture of N(2·e1 + 1.75·e2, I5) and
    N(2·e1 − 1.75·e2, I5). The component of each minority row is drawn at random,
    so the sample follows the mixture law exactly (not a fixed half/half split).

    Parameters
    ----------
    n0, n1
        Majority (label 0) and minority (label 1) row counts.
    rng
        Source of all randomness, so callers control reproducibility.

    Returns
    -------
    X : ndarray of float64, shape (n0 + n1, 5)
    y : ndarray of int64, shape (n0 + n1,)
        Majority rows first, then minority rows.
    """
    _check_counts(n0, n1)
    x0 = rng.standard_normal((n0, _PAPER_D))
    sign = np.where(rng.random(n1) < 0.5, 1.0, -1.0)
    x1 = rng.standard_normal((n1, _PAPER_D))
    x1[:, 0] += 2.0
    x1[:, 1] += 1.75 * sign
    return _stack(x0, x1)


def simulate_paper_nonlinear(
    n0: int, n1: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the paper's non-linear experiment (d = 5): a shifted blob versus a ring.

    Majority: Gaussian with unit variances, correlation 0.5 between coordinates 1
    and 2 (others independent); each row is shifted by +1.5 along e1 with
    probability 0.3. Minority: a noisy ring in coordinates 1-2 centred at (4.8, 0),
    angle ~ U(0, 2π), radius ~ 2.2 + N(0, 0.12²), plus N(0, 0.08²) noise on every
    coordinate. No linear boundary separates the classes well, which is the point.

    Parameters
    ----------
    n0, n1
        Majority (label 0) and minority (label 1) row counts.
    rng
        Source of all randomness.

    Returns
    -------
    X : ndarray of float64, shape (n0 + n1, 5)
    y : ndarray of int64, shape (n0 + n1,)
        Majority rows first, then minority rows.
    """
    _check_counts(n0, n1)
    cov = np.eye(_PAPER_D)
    cov[0, 1] = cov[1, 0] = 0.5
    x0 = rng.multivariate_normal(np.zeros(_PAPER_D), cov, size=n0, method="cholesky")
    x0[:, 0] += 1.5 * (rng.random(n0) < 0.3)

    angle = rng.uniform(0.0, 2.0 * np.pi, size=n1)
    radius = 2.2 + 0.12 * rng.standard_normal(n1)
    x1 = 0.08 * rng.standard_normal((n1, _PAPER_D))
    x1[:, 0] += 4.8 + radius * np.cos(angle)
    x1[:, 1] += radius * np.sin(angle)
    return _stack(x0, x1)


def load_builtin(name: str, seed: int = 0) -> BuiltinDataset:
    """Load a built-in dataset by name.

    Parameters
    ----------
    name
        One of :data:`BUILTIN_DATASETS`.
    seed
        Seeds every random draw (simulation, subsampling, test split); the same seed
        always gives the same frames.

    Returns
    -------
    BuiltinDataset

    Raises
    ------
    VTSSError
        If ``name`` is not a built-in dataset.
    """
    if name == "breast_cancer":
        return _breast_cancer(seed)
    if name == "digits_ovr":
        return _digits_ovr(seed)
    if name == "wine_ovr":
        return _wine_ovr(seed)
    if name == "paper_linear":
        return _paper(
            simulate_paper_linear,
            seed,
            "Paper experiment 1: d=5, N(0,I) majority (4000) vs two-component Gaussian "
            "minority (200); balanced test set 10000 per class.",
        )
    if name == "paper_nonlinear":
        return _paper(
            simulate_paper_nonlinear,
            seed,
            "Paper experiment 2: d=5, correlated shifted-Gaussian majority (4000) vs "
            "noisy ring minority (200); balanced test set 10000 per class.",
        )
    raise VTSSError(
        f"Unknown built-in dataset {name!r}; choose one of: {', '.join(BUILTIN_DATASETS)}."
    )


def _check_counts(n0: int, n1: int) -> None:
    if n0 < 0 or n1 < 0:
        raise VTSSError(f"Class sizes must be non-negative, got n0={n0}, n1={n1}.")


def _stack(x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.concatenate([x0, x1], axis=0).astype(np.float64, copy=False)
    y = np.concatenate([np.zeros(len(x0), np.int64), np.ones(len(x1), np.int64)])
    return X, y


def _frame(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(X, columns=[f"x{j + 1}" for j in range(X.shape[1])])
    df["y"] = y
    return df


def _paper(simulate, seed: int, description: str) -> BuiltinDataset:
    # Separate child streams: changing the test size never changes the train draw.
    train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
    train = _frame(*simulate(_PAPER_N0, _PAPER_N1, np.random.default_rng(train_ss)))
    test = _frame(
        *simulate(_PAPER_TEST_PER_CLASS, _PAPER_TEST_PER_CLASS, np.random.default_rng(test_ss))
    )
    return BuiltinDataset(train=train, test=test, target="y", description=description)


def _breast_cancer(seed: int) -> BuiltinDataset:
    # Imported lazily: only this dataset needs scikit-learn's bundled data.
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    X = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
    # sklearn encodes 0 = malignant, 1 = benign; string labels exercise label handling.
    labels = np.where(bunch.target == 1, "benign", "malignant")
    X["diagnosis"] = labels

    rng = np.random.default_rng(seed)
    benign = np.flatnonzero(labels == "benign")
    malignant = np.sort(
        rng.choice(np.flatnonzero(labels == "malignant"), _BREAST_CANCER_MINORITY, replace=False)
    )
    df = X.iloc[np.sort(np.concatenate([benign, malignant]))].reset_index(drop=True)

    train, test = train_test_split(df, test_size=0.25, stratify=df["diagnosis"], random_state=seed)
    return BuiltinDataset(
        train=train.reset_index(drop=True),
        test=test.reset_index(drop=True),
        target="diagnosis",
        description=(
            "Wisconsin breast cancer (scikit-learn bundled): 357 benign vs 36 malignant "
            "(subsampled to ~1:10), stratified 25% test split."
        ),
    )


def _stratified_test(df: pd.DataFrame, target: str, seed: int, description: str) -> BuiltinDataset:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(df, test_size=0.25, stratify=df[target], random_state=seed)
    return BuiltinDataset(
        train=train.reset_index(drop=True),
        test=test.reset_index(drop=True),
        target=target,
        description=description,
    )


def _digits_ovr(seed: int) -> BuiltinDataset:
    # One digit against the other nine, the digit subsampled (seeded) to 1:10.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = pd.DataFrame(bunch.data, columns=[f"pixel_{i}" for i in range(bunch.data.shape[1])])
    is_min = bunch.target == _DIGITS_MINORITY_DIGIT
    X["digit"] = np.where(is_min, "eight", "other")
    rest = np.flatnonzero(~is_min)
    n_min = len(rest) // _DIGITS_RATIO
    rng = np.random.default_rng(seed)
    minority = np.sort(rng.choice(np.flatnonzero(is_min), n_min, replace=False))
    df = X.iloc[np.sort(np.concatenate([rest, minority]))].reset_index(drop=True)
    return _stratified_test(
        df,
        "digit",
        seed,
        f"scikit-learn digits, 8x8 pixels: digit 8 ({n_min}, subsampled) vs the other nine "
        f"({len(rest)}), ~1:10; stratified 25% test split.",
    )


def _wine_ovr(seed: int) -> BuiltinDataset:
    # One cultivar against the other two; natural imbalance (48 vs 130), no subsampling.
    from sklearn.datasets import load_wine

    bunch = load_wine()
    X = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
    is_min = bunch.target == _WINE_MINORITY_CULTIVAR
    X["cultivar"] = np.where(is_min, "cultivar_3", "other")
    return _stratified_test(
        X,
        "cultivar",
        seed,
        f"scikit-learn wine: cultivar 3 ({int(is_min.sum())}) vs the other two "
        f"({int((~is_min).sum())}), ~1:2.7; stratified 25% test split.",
    )
