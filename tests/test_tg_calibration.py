"""TG-VTSS calibration: the calibrated symmetry test, the chi2 option, weak evidence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import mean_shift_dm, paper_linear_dm
from scipy.stats import chi2, kstest

from vtss_lightning import TabularDataModule, VTSSError
from vtss_lightning.data.builtin import simulate_paper_linear
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search.tg import (
    ASYMMETRIC,
    BIASED,
    LOCAL_MULTIPLIERS,
    REALISTIC,
    SYMMETRIC,
    SYMMETRIC_RATIOS,
    WIDE_RATIOS,
    SymmetryTest,
    design_statistics,
    symmetry_test,
    tg_candidate_ratios,
    tg_diagnostics,
    wald_statistic,
)
from vtss_lightning.search.tg.diagnostics import _with_generator
from vtss_lightning.search.tg.head_fit import pilot_head_loss
from vtss_lightning.search.tg.quality import GeneratorQuality

D = 20


def mean_shift(n0: int, n1: int, rng: np.random.Generator, law: str = "cube"):
    """Experiment 5's symmetric design: X = -+mu + xi, |mu| = 1, xi with identity covariance."""
    mu = np.ones(D) / math.sqrt(D)
    if law == "cube":
        xi = rng.uniform(-math.sqrt(3), math.sqrt(3), (n0 + n1, D))
    else:
        xi = rng.choice([-1.0, 1.0], size=(n0 + n1, D))
    x = xi + np.r_[-np.ones(n0), np.ones(n1)][:, None] * mu
    return torch.as_tensor(x), torch.as_tensor(np.r_[np.zeros(n0), np.ones(n1)])


def logreg(dm, **kwargs) -> TabularClassifier:
    model = TabularClassifier(**kwargs)
    model.build(dm.n_features, 2)
    return model


def linear_dm(n0=1500, n1=150, seed=0) -> TabularDataModule:
    return paper_linear_dm(n0, n1, seed)


def symmetric_dm() -> TabularDataModule:
    return mean_shift_dm(1000, 100, 5)


# ----------------------------------------------------------- size of the test


@pytest.mark.parametrize(("loss", "ratio"), [("log", 8), ("squared_pm", 20)])
def test_calibrated_test_holds_its_level_where_chi2_does_not(loss, ratio):
    """Experiment 5's cube law, d = 20, 100 minority rows: the paper's chi2 test rejects a
    true symmetry most of the time; the calibrated one near alpha, p-values ~ U(0, 1)."""
    rng = np.random.default_rng(2026)
    reps, n1 = 150, 100
    rejected = {"chi2": 0, "calibrated": 0}
    p_values = []
    for _ in range(reps):
        xt, yb = mean_shift(ratio * n1, n1, rng)
        stats = design_statistics(xt, yb, loss)
        for test in rejected:
            res = symmetry_test(stats.s0, stats.s1, stats.df, 0.05, test)
            rejected[test] += not res.symmetric
            if test == "calibrated":
                p_values.append(res.p_value)
    assert rejected["chi2"] / reps > 0.2
    assert 0.005 <= rejected["calibrated"] / reps <= 0.10
    assert kstest(p_values, "uniform").pvalue > 0.01


