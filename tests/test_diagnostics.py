"""TG-VTSS diagnostics: symmetry test, generator-quality score, grid (CPU, fast)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import mean_shift_dm as shared_mean_shift_dm
from helpers import paper_linear_dm
from scipy.stats import chi2
from torch import nn

from vtss_lightning import TabularDataModule, VTSSError
from vtss_lightning.data.builtin import simulate_paper_linear
from vtss_lightning.generators import JitterGenerator, SMOTEGenerator
from vtss_lightning.generators._common import cpu_generator
from vtss_lightning.generators.base import SyntheticGenerator
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings, clone_module
from vtss_lightning.search.tg import (
    ASYMMETRIC,
    BIASED,
    LOCAL_MULTIPLIERS,
    REALISTIC,
    SYMMETRIC,
    WIDE_RATIOS,
    TGDiagnostics,
    fit_balanced_logistic,
    head_features,
    tg_candidate_ratios,
    tg_diagnostics,
)

# --------------------------------------------------------------------------- helpers


class ShiftGenerator(SyntheticGenerator):
    """Bootstrap of the class rows, moved by ``shift`` along the first column."""

    name = "shift"

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def _fit(self, x, schema, seed):
        self._x = x

    def _sample(self, n, seed):
        idx = torch.randint(len(self._x), (n,), generator=cpu_generator(seed))
        out = self._x[idx.to(self._x.device)].clone()
        out[:, 0] += self.shift
        return out


class FrameBootstrap(SyntheticGenerator):
    """A raw-table generator: resamples rows of the class's DataFrame."""

    input_kind = "frame"
    name = "frame-bootstrap"

    def _fit(self, x, schema, seed):
        assert isinstance(x, pd.DataFrame)
        self._frame = x.reset_index(drop=True)

    def _sample(self, n, seed):
        idx = torch.randint(len(self._frame), (n,), generator=cpu_generator(seed))
        return self._frame.iloc[idx.numpy()].reset_index(drop=True)


def linear_dm(generator=None, n0=4000, n1=200, seed=0) -> TabularDataModule:
    return paper_linear_dm(n0, n1, seed, generator)


def mean_shift_dm(seed=0, n0=2000, n1=100, d=5) -> TabularDataModule:
    return shared_mean_shift_dm(n0, n1, d, seed)


def logreg(dm, **kwargs) -> TabularClassifier:
    """Logistic regression sized for ``dm`` (untrained: the head is refitted anyway)."""
    model = TabularClassifier(**kwargs)
    model.build(dm.n_features, 2)
    return model


def trained(dm, **kwargs) -> TabularClassifier:
    """A pilot trained on the real training rows, as the search will provide it."""
    model = logreg(dm, **kwargs)
    scorer = RetrainScorer(model, TrainerSettings.from_kwargs({"max_epochs": 1}))
    return scorer.fit(clone_module(model), dm, {})


@pytest.fixture(scope="module")
def smote_dm():
    return linear_dm(SMOTEGenerator())


@pytest.fixture(scope="module")
def smote_diag(smote_dm):
    return tg_diagnostics(trained(smote_dm), smote_dm)


# --------------------------------------------------------------- local symmetry


def test_symmetric_mean_shift_is_local_symmetry():
    dm = mean_shift_dm(seed=0)
    diag = tg_diagnostics(trained(dm, fit_intercept=False), dm, test="chi2", join_weak=False)
    assert diag.regime == SYMMETRIC
    assert diag.t_sym <= diag.cutoff
    assert diag.df == 5 and diag.cutoff == pytest.approx(chi2.ppf(0.95, 5))
    assert diag.candidate_ratios == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert diag.generator_quality is None and diag.gqs is None and diag.rho is None
    assert diag.theory_target is None
    assert diag.gap == 1600 - 80
    assert "local symmetry" in diag.summary()


def test_symmetry_test_keeps_its_level_and_rejects_an_intercept():
    # With enough minority rows the test holds its level in the symmetric design ...
    verdicts = []
    for seed in range(10):
        dm = mean_shift_dm(seed=seed, n0=3000, n1=750)
        verdicts.append(tg_diagnostics(logreg(dm, fit_intercept=False), dm).regime)
    assert verdicts.count(SYMMETRIC) >= 8
    # ... while with an intercept the imbalance always biases it (g_phi's intercept
    # component is 2 E_P0[p] > 0), and the test sees it.
    dm = mean_shift_dm(seed=0)
    diag = tg_diagnostics(logreg(dm), dm)
    assert diag.regime == ASYMMETRIC and diag.df == 6