def test_calibrated_test_has_power_under_asymmetry():
    """Experiment 1's law without intercept is asymmetric: both tests reject."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y = simulate_paper_linear(1000, 50, rng)
        stats = design_statistics(
            torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float64), "log"
        )
        res = symmetry_test(stats.s0, stats.s1, stats.df, 0.05)
        assert res.test == "calibrated" and not res.symmetric and res.p_value < 1e-4


def test_symmetry_test_fields_and_consistency():
    xt, yb = mean_shift(800, 100, np.random.default_rng(3))
    stats = design_statistics(xt, yb, "log")
    res = symmetry_test(stats.s0, stats.s1, stats.df, 0.05)
    assert isinstance(res, SymmetryTest) and res.test == "calibrated"
    assert res.t_sym == pytest.approx(wald_statistic(stats.s0, stats.s1))
    assert res.chi2_cutoff == pytest.approx(chi2.ppf(0.95, stats.df))
    assert res.df_num > 0 and res.df_den > 0 and res.se > 0
    assert (res.p_value < 0.05) == (res.statistic > res.cutoff)
    with pytest.raises(VTSSError, match="symmetry test"):
        symmetry_test(stats.s0, stats.s1, stats.df, 0.05, "bootstrap")


# ------------------------------------------------- the paper's chi2 test, kept


def test_chi2_option_is_the_papers_test_and_grid():
    dm = symmetric_dm()
    pilot = logreg(dm, fit_intercept=False)
    old = tg_diagnostics(pilot, dm, test="chi2", join_weak=False)
    assert old.test == "chi2" and old.statistic == old.t_sym
    assert old.cutoff == pytest.approx(chi2.ppf(0.95, old.df)) == old.chi2_cutoff
    assert old.p_value == pytest.approx(chi2.sf(old.t_sym, old.df))
    assert old.regime == SYMMETRIC and old.t_sym <= old.cutoff
    assert old.candidate_ratios == list(SYMMETRIC_RATIOS) and old.gqs is None
    assert old.weak_evidence == []
    new = tg_diagnostics(pilot, dm)  # the same Wald statistic, a different decision rule
    assert new.test == "calibrated" and new.t_sym == pytest.approx(old.t_sym)

    dm = linear_dm()
    old = tg_diagnostics(logreg(dm), dm, test="chi2", join_weak=False)
    assert old.regime == ASYMMETRIC and old.t_sym > old.cutoff == pytest.approx(chi2.ppf(0.95, 6))
    share = old.theory_target / old.gap
    assert old.candidate_ratios == tg_candidate_ratios(ASYMMETRIC, old.generator_quality, share)
    assert old.weak_evidence == []


# ------------------------------------------------------------ weak evidence


def test_weak_evidence_joins_both_grids():
    sym, wide = set(SYMMETRIC_RATIOS), set(WIDE_RATIOS)
    local = set(LOCAL_MULTIPLIERS) | {round(1.5 * m, 4) for m in LOCAL_MULTIPLIERS}
    assert tg_candidate_ratios(SYMMETRIC, None, weak_test=True) == sorted(sym | wide)
    assert tg_candidate_ratios(SYMMETRIC, REALISTIC, 1.5, weak_test=True) == sorted(sym | local)
    assert tg_candidate_ratios(ASYMMETRIC, REALISTIC, 1.5, weak_test=True) == sorted(sym | local)
    assert tg_candidate_ratios(ASYMMETRIC, BIASED, 1.5, weak_quality=True) == sorted(wide | local)
    assert tg_candidate_ratios(ASYMMETRIC, REALISTIC, 1.5, weak_quality=True) == sorted(
        wide | local
    )
    # without weak evidence: the paper's grids
    assert tg_candidate_ratios(SYMMETRIC, REALISTIC, 1.5) == sorted(sym)
    assert tg_candidate_ratios(ASYMMETRIC, REALISTIC, 1.5) == sorted(local)


def _test(statistic: float, cutoff: float, se: float) -> SymmetryTest:
    return SymmetryTest(
        1.0, cutoff, df=5, alpha=0.05, test="calibrated", statistic=statistic,
        p_value=0.06 if statistic <= cutoff else 0.04, df_num=4.0, df_den=200.0, se=se,
        chi2_cutoff=11.07,
    )  # fmt: skip


def test_weak_evidence_is_recorded_and_explained():
    quality = GeneratorQuality(gqs=3.0, rho=0.1, cosine=0.5, se=1.0, noise=0.5)
    near = _with_generator(_test(2.3, 2.4, 0.3), quality, 1000, 10.0, [], "log")
    assert near.regime == SYMMETRIC and len(near.weak_evidence) == 1
    assert "symmetry test" in near.weak_evidence[0]
    assert set(SYMMETRIC_RATIOS) <= set(near.candidate_ratios)
    assert 1.0 in near.candidate_ratios and near.generator_quality == REALISTIC
    text = near.summary()
    assert "weak evidence" in text and "joins both" in text and len(text.splitlines()) == 3
    # a clear rejection with a GQS near tau: the realistic and the biased grids join
    borderline = GeneratorQuality(gqs=9.0, rho=0.1, cosine=0.5, se=2.0, noise=5.0)
    far = _with_generator(_test(30.0, 2.4, 3.0), borderline, 1000, 10.0, [], "log")
    assert far.regime == ASYMMETRIC and len(far.weak_evidence) == 1
    assert "GQS" in far.weak_evidence[0] and set(WIDE_RATIOS) <= set(far.candidate_ratios)
    # join_weak=False: one side only, as in the paper
    paper = _with_generator(_test(30.0, 2.4, 3.0), borderline, 1000, 10.0, [], "log", False)
    assert paper.weak_evidence == [] and paper.generator_quality == REALISTIC
    assert 0.0 not in paper.candidate_ratios


# ------------------------------------------------------------ report fields


def test_diagnostics_report_the_test_that_ran():
    dm = linear_dm()
    diag = tg_diagnostics(logreg(dm), dm)
    data = json.loads(json.dumps(diag.to_dict(), allow_nan=False))
    for key in (
        "test", "statistic", "cutoff", "p_value", "df_num", "df_den", "statistic_se",
        "t_sym", "chi2_cutoff", "gqs_se", "gqs_noise", "weak_evidence", "head_loss",
    ):  # fmt: skip
        assert key in data
    assert data["test"] == "calibrated" and data["head_loss"] == "log"
    assert data["statistic"] > data["cutoff"] and data["p_value"] < 0.05
    assert data["gqs_se"] > 0 and data["gqs_noise"] >= 0
    assert "calibrated test" in diag.summary() and "p = " in diag.summary()
    with pytest.raises(VTSSError, match="test must be one of"):
        tg_diagnostics(logreg(dm), dm, test="wald")


# ----------------------------------------------------------- +-1 coding


def test_plus_minus_one_squared_head_finds_experiment_5_symmetric():
    """Without intercept the +-1 squared head is locally symmetric on experiment 5's
    law and the 0/1 head is not; with an intercept the two codings agree."""
    xt, yb = mean_shift(100_000, 100_000, np.random.default_rng(0))
    pm = design_statistics(xt, yb, "squared_pm")
    zero_one = design_statistics(xt, yb, "squared")
    assert float((pm.s0.mean - pm.s1.mean).norm()) < 0.02
    assert float((zero_one.s0.mean - zero_one.s1.mean).norm()) > 0.3
    assert chi2.sf(wald_statistic(pm.s0, pm.s1), pm.df) > 1e-3
    with_int = torch.cat([xt[:5000], xt[-500:]]), torch.cat([yb[:5000], yb[-500:]])
    ones = torch.ones(len(with_int[0]), 1, dtype=torch.float64)
    design = torch.cat([with_int[0], ones], 1)
    a = design_statistics(design, with_int[1], "squared_pm")
    b = design_statistics(design, with_int[1], "squared")
    assert wald_statistic(a.s0, a.s1) == pytest.approx(wald_statistic(b.s0, b.s1), rel=1e-6)


def test_head_loss_option_and_pilot_attribute():
    rng = np.random.default_rng(4)
    x, y = mean_shift(1000, 100, rng)
    dm = TabularDataModule.from_arrays(x.numpy(), y.numpy().astype(int), scale=False)
    dm.setup()
    pilot = logreg(dm, loss="mse", fit_intercept=False)
    assert pilot_head_loss(pilot) == "squared"
    assert tg_diagnostics(pilot, dm).head_loss == "squared"
    diag = tg_diagnostics(pilot, dm, head_loss="squared_pm")
    assert diag.head_loss == "squared_pm"
    pilot.tg_head_loss = "squared_pm"
    assert pilot_head_loss(pilot) == "squared_pm"
    assert tg_diagnostics(pilot, dm).to_dict() == diag.to_dict()
    pilot.tg_head_loss = "hinge"
    with pytest.raises(VTSSError, match="head loss"):
        pilot_head_loss(pilot)


# ----------------------------------------------------------- search settings


def test_search_settings_match_the_diagnostics_options():
    from vtss_lightning.search.config import TG_HEAD_LOSSES, TG_TESTS
    from vtss_lightning.search.tg import HEAD_LOSSES, TESTS

    assert TG_TESTS == TESTS and TG_HEAD_LOSSES == HEAD_LOSSES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid": "tg", "tg_test": "wald"}, "unknown tg_test 'wald'"),
        ({"grid": "tg", "tg_head_loss": "hinge"}, "unknown tg_head_loss 'hinge'"),
        ({"tg_test": "chi2"}, 'apply to grid="tg" only'),
        ({"tg_join_weak": False}, 'apply to grid="tg" only'),
    ],
)
def test_tg_settings_are_checked_in_one_line(kwargs, message):
    from vtss_lightning import VTSSCallback

    with pytest.raises(VTSSError, match=message) as err:
        VTSSCallback(**kwargs)
    assert "\n" not in str(err.value)


def test_tg_settings_reach_the_diagnostics():
    """The paper's test and grid from the search settings; the default is calibrated."""
    from vtss_lightning import VTSSTuner

    dm = linear_dm(600, 60)
    paper = VTSSTuner(
        {"max_epochs": 1, "accelerator": "cpu"},
        grid="tg", tg_test="chi2", tg_join_weak=False, verbose=False, folds=None,
    )  # fmt: skip
    tg = paper.search(logreg(dm), dm).diagnostics["tg"]
    assert tg["test"] == "chi2" and tg["weak_evidence"] == []
    assert tg["statistic"] == tg["t_sym"] and tg["cutoff"] == tg["chi2_cutoff"]
    default = VTSSTuner({"max_epochs": 1, "accelerator": "cpu"}, grid="tg", verbose=False)
    assert default.search(logreg(dm), linear_dm(600, 60)).diagnostics["tg"]["test"] == "calibrated"