# ---------------------------------------------------------- local asymmetry, GQS


def test_paper_linear_with_smote_is_asymmetric_with_finite_gqs(smote_dm, smote_diag):
    diag = smote_diag
    assert diag.regime == ASYMMETRIC
    assert diag.t_sym > diag.chi2_cutoff == pytest.approx(chi2.ppf(0.95, 6))
    assert diag.statistic > diag.cutoff and diag.test == "calibrated"
    assert diag.df == 6 and diag.gap == smote_dm.class_gaps()[1] == 3040
    assert math.isfinite(diag.gqs) and diag.gqs > 0
    assert -1 <= diag.cosine <= 1 and abs(diag.rho) < 0.5
    assert diag.theory_target == pytest.approx(diag.gap / (1 - 2 * diag.rho))
    assert diag.generator_quality == (REALISTIC if diag.gqs <= diag.tau else BIASED)
    share = diag.theory_target / diag.gap
    assert diag.candidate_ratios == tg_candidate_ratios(
        ASYMMETRIC,
        diag.generator_quality,
        share,
        weak_quality=any("GQS" in r for r in diag.weak_evidence),
    )
    text = diag.summary()
    assert "local asymmetry" in text and "GQS" in text and 2 <= len(text.splitlines()) <= 3


def test_biased_generator_scores_worse_than_smote(smote_dm, smote_diag):
    dm = linear_dm(ShiftGenerator(1.0))
    diag = tg_diagnostics(logreg(dm), dm)
    assert diag.regime == ASYMMETRIC
    assert diag.gqs > 5 * smote_diag.gqs
    assert diag.generator_quality == BIASED and diag.gqs > diag.tau
    assert diag.candidate_ratios == list(WIDE_RATIOS)
    assert len(diag.candidate_ratios) == 41 and diag.candidate_ratios[-1] == 2.0
    # A mismatch along the class shift (here: beyond the minority) has rho > 0 and
    # asks for more than full balance; one towards the majority asks for less.
    assert diag.rho > 0 and diag.theory_target > diag.gap
    toward = linear_dm(ShiftGenerator(-0.3))
    diag_toward = tg_diagnostics(logreg(toward), toward)
    assert diag_toward.rho < 0 and diag_toward.theory_target < toward.class_gaps()[1]


def test_grid_rules():
    assert tg_candidate_ratios(SYMMETRIC, None) == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert tg_candidate_ratios(ASYMMETRIC, BIASED, 1.3) == list(WIDE_RATIOS)
    around_balance = tg_candidate_ratios(ASYMMETRIC, REALISTIC, None)
    assert around_balance == [0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2]
    assert tg_candidate_ratios(ASYMMETRIC, REALISTIC, math.inf) == around_balance
    both = tg_candidate_ratios(ASYMMETRIC, REALISTIC, 1.5)
    assert both == sorted(set(around_balance) | {round(1.5 * m, 4) for m in LOCAL_MULTIPLIERS})
    assert 0.0 not in both and both == sorted(both)
    assert tg_candidate_ratios(ASYMMETRIC, REALISTIC, 1.0) == around_balance


# ------------------------------------------------------------- the Wald statistic


def test_wald_statistic_matches_numpy():
    dm = linear_dm(n0=300, n1=60, seed=3)
    pilot = logreg(dm)
    diag = tg_diagnostics(pilot, dm)

    xt = head_features(pilot, dm.active.x_train).numpy()
    minority = (dm.active.y_train == 1).numpy()
    theta = fit_balanced_logistic(torch.as_tensor(xt), torch.as_tensor(minority)).numpy()
    prob = 1 / (1 + np.exp(-xt @ theta))
    y = minority.astype(float)
    scores = (prob - y)[:, None] * xt

    def moments(mask):
        s, x, p = scores[mask], xt[mask], prob[mask]
        return s.mean(0), np.cov(s.T), (x * (p * (1 - p))[:, None]).T @ x / len(x), len(s)

    g0, sig0, h0, n0 = moments(~minority)
    g1, sig1, h1, n1 = moments(minority)
    np.testing.assert_allclose(g0 / 2 + g1 / 2, 0, atol=1e-5)  # balanced condition (ridge 1e-6)
    h, gmat = (h0 + h1) / 2, h0 - h1
    a0 = np.eye(len(h)) - 0.5 * gmat @ np.linalg.inv(h)
    a1 = -np.eye(len(h)) - 0.5 * gmat @ np.linalg.inv(h)
    v = a0 @ sig0 @ a0.T / n0 + a1 @ sig1 @ a1.T / n1
    g_phi = g0 - g1
    t = g_phi @ np.linalg.inv(v) @ g_phi
    assert diag.t_sym == pytest.approx(t, rel=1e-6)
    assert diag.df == xt.shape[1] == dm.n_features + 1


def test_mlp_pilot_uses_penultimate_features_and_handles_dead_units():
    dm = linear_dm(n0=400, n1=80, seed=1)
    torch.manual_seed(0)
    pilot = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():  # unit 0 never fires: its feature is constant 0
        pilot[0].weight[0] = 0.0
        pilot[0].bias[0] = -1.0
    x = dm.active.x_train
    phi = head_features(pilot, x)
    expected = torch.relu(pilot[0](x)).double()
    torch.testing.assert_close(phi[:, :4], expected)
    assert torch.all(phi[:, 4] == 1)
    pilot.train()
    diag = tg_diagnostics(pilot, dm)
    assert pilot.training  # mode restored
    assert diag.df == 4 and any("rank 4 < 5" in n for n in diag.notes)
    assert math.isfinite(diag.t_sym)


# --------------------------------------------------------------------- errors


def test_multiclass_is_refused():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = np.repeat(["a", "b", "c"], [200, 70, 30])
    dm = TabularDataModule.from_arrays(x, y)
    dm.setup()
    model = TabularClassifier()
    model.build(3, 3)
    with pytest.raises(VTSSError, match='grid="tg" supports binary tasks only'):
        tg_diagnostics(model, dm)


def test_model_without_linear_layer_is_refused():
    dm = linear_dm(n0=200, n1=40)
    with pytest.raises(VTSSError, match="nn.Linear"):
        tg_diagnostics(nn.Sequential(nn.Identity()), dm)


def test_not_set_up_is_refused():
    x, y = simulate_paper_linear(100, 20, np.random.default_rng(0))
    dm = TabularDataModule.from_arrays(x, y)
    with pytest.raises(VTSSError, match="set up"):
        tg_diagnostics(nn.Linear(5, 1), dm)


# --------------------------------------------- determinism, JSON, data hygiene


def test_deterministic_under_the_seed():
    dm = linear_dm(JitterGenerator(scale=0.5), n0=1000, n1=100)
    pilot = logreg(dm)
    a = tg_diagnostics(pilot, dm, seed=5).to_dict()
    b = tg_diagnostics(pilot, dm, seed=5).to_dict()
    assert a == b
    c = tg_diagnostics(pilot, dm, seed=6).to_dict()
    assert c["t_sym"] == a["t_sym"] and c["gqs"] != a["gqs"]  # only the GQS is random


def test_to_dict_is_json_safe(smote_diag):
    data = json.loads(json.dumps(smote_diag.to_dict()))
    for key in (
        "regime",
        "generator_quality",
        "t_sym",
        "cutoff",
        "df",
        "alpha",
        "gqs",
        "cosine",
        "rho",
        "theory_target",
        "gap",
        "candidate_ratios",
        "candidates",
    ):
        assert key in data
    assert data["candidates"][0] == {
        "ratio": smote_diag.candidate_ratios[0],
        "rows": math.floor(smote_diag.candidate_ratios[0] * smote_diag.gap + 0.5),
    }
    odd = TGDiagnostics(
        regime=ASYMMETRIC,
        generator_quality=BIASED,
        t_sym=math.inf,
        cutoff=12.6,
        df=6,
        alpha=0.05,
        gqs=math.nan,
        cosine=0.9,
        rho=0.7,
        theory_target=math.inf,
        gap=100,
        candidate_ratios=list(WIDE_RATIOS),
    )
    data = json.loads(json.dumps(odd.to_dict(), allow_nan=False))
    assert data["t_sym"] is None and data["gqs"] is None and data["theory_target"] is None
    assert "no finite size" in odd.summary()


def test_reads_training_rows_only(smote_dm, smote_diag):
    split = smote_dm.active
    x_val, y_val = split.x_val, split.y_val
    split.x_val = torch.full_like(x_val, math.nan)
    try:
        diag = tg_diagnostics(logreg(smote_dm), smote_dm)
    finally:
        split.x_val = x_val
    assert math.isfinite(diag.t_sym) and math.isfinite(diag.gqs)
    assert diag.to_dict() == smote_diag.to_dict()  # the pilot's weights do not matter
    assert torch.equal(split.y_val, y_val)


def test_frame_generator_gets_raw_rows():
    # Bootstrapping raw rows and encoding them equals bootstrapping encoded rows.
    frame = linear_dm(FrameBootstrap(), n0=1000, n1=100)
    tensor = linear_dm(JitterGenerator(scale=0.0), n0=1000, n1=100)
    a = tg_diagnostics(logreg(frame), frame)
    b = tg_diagnostics(logreg(tensor), tensor)
    assert a.regime == b.regime == ASYMMETRIC
    assert a.gqs == pytest.approx(b.gqs, rel=1e-4)
    assert a.rho == pytest.approx(b.rho, rel=1e-4, abs=1e-7)


def test_minority_label_may_be_class_zero():
    x, y = simulate_paper_linear(1000, 100, np.random.default_rng(2))
    labels = np.where(y == 1, "a_rare", "b_common")  # minority sorts first: index 0
    dm = TabularDataModule.from_arrays(x, labels, generator=SMOTEGenerator())
    dm.setup()
    assert dm.active.class_counts[0] < dm.active.class_counts[1]
    a = tg_diagnostics(logreg(dm), dm).to_dict()
    split = dm.active
    original = split.y_train
    split.y_train = 1 - original  # the same rows with the minority as index 1
    try:
        b = tg_diagnostics(logreg(dm), dm).to_dict()
    finally:
        split.y_train = original
    assert a["gap"] == b["gap"] == 720
    assert a["t_sym"] == pytest.approx(b["t_sym"], rel=1e-6)
    assert a["gqs"] == pytest.approx(b["gqs"], rel=1e-6)
    assert a["rho"] == pytest.approx(b["rho"], rel=1e-6)


class _ShiftedGaussian(SyntheticGenerator):
    """N(c e1, I): the realistic aligned generator of experiment 4 (Ma & Zhang, arXiv 2601.16120)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def _fit(self, x, schema, seed):
        self.d = x.shape[1]

    def _sample(self, n, seed):
        z = torch.randn(n, self.d, generator=cpu_generator(seed))
        z[:, 0] += self.c
        return z


def test_squared_loss_pilot_recovers_the_papers_rho():
    """Experiment 4's law: rho = (1 - c)(2 - c)/2 exactly for the squared loss."""
    c, n1 = 0.6, 2000
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(20 * n1, 2)), rng.normal(size=(n1, 2)) + [1.0, 0.0]])
    y = np.r_[np.zeros(20 * n1, int), np.ones(n1, int)]
    dm = TabularDataModule.from_arrays(
        x.astype(np.float32), y, scale=False, generator=_ShiftedGaussian(c)
    )
    dm.setup()
    pilot = TabularClassifier(loss="mse", fit_intercept=False)
    pilot.configure_from_data(dm)
    diag = tg_diagnostics(pilot, dm, seed=0)
    assert diag.rho == pytest.approx((1 - c) * (2 - c) / 2, abs=0.03)
    assert diag.theory_target == pytest.approx(diag.gap / (1 - 2 * diag.rho))
    assert diag.regime == "local asymmetry"
    # the log-loss head on the same rows reads a different rho: the loss matters
    log_diag = tg_diagnostics(logreg(dm, fit_intercept=False), dm, seed=0)
    assert abs(log_diag.rho - diag.rho) > 0.01


def test_least_squares_head_solves_the_balanced_normal_equations():
    from vtss_lightning.search.tg import balanced_weights, fit_head

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    yb = (torch.rand(300, generator=gen) < 0.2).to(torch.float64)
    w = balanced_weights(yb)
    theta = fit_head(z, yb, w, "squared")
    grad = z.T @ (w * (z @ theta - yb))
    assert grad.abs().max() < 1e-5  # ridge 1e-6 only
    with pytest.raises(VTSSError, match="head loss"):
        fit_head(z, yb, w, "hinge")
