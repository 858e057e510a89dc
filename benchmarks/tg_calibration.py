"""Calibration of TG-VTSS's two decisions: the symmetry test and the GQS rule.

``grid="tg"`` (Ma & Zhang, arXiv 2601.16120) picks its whole candidate grid from a
test of local symmetry (level alpha = 0.05) and the cross-fitted generator-quality
score (GQS, tau = 10). This script measures how often each decision is right, with
the package's own statistics (``vtss_lightning.search.tg``) computed directly on
simulated head designs (no Lightning trainer, except in ``--parts final``):

* ``truth``: each design's g_phi at the population balanced optimum, fitted on
  ``--truth-rows`` rows (half per class) for the exact parameterisation tested (loss,
  target coding, intercept), with the Wald statistic on those rows and the per-row
  noncentrality at the design's class ratio;
* ``size``: rejection rates of the paper's chi-square Wald test and of the
  calibrated test under the symmetric designs of experiment 5 (uniform cube,
  Rademacher, uniform sphere; logistic and +-1 squared loss; d = 20), per minority
  training size, with Monte-Carlo standard errors, and how often the evidence is
  weak (the statistic within one standard error of the cutoff: the grid joins both
  regimes);
* ``power``: the same under asymmetric designs (experiments 1 and 2, and experiment 5
  under the package's 0/1 squared-loss coding);
* ``gqs``: how often the GQS rule calls experiment 3's biased generator biased and an
  oracle sampler / SMOTE realistic, against each repetition's true GQS (the mismatch
  delta computed on 10^6 true minority rows and 10^5 generator rows);
* ``final``: TG-VTSS's final test loss with the chi-square test and the paper's
  one-sided grids versus the new default (calibrated test, weak evidence joins
  grids) on experiments 1, 2 and 5, a few full ``VTSSCallback`` trainings each.

Usage::

    .venv/bin/python benchmarks/tg_calibration.py --reps 200
    .venv/bin/python benchmarks/tg_calibration.py --parts final --final-reps 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
from _common import cpu_model, mean_se, single_thread, today  # noqa: E402

from vtss_lightning.data.builtin import (  # noqa: E402
    simulate_paper_linear,
    simulate_paper_nonlinear,
)
from vtss_lightning.generators import SMOTEGenerator  # noqa: E402
from vtss_lightning.search.tg import (  # noqa: E402
    CALIBRATED,
    CHI2,
    design_statistics,
    symmetry_test,
    wald_statistic,
)
from vtss_lightning.search.tg.head_fit import psd_solve  # noqa: E402
from vtss_lightning.search.tg.quality import (  # noqa: E402
    fold_parts,
    mismatch_from_folds,
    quality_from_mismatch,
    synthetic_count,
)
from vtss_lightning.search.tg.symmetry import a_matrices  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT_MD = RESULTS / "tg_calibration.md"
SIZES = (25, 50, 100, 200, 500, 2000)
ALPHA, TAU = 0.05, 10.0
D5 = 20  # experiment 5's dimension
RFF_FEATURES, RFF_LENGTHSCALE = 100, 2.0  # experiment 2's model (benchmarks/paper/exp2)


# ------------------------------------------------------------------- the laws
def noise(law: str, n: int, rng: np.random.Generator, d: int = D5) -> np.ndarray:
    """Experiment 5's symmetric noise laws, identity covariance."""
    if law == "cube":
        return rng.uniform(-math.sqrt(3), math.sqrt(3), (n, d))
    if law == "rademacher":
        return rng.choice([-1.0, 1.0], size=(n, d))
    if law == "sphere":
        z = rng.standard_normal((n, d))
        return math.sqrt(d) * z / np.linalg.norm(z, axis=1, keepdims=True)
    if law == "gaussian":
        return rng.standard_normal((n, d))
    raise ValueError(law)


def mean_shift(law: str, minority_scale: float = 1.0) -> Callable:
    """Experiment 5: X = -mu + xi (majority) or +mu + s xi (minority), |mu| = 1.

    ``s = 1`` is the paper's (symmetric) design; ``s != 1`` a mildly asymmetric one.
    """
    mu = np.ones(D5) / math.sqrt(D5)

    def simulate(n0: int, n1: int, rng: np.random.Generator):
        x = np.concatenate([-mu + noise(law, n0, rng), mu + minority_scale * noise(law, n1, rng)])
        return x, np.r_[np.zeros(n0, np.int64), np.ones(n1, np.int64)]

    return simulate


def rff_map(rng: np.random.Generator, d: int = 5) -> Callable[[np.ndarray], np.ndarray]:
    """Experiment 2's random Fourier features, drawn from ``rng`` (as the model does)."""
    w = rng.standard_normal((RFF_FEATURES, d)) / RFF_LENGTHSCALE
    b = rng.uniform(0, 2 * math.pi, RFF_FEATURES)
    scale = math.sqrt(2.0 / RFF_FEATURES)
    return lambda x: scale * np.cos(x @ w.T + b)


@dataclass(frozen=True)
class Design:
    """A simulated head design: the law, the head's loss and parameterisation, the ratio."""

    key: str
    label: str
    simulate: Callable
    loss: str  # "log", "squared" (0/1 targets) or "squared_pm" (+-1 targets)
    intercept: bool
    ratio: int  # n0 / n1
    rff: bool = False

    def head_design(self, x: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        if self.rff:
            x = rff_map(rng if rng is not None else np.random.default_rng(0))(x)
        if self.intercept:
            x = np.concatenate([x, np.ones((len(x), 1))], 1)
        return torch.as_tensor(x, dtype=torch.float64)

    def draw(self, n1: int, rng: np.random.Generator):
        """Head design and minority indicator of one sample with ``n1`` minority rows."""
        x, y = self.simulate(self.ratio * n1, n1, rng)
        return self.head_design(x, rng), torch.as_tensor(y, dtype=torch.float64)


LAWS = ("cube", "rademacher", "sphere")
SYMMETRIC_DESIGNS = [
    *(
        Design(f"log-{law}", f"exp. 5, {law}, logistic, no intercept, ratio 8", mean_shift(law),
               "log", False, 8)
        for law in LAWS
    ),
    *(
        Design(f"pm-{law}", f"exp. 5, {law}, squared ±1, no intercept, ratio 20",
               mean_shift(law), "squared_pm", False, 20)
        for law in LAWS
    ),
    Design("log-gaussian", "exp. 5 logistic variant's script law (Gaussian), ratio 8",
           mean_shift("gaussian"), "log", False, 8),
]  # fmt: skip
POWER_DESIGNS = [
    Design("exp1", "exp. 1 (d = 5 mixture), logistic with intercept, ratio 20",
           simulate_paper_linear, "log", True, 20),
    Design("exp1-noint", "exp. 1, logistic without intercept, ratio 20",
           simulate_paper_linear, "log", False, 20),
    Design("exp2", "exp. 2 (ring), logistic on 100 RFF + intercept, ratio 20",
           simulate_paper_nonlinear, "log", True, 20, rff=True),
    Design("01-cube", "exp. 5, cube, squared 0/1 (package's mse head), no intercept, ratio 20",
           mean_shift("cube"), "squared", False, 20),
    Design("log-cube-s1.25", "exp. 5, cube, minority noise × 1.25 (mildly asymmetric), "
           "logistic, no intercept, ratio 8", mean_shift("cube", 1.25), "log", False, 8),
]  # fmt: skip
TRUTH_ONLY = [
    Design("log-cube-int", "exp. 5, cube, logistic with intercept", mean_shift("cube"),
           "log", True, 8),
    Design("pm-cube-int", "exp. 5, cube, squared ±1 with intercept", mean_shift("cube"),
           "squared_pm", True, 20),
]  # fmt: skip


# --------------------------------------------------------------------- truth
def truth_row(design: Design, rows: int, seed: int) -> dict:
    """g_phi at the population balanced head (``rows`` rows, half per class)."""
    from scipy.stats import chi2

    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, zlib.crc32(design.key.encode())]))
    x, y = design.simulate(rows // 2, rows // 2, rng)
    xt = design.head_design(x, np.random.default_rng(seed))
    stats = design_statistics(xt, torch.as_tensor(y, dtype=torch.float64), design.loss)
    del x, xt
    s0, s1 = stats.s0, stats.s1
    g = s0.mean - s1.mean
    a0, a1 = a_matrices(s0, s1)
    per_row = a0 @ s0.cov @ a0.T / design.ratio + a1 @ s1.cov @ a1.T  # n1 x Var(g_phi)
    t_pop = wald_statistic(s0, s1)
    return {
        "key": design.key,
        "label": design.label,
        "df": stats.df,
        "rows": rows,
        "g_norm": float(g.norm()),
        "t_pop": t_pop,
        "p_pop": float(chi2.sf(t_pop, stats.df)),
        "lambda1": float(g.dot(psd_solve(per_row, g))),
        "notes": list(stats.notes),
    }


# ------------------------------------------------------------- size and power
def one_rep(design: Design, n1: int, rng: np.random.Generator) -> list[float]:
    """[reject chi2, weak chi2, reject calibrated, weak calibrated, p chi2, p cal, separable]."""
    xt, yb = design.draw(n1, rng)
    stats = design_statistics(xt, yb, design.loss)
    res = [symmetry_test(stats.s0, stats.s1, stats.df, ALPHA, t) for t in (CHI2, CALIBRATED)]
    out = [v for r in res for v in (float(not r.symmetric), float(r.weak))]
    return out + [r.p_value for r in res] + [float(any("separable" in n for n in stats.notes))]


def rejection_table(designs, sizes, reps: int, seed: int, log) -> dict:
    """Per design and size: rates (and MC SEs) of rejection and weak evidence."""
    table = {}
    for i, design in enumerate(designs):
        for n1 in sizes:
            t0 = time.perf_counter()
            rows = np.array(
                [
                    one_rep(
                        design, n1, np.random.default_rng(np.random.SeedSequence([seed, i, n1, r]))
                    )
                    for r in range(reps)
                ]
            )
            table[design.key, n1] = {
                "reps": reps,
                "rates": rows[:, :4].mean(0).tolist(),
                "p_uniform_ks": _ks_uniform(rows[:, 5]),
                "separable": float(rows[:, 6].mean()),
                "seconds": time.perf_counter() - t0,
            }
            r = table[design.key, n1]["rates"]
            log(f"{design.key} n1={n1}: chi2 {r[0]:.3f} calibrated {r[2]:.3f} "
                f"(weak {r[3]:.2f}) [{time.perf_counter() - t0:.0f} s]")  # fmt: skip
    return table


def _ks_uniform(p: np.ndarray) -> float:
    """Kolmogorov-Smirnov p-value of the calibrated test's p-values against U(0, 1)."""
    from scipy.stats import kstest

    p = p[np.isfinite(p)]
    return float(kstest(p, "uniform").pvalue) if len(p) > 1 else math.nan


def rate_se(rate: float, reps: int) -> float:
    return math.sqrt(max(rate * (1 - rate), 0.0) / reps)


# ------------------------------------------------------------------------ GQS
class _Gaussian:
    """N(c e1, I): experiment 3's biased generator Q (c = 0.5) or the oracle (c = 1)."""

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def fit(self, rows: np.ndarray, seed: int):
        self.d = rows.shape[1]
        return self

    def sample(self, n: int, seed: int) -> np.ndarray:
        z = np.random.default_rng(np.random.SeedSequence([seed, 3])).standard_normal((n, self.d))
        z[:, 0] += self.shift
        return z


class _Smote:
    """The package's ``SMOTEGenerator(k_neighbors=5)`` on arrays."""

    def fit(self, rows: np.ndarray, seed: int):
        self.gen = SMOTEGenerator(k_neighbors=5).fit(torch.as_tensor(rows), seed=seed)
        return self

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.gen.sample(n, seed).cpu().double().numpy()


GQS_GENERATORS = {
    "Q = N(0.5 e1, I) (biased)": lambda: _Gaussian(0.5),
    "oracle N(e1, I) (realistic)": lambda: _Gaussian(1.0),
    "SMOTE k = 5": _Smote,
}
TRUE_SYNTHETIC = 100_000


def exp3_simulate(n0: int, n1: int, rng: np.random.Generator):
    """Experiment 3: majority N(0, I2), minority N(e1, I2)."""
    x = rng.standard_normal((n0 + n1, 2))
    x[n0:, 0] += 1.0
    return x, np.r_[np.zeros(n0, np.int64), np.ones(n1, np.int64)]


def gqs_rep(make_gen, n1: int, rng: np.random.Generator, population: torch.Tensor, seed: int):
    """[GQS, its SE, noise floor, true GQS] for one sample (squared loss, no intercept)."""
    n0 = 20 * n1
    x, y = exp3_simulate(n0, n1, rng)
    xt = torch.as_tensor(x)
    stats = design_statistics(xt, torch.as_tensor(y, dtype=torch.float64), "squared")
    minority = x[n0:]
    synthetic, real = [], []
    parts = fold_parts(n1, 3, seed)
    for f, held in enumerate(parts):
        rest = np.concatenate([parts[j] for j in range(3) if j != f])
        gen = make_gen().fit(minority[rest], seed + f)
        rows = gen.sample(synthetic_count(len(held)), seed + 10 + f)
        synthetic.append(stats.scores(torch.as_tensor(rows), 1.0))
        real.append(stats.scores(torch.as_tensor(minority[held]), 1.0))
    quality = quality_from_mismatch(stats, mismatch_from_folds(synthetic, real, stats.s1), n0, n1)
    return [
        quality.gqs,
        quality.se,
        quality.noise,
        _true_gqs(stats, make_gen, minority, population, seed, n0, n1),
    ]


def _true_gqs(stats, make_gen, minority, population, seed, n0, n1) -> float:
    """The GQS with delta computed exactly (generator fitted on all n1 rows, 10^5 draws)."""
    from vtss_lightning.search.tg.quality import Mismatch, quality_score

    gen = make_gen().fit(minority, seed + 99)
    syn = stats.scores(torch.as_tensor(gen.sample(TRUE_SYNTHETIC, seed + 98)), 1.0)
    pop = stats.scores(population, 1.0)
    mm = Mismatch(syn.mean - pop.mean, syn.raw_mean - pop.raw_mean, syn.cov)
    return quality_score(stats, mm, n0, n1)


def gqs_table(sizes, reps: int, seed: int, log) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 33]))
    population = torch.as_tensor(exp3_simulate(0, 1_000_000, rng)[0])
    table = {}
    for g, (name, make_gen) in enumerate(GQS_GENERATORS.items()):
        for n1 in sizes:
            t0 = time.perf_counter()
            rows = np.array(
                [
                    gqs_rep(
                        make_gen,
                        n1,
                        np.random.default_rng(np.random.SeedSequence([seed, 7, g, n1, r])),
                        population,
                        seed + r,
                    )
                    for r in range(reps)
                ]
            )
            table[name, n1] = rows
            gqs, se, _, true = rows.T
            log(f"{name} n1={n1}: realistic {np.mean(gqs <= TAU):.2f}, true realistic "
                f"{np.mean(true <= TAU):.2f}, weak {np.mean(abs(gqs - TAU) <= se):.2f} "
                f"[{time.perf_counter() - t0:.0f} s]")  # fmt: skip
    return table


# ------------------------------------------------------------------- ablation
ABLATION_DESIGNS = ("log-cube", "pm-cube")
ABLATION_SIZES = (50, 200, 2000)
ABLATIONS = (
    ("chi2", "Wald T vs chi2_p (the paper's test)", None),
    ("wald_f", "Wald T vs the Hotelling / Nel-van der Merwe F (Krishnamoorthy-Yu df)", None),
    ("wald_star", "Wald T at the population head theta* (no head fit), vs chi2_p", None),
    ("box", "Box-type Q in the design metric, raw scores, Gaussian f0",
     {"hc2": False, "metric": "design"}),
    ("box_hc2", "the same with HC2 scores", {"metric": "design"}),
    ("box_hc2_kurt", "the same with f0 from the scores' fourth moments",
     {"metric": "design", "fourth_moments": True}),
    ("calibrated", "Box-type Q in the majority's Wald metric V_ref^-1, HC2 scores, Gaussian f0 "
     "(the default)", {}),
)  # fmt: skip


def _ky_reference(s0, s1, t: float, df: int) -> float:
    """p-value of Wald ``t`` against Krishnamoorthy & Yu's (2004) F approximation."""
    from scipy.stats import f as f_dist

    a0, a1 = a_matrices(s0, s1)
    v_k = [a0 @ s0.cov @ a0.T / s0.n, a1 @ s1.cov @ a1.T / s1.n]
    v_inv = torch.linalg.inv(v_k[0] + v_k[1])
    den = sum(
        (float(torch.trace(m @ m)) + float(torch.trace(m)) ** 2) / (n - 1)
        for m, n in ((v_k[0] @ v_inv, s0.n), (v_k[1] @ v_inv, s1.n))
    )
    nu = (df + df * df) / den
    if nu - df + 1 <= 0:
        return math.nan
    return float(f_dist.sf(t * (nu - df + 1) / (nu * df), df, nu - df + 1))


def _box_p(s0, s1, options: dict) -> float:
    from vtss_lightning.search.tg.symmetry import _f_reference, box_statistic

    box = box_statistic(s0, s1, **options)
    return _f_reference(box.q, box.f, box.f0, ALPHA)[1]


def ablation_rep(design: Design, n1: int, rng, theta_raw: torch.Tensor) -> list[float]:
    """p-values of every ablation on one sample."""
    from scipy.stats import chi2

    from vtss_lightning.search.tg.head_stats import class_scores

    xt, yb = design.draw(n1, rng)
    stats = design_statistics(xt, yb, design.loss)
    s0, s1 = stats.s0, stats.s1
    t = wald_statistic(s0, s1)
    theta_z = torch.linalg.lstsq(stats.basis, theta_raw[:, None]).solution[:, 0]
    star = [
        class_scores(xt[yb == k], stats.basis, theta_z, float(k), True, design.loss) for k in (0, 1)
    ]
    return [
        float(chi2.sf(t, stats.df)),
        _ky_reference(s0, s1, t, stats.df),
        float(chi2.sf(wald_statistic(*star), stats.df)),
        *(_box_p(s0, s1, options) for _, _, options in ABLATIONS[3:]),
    ]


def population_head(design: Design, rows: int, seed: int) -> torch.Tensor:
    """The balanced head on ``rows`` rows, in the design's own coordinates."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, zlib.crc32(design.key.encode())]))
    x, y = design.simulate(rows // 2, rows // 2, rng)
    stats = design_statistics(
        design.head_design(x, None), torch.as_tensor(y, dtype=torch.float64), design.loss
    )
    return stats.basis @ stats.theta_z


def ablation_table(reps: int, seed: int, rows: int, log) -> dict:
    by_key = {d.key: d for d in SYMMETRIC_DESIGNS}
    table = {}
    for key in ABLATION_DESIGNS:
        design = by_key[key]
        theta = population_head(design, rows, seed)
        for n1 in ABLATION_SIZES:
            p = np.array(
                [
                    ablation_rep(
                        design,
                        n1,
                        np.random.default_rng(np.random.SeedSequence([seed, 9, n1, r])),
                        theta,
                    )
                    for r in range(reps)
                ]
            )
            table[key, n1] = [
                float(np.mean(c[np.isfinite(c)] <= ALPHA)) if np.isfinite(c).any() else math.nan
                for c in p.T
            ]
            table[key, n1, "undefined"] = [float(np.mean(~np.isfinite(c))) for c in p.T]
            log(
                f"ablation {key} n1={n1}: "
                + ", ".join(
                    f"{a} {v:.3f}" for (a, _, _), v in zip(ABLATIONS, table[key, n1], strict=True)
                )
            )
    return table


# ---------------------------------------------------------- final test loss
PAPER_RULE = {"test": "chi2", "join_weak": False}
NEW_RULE = {"test": "calibrated", "join_weak": True}


def _with_tg_options(options: dict):
    """Make ``grid="tg"`` run :func:`tg_diagnostics` with ``options`` (until SearchConfig
    exposes them): ``run_search`` looks ``run_tg_diagnostics`` up in the package at call
    time, so the benchmark wraps it."""
    import contextlib

    import vtss_lightning.search.tg as tg

    @contextlib.contextmanager
    def patched():
        original = tg.run_tg_diagnostics

        def run(module, dm, settings, seed, verbose):
            return original(module, dm, settings, seed, verbose, **options)

        tg.run_tg_diagnostics = run
        try:
            yield
        finally:
            tg.run_tg_diagnostics = original

    return patched()


def _tg_fit(make_dm, make_model, options: dict, seed: int, folds=None):
    import pytorch_lightning as pl
    from _common import trainer

    from vtss_lightning import VTSSCallback

    pl.seed_everything(seed, verbose=False)
    kwargs = {} if folds is None else {"folds": folds}
    cb = VTSSCallback(grid="tg", verbose=False, seed=seed, **kwargs)
    with _with_tg_options(options):
        trainer([cb]).fit(make_model(), datamodule=make_dm())
    return cb.result


def _summary(result, loss: float) -> dict:
    diag = result.diagnostics["tg"]
    return {
        "loss": loss,
        "selected": float(result.selected_ratio),
        "regime": diag["regime"],
        "quality": diag["generator_quality"],
        "candidates": len(diag["candidate_ratios"]),
        "weak": bool(diag.get("weak_evidence")),
        "p": diag.get("p_value"),
    }


def final_exp1(seed: int) -> dict:
    from vtss_lightning import TabularDataModule
    from vtss_lightning.models import TabularClassifier

    def make_dm():
        return TabularDataModule(
            dataset="paper_linear", scale=False, seed=seed, generator=SMOTEGenerator(k_neighbors=5)
        )

    out = {}
    for name, rule in (("paper", PAPER_RULE), ("new", NEW_RULE)):
        res = _tg_fit(make_dm, lambda: TabularClassifier(weight_decay=0.0), rule, seed)
        out[name] = _summary(res, float(res.test_metrics["balanced_log_loss"]))
    return out


def final_exp2(seed: int) -> dict:
    from vtss_lightning import TabularDataModule
    from vtss_lightning.generators import JitterGenerator
    from vtss_lightning.models import TabularClassifier

    def make_dm():
        return TabularDataModule(
            dataset="paper_nonlinear", scale=False, seed=seed, generator=JitterGenerator(scale=1.0)
        )

    def make_model():
        return TabularClassifier(
            random_features=RFF_FEATURES, rff_lengthscale=RFF_LENGTHSCALE, weight_decay=3e-4
        )

    out = {}
    for name, rule in (("paper", PAPER_RULE), ("new", NEW_RULE)):
        res = _tg_fit(make_dm, make_model, rule, seed, folds=5)
        out[name] = _summary(res, float(res.test_metrics["balanced_log_loss"]))
    return out


def final_exp5_logistic(seed: int, generator: str, risk) -> dict:
    """Experiment 5's logistic variant (benchmarks/paper/exp5_logistic.py): excess risk
    of the refit on all rows at TG-VTSS's selected size."""
    import exp5_logistic as e5l

    from vtss_lightning import TabularDataModule

    x, y = e5l.simulate(e5l.N0, e5l.N1, np.random.default_rng(np.random.SeedSequence([seed, 55])))
    gap = e5l.N0 - e5l.N1
    out = {}
    for name, rule in (("paper", PAPER_RULE), ("new", NEW_RULE)):

        def make_dm():
            return TabularDataModule.from_arrays(
                x, y, scale=False, seed=seed, generator=e5l.GENERATORS[generator]()
            )

        res = _tg_fit(make_dm, e5l.logistic, rule, seed, folds=5)
        pool = e5l.GENERATORS[generator]().fit(torch.as_tensor(x[y == 1]), seed=seed)
        rows = pool.sample(round(max(2.0, res.selected_ratio) * gap) + 1, seed + 1).cpu().numpy()
        out[name] = _summary(
            res, e5l.refit_excess(risk, x, y, rows, res.selected_ratio * gap, seed)
        )
    return out


def final_exp5_squared(seed: int, law: str, generator: str) -> dict:
    """Experiment 5 (squared loss, +-1 coding, benchmarks/paper/exp5_symmetry.py): exact
    excess risk of the refit on all rows at TG-VTSS's selected size. Both rules use the
    +-1 head (``head_loss="squared_pm"``); the package's 0/1 head is not symmetric here."""
    import exp5_symmetry as e5
    from _common import fit_arrays, linear_weight, pm_squared_classifier

    from vtss_lightning import TabularDataModule

    x, y = e5.simulate(
        law,
        e5.N0,
        e5.N1,
        np.random.default_rng(np.random.SeedSequence([seed, e5.NOISES.index(law)])),
    )
    gap = e5.N0 - e5.N1
    out = {}
    for name, rule in (("paper", PAPER_RULE), ("new", NEW_RULE)):

        def make_dm():
            return TabularDataModule.from_arrays(
                x, y, scale=False, seed=seed, generator=e5.make_generator(generator, law)
            )

        res = _tg_fit(
            make_dm, pm_squared_classifier, {**rule, "head_loss": "squared_pm"}, seed, folds=5
        )
        gen = e5.make_generator(generator, law)
        gen.fit(torch.as_tensor(x[y == 1], dtype=torch.float32), seed=seed)
        m = round(res.selected_ratio * gap)
        pool = gen.sample(max(m, 1), seed + 1).cpu().numpy()[:m]
        model = pm_squared_classifier(n_features=e5.D, num_classes=2)
        fit_arrays(
            model, np.concatenate([x, pool]), np.concatenate([y, np.ones(m, np.int64)]), seed=seed
        )
        out[name] = _summary(res, e5.excess_pm(2 * linear_weight(model)))
    return out


def final_table(reps: int, seed: int, log) -> dict:
    import exp5_logistic as e5l
    from _common import quiet

    quiet()
    risk = e5l.Risk()
    jobs = [("exp. 1 (SMOTE), balanced test log loss", lambda s: final_exp1(s))]
    jobs += [("exp. 2 (jitter, RFF), balanced test log loss", lambda s: final_exp2(s))]
    jobs += [
        (f"exp. 5 logistic, {g}, excess risk", lambda s, g=g: final_exp5_logistic(s, g, risk))
        for g in ("smote", "gaussian")
    ]
    jobs += [
        (
            f"exp. 5 squared ±1, {law}, {g}, excess risk",
            lambda s, law=law, g=g: final_exp5_squared(s, law, g),
        )
        for law in LAWS
        for g in ("smote", "gaussian")
    ]
    table = {}
    for name, job in jobs:
        t0 = time.perf_counter()
        table[name] = [job(seed + r) for r in range(reps)]
        log(
            f"final {name}: "
            + "; ".join(
                f"paper {r['paper']['loss']:.4g} (γ̂ {r['paper']['selected']:g}) new {r['new']['loss']:.4g} (γ̂ {r['new']['selected']:g})"
                for r in table[name]
            )
            + f" [{time.perf_counter() - t0:.0f} s]"
        )
    return table


# ------------------------------------------------------------------- report
def _pct(rate: float, reps: int) -> str:
    if rate is None or not math.isfinite(rate):
        return "—"
    return f"{100 * rate:.1f} ± {100 * rate_se(rate, reps):.1f}"


def truth_section(rows: list[dict]) -> list[str]:
    lines = [
        "## 1. Truth: g_phi at the population balanced head",
        "",
        f"Each design's balanced head fitted on {_rows_text(rows)} rows (half per class) "
        "with the package's `design_statistics` for the exact parameterisation tested; "
        "`T` is the Wald statistic on those rows (a symmetric design gives T ≈ χ²_p, "
        "p-value uniform), λ₁ = g_φᵀ V₁⁻¹ g_φ the noncentrality per minority row at the "
        "design's class ratio (the Wald test's noncentrality at n1 minority rows is about "
        "n1·λ₁).",
        "",
        "| design | p | ‖g_φ‖ (whitened) | T on the rows (p-value) | λ₁ per minority row | truth |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "symmetric" if r["p_pop"] > 1e-3 else "**asymmetric**"
        lines.append(
            f"| {r['label']} | {r['df']} | {r['g_norm']:.2e} | {r['t_pop']:.4g} ({r['p_pop']:.2g}) "
            f"| {r['lambda1']:.3g} | {verdict} |"
        )
    return lines


def _rows_text(rows: list[dict]) -> str:
    counts = sorted({int(r["rows"]) for r in rows})
    return " / ".join(f"{c:,}" for c in counts)


def rate_section(title: str, designs, table: dict, sizes, intro: str, power: bool) -> list[str]:
    head = "| design | test | " + " | ".join(f"n1 = {n:,}" for n in sizes) + " |"
    lines = [title, "", intro, "", head, "|---|---|" + "---|" * len(sizes)]
    for d in designs:
        cells = {n: table.get(f"{d.key}|{n}") for n in sizes}
        for label, i in (("χ² (paper)", 0), ("calibrated", 2)):
            vals = [_pct(c["rates"][i], c["reps"]) if c else "—" for c in cells.values()]
            lines.append(f"| {d.label} | {label} | " + " | ".join(vals) + " |")
        weak = [f"{100 * c['rates'][3]:.0f}%" if c else "—" for c in cells.values()]
        lines.append("| | calibrated: weak evidence (grids joined) | " + " | ".join(weak) + " |")
        if not power:
            ks = [f"{c['p_uniform_ks']:.2g}" if c else "—" for c in cells.values()]
            lines.append("| | calibrated p-values vs U(0,1): KS p | " + " | ".join(ks) + " |")
        sep = [f"{100 * c['separable']:.0f}%" for c in cells.values() if c and c["separable"] > 0]
        if sep:
            lines.append(
                "| | (nearly) separable pilots | "
                + " | ".join(f"{100 * c['separable']:.0f}%" if c else "—" for c in cells.values())
                + " |"
            )
    return lines


def target_lines(table: dict, sizes) -> list[str]:
    worst = []
    for d in SYMMETRIC_DESIGNS:
        if d.key == "log-gaussian":
            continue
        for n in sizes:
            c = table.get(f"{d.key}|{n}")
            if c and n >= 50:
                worst.append((c["rates"][2], d.key, n, c["reps"]))
    if not worst:
        return []
    out = [w for w in worst if not 0.03 <= w[0] <= 0.07]
    within = [
        w for w in out if abs(w[0] - (0.03 if w[0] < 0.03 else 0.07)) <= 2 * rate_se(w[0], w[3])
    ]
    lo, hi = min(worst), max(worst)
    verdict = (
        "MET"
        if not out
        else ("MET within Monte-Carlo error" if len(within) == len(out) else "NOT MET")
    )
    return [
        f"**Target (calibrated rejection rate in [3%, 7%] for every symmetric design with "
        f"n1 ≥ 50): {verdict}.** Range over the {len(worst)} design × size cells: "
        f"{100 * lo[0]:.1f}% ({lo[1]}, n1 = {lo[2]}) to {100 * hi[0]:.1f}% ({hi[1]}, n1 = {hi[2]}); "
        f"{len(out)} cell(s) outside the band"
        + (": " + ", ".join(f"{k} n1 = {n}: {100 * r:.1f}%" for r, k, n, _ in out) if out else "")
        + (f" ({len(within)} of them within 2 MC SE of it)" if out else "")
        + ".",
    ]


def gqs_section(table: dict, sizes, reps: int) -> list[str]:
    head = "| generator | rule | " + " | ".join(f"n1 = {n:,}" for n in sizes) + " |"
    lines = [
        "## 4. The GQS rule (τ = 10): experiment 3's law, squared loss, ratio 20",
        "",
        "Majority N(0, I₂), minority N(e₁, I₂), n0 = 20·n1, squared-loss head without "
        'intercept (the package\'s `loss="mse"` coding, as in experiment 3). The GQS is the '
        "package's cross-fitted score (3 folds, max(200, 5 × held-out) synthetic rows per "
        "fold, `quality_from_mismatch`); the *true* GQS of a repetition uses the same head "
        "and formula with δ computed exactly (generator fitted on all n1 rows, 10⁵ of its "
        "rows against 10⁶ true minority rows). Cells: % of repetitions (± MC SE).",
        "",
        head,
        "|---|---|" + "---|" * len(sizes),
    ]
    for name in GQS_GENERATORS:
        cells = [np.asarray(table.get(f"{name}|{n}")) for n in sizes]
        rules = (
            ("called realistic (GQS ≤ τ)", lambda a: a[:, 0] <= TAU),
            ("truly realistic (true GQS ≤ τ)", lambda a: a[:, 3] <= TAU),
            ("verdict agrees with the true GQS", lambda a: (a[:, 0] <= TAU) == (a[:, 3] <= TAU)),
            (
                "weak evidence (|GQS − τ| ≤ SE: grids joined)",
                lambda a: np.abs(a[:, 0] - TAU) <= a[:, 1],
            ),
            ("called realistic after removing the noise floor", lambda a: a[:, 0] - a[:, 2] <= TAU),
        )
        for label, rule in rules:
            vals = [_pct(float(np.mean(rule(a))), len(a)) if a.ndim == 2 else "—" for a in cells]
            lines.append(f"| {name} | {label} | " + " | ".join(vals) + " |")
        med = [
            f"{np.median(a[:, 0]):.3g} / {np.median(a[:, 2]):.3g} / {np.median(a[:, 3]):.3g}"
            if a.ndim == 2
            else "—"
            for a in cells
        ]
        lines.append(f"| {name} | median GQS / noise floor / true GQS | " + " | ".join(med) + " |")
    return lines


def final_section(table: dict) -> list[str]:
    lines = [
        "## 5. TG-VTSS's final loss: the paper's rule vs the new default",
        "",
        'Full `VTSSCallback(grid="tg")` trainings (as in `benchmarks/paper/`), each repetition '
        "twice on the same data and seed: *paper* = χ² test, one-sided grids "
        '(`test="chi2", join_weak=False`); *new* = calibrated test, weak evidence joins the '
        "grids (the defaults). Experiments 1 and 2: balanced test log loss of the final "
        "model (10,000 test rows per class); experiment 5: excess balanced risk of the refit "
        "on all rows at the selected size (exactly, as in `exp5_symmetry.py` / "
        "`exp5_logistic.py`). Grids: `sym` symmetric, `real` realistic, `bias` biased; "
        "`joined`: weak evidence joined both sides' candidates. Few repetitions: "
        "differences within 2 SE are noise.",
        "",
        "| experiment | reps | paper: loss ± SE (mean γ̂; grids) | new: loss ± SE (mean γ̂; grids) "
        "| new − paper (paired, ± SE) |",
        "|---|---|---|---|---|",
    ]
    for name, reps in table.items():
        paper = [r["paper"] for r in reps]
        new = [r["new"] for r in reps]
        diff = mean_se([n["loss"] - p["loss"] for n, p in zip(new, paper, strict=True)])
        lines.append(
            f"| {name} | {len(reps)} | {_loss_cell(paper)} | {_loss_cell(new)} | "
            f"{diff[0]:+.2e} ± {0 if math.isnan(diff[1]) else diff[1]:.1e} |"
        )
    return lines


def _loss_cell(runs: list[dict]) -> str:
    """Mean loss ± SE, mean selected ratio, and how often each grid was searched."""
    m, se = mean_se([r["loss"] for r in runs])
    kinds: dict[str, int] = {}
    for r in runs:
        kind = "sym" if r["regime"] == "local symmetry" else (r["quality"] or "asym")[:4]
        kinds[kind] = kinds.get(kind, 0) + 1
    joined = sum(r["weak"] for r in runs)
    grids = ", ".join(f"{k} ×{v}" for k, v in sorted(kinds.items()))
    sel = float(np.mean([r["selected"] for r in runs]))
    return (
        f"{m:.4g} ± {0 if math.isnan(se) else se:.1g} (γ̂ {sel:.2f}; {grids}"
        + (f"; joined ×{joined}" if joined else "")
        + ")"
    )


def ablation_section(table: dict, reps: int) -> list[str]:
    head = "| design | n1 | " + " | ".join(a for a, _, _ in ABLATIONS) + " |"
    lines = [
        "## 2. Where the oversizing comes from (ablation)",
        "",
        "Rejection rates (%) at α = 0.05 under two symmetric designs of experiment 5, "
        f"{reps} repetitions each (MC SE ≤ {100 * rate_se(0.5, reps):.1f} points):",
        "",
        *[f"- `{a}`: {text}" for a, text, _ in ABLATIONS],
        "",
        head,
        "|---|---|" + "---|" * len(ABLATIONS),
    ]
    for key in ABLATION_DESIGNS:
        for n1 in ABLATION_SIZES:
            vals = table.get(f"{key}|{n1}")
            undefined = table.get(f"{key}|{n1}|undefined") or [0] * len(ABLATIONS)
            if vals:
                cells = [
                    ("—" if not math.isfinite(v) else f"{100 * v:.1f}")
                    + (f" ({100 * u:.0f}% undef.)" if u > 0 else "")
                    for v, u in zip(vals, undefined, strict=True)
                ]
                lines.append(f"| {key} | {n1:,} | " + " | ".join(cells) + " |")
    return lines


def _run_lines(runs: list[dict], argv) -> list[str]:
    if not runs:
        return [f"  - `{shlex.join(argv)}`"]
    return [
        f"  - `{shlex.join(r['argv'])}`: {', '.join(r['parts'])}; {r['date']}, wall {r['wall']:.0f} s"
        for r in runs
    ]


def _reps_line(cache: dict) -> str:
    """Repetitions per cell of each part in the cache (parts may run apart)."""
    out = []
    for part in ("size", "power"):
        reps = sorted({c["reps"] for c in cache.get(part, {}).values()})
        if reps:
            out.append(f"{part} {'/'.join(map(str, reps))}")
    if "ablation" in cache:
        out.append(f"ablation {cache['ablation'].get('reps', '?')}")
    if "gqs" in cache:
        out.append(f"GQS {'/'.join(map(str, sorted({len(v) for v in cache['gqs'].values()})))}")
    if "final" in cache:
        out.append(
            f"final loss {'/'.join(map(str, sorted({len(v) for v in cache['final'].values()})))}"
        )
    return ", ".join(out)


def write_report(path: Path, cache: dict, args, argv, wall: float) -> None:
    sizes = tuple(args.sizes)
    lines = [
        "# TG-VTSS calibration: the symmetry test and the GQS rule",
        "",
        "- Commands behind this file (each part's results are cached, so parts run apart):",
        *_run_lines(cache.get("runs", []), argv),
        f"- Machine: {cpu_model()}; {len(os.sched_getaffinity(0))} cores visible, "
        f"torch threads {torch.get_num_threads()}; Python {sys.version.split()[0]}, torch "
        f"{torch.__version__}; CPU only",
        f"- Written: {today()}",
        f"- α = {ALPHA}, τ = {TAU:g}; repetitions per cell: {_reps_line(cache)}",
        "",
    ]
    lines += cache.get("findings", [])
    if "truth" in cache:
        lines += ["", *truth_section(cache["truth"])]
    if "ablation" in cache:
        lines += [
            "",
            *ablation_section(cache["ablation"], cache["ablation"].get("reps", args.reps)),
        ]
    if "size" in cache:
        lines += ["", *rate_section(
            "## 3a. Size: rejection rates (%) under the symmetric designs", SYMMETRIC_DESIGNS,
            cache["size"], sizes, SIZE_INTRO, power=False), "", *target_lines(cache["size"], sizes)]  # fmt: skip
    if "power" in cache:
        lines += ["", *rate_section(
            "## 3b. Power: rejection rates (%) under asymmetric designs", POWER_DESIGNS,
            cache["power"], sizes, POWER_INTRO, power=True)]  # fmt: skip
    if "gqs" in cache:
        lines += ["", *gqs_section(cache["gqs"], sizes, args.reps)]
    if "final" in cache:
        lines += ["", *final_section(cache["final"])]
    lines += ["", *NOTES]
    path.write_text("\n".join(lines) + "\n")


SIZE_INTRO = (
    "Mean shift X = ∓μ + ξ, d = 20, ‖μ‖ = 1, the paper's experiment-5 noise laws; the logistic "
    "variant at the paper's class ratio ≈ 8 (4,440 : 560), the ±1 squared loss at ratio 20 "
    "(2,000 : 100). n1 = minority *training* rows. Cells: rejection rate % ± Monte-Carlo SE; "
    "below each design, the share of repetitions whose calibrated statistic is within one "
    "standard error of its cutoff (the grid then joins both regimes' candidates), and a "
    "Kolmogorov–Smirnov test of the calibrated p-values against U(0, 1)."
)
POWER_INTRO = (
    "Experiment 1 (d = 5, minority a mixture at 2·e₁ ± 1.75·e₂), experiment 2 (ring vs "
    "correlated blob, logistic head on 100 random Fourier features of length-scale 2, drawn "
    "afresh per repetition, plus intercept: p = 101), and experiment 5's cube law under the "
    "package's 0/1 squared-loss head (not symmetric: see section 1)."
)
NOTES = [
    "## Method notes",
    "",
    "- Everything runs the package's own code (`vtss_lightning.search.tg`: "
    "`design_statistics`, `symmetry_test`, `quality_from_mismatch`) on simulated head designs; "
    "for a linear pilot the head design is the features themselves, so this is exactly what "
    "`tg_diagnostics` computes (the pilot's weights do not matter: the head is refitted).",
    "- Seeds: every repetition has its own `numpy.random.SeedSequence`; the same seeds serve "
    "both tests, so their rates are paired.",
    "- MC SE of a rate r over R repetitions: √(r(1 − r)/R).",
    "- Weak evidence: the calibrated statistic's standard error is that of a Gaussian "
    "quadratic form with the noncentrality estimated without its noise bias; the GQS's is "
    "the delta-method one with δ's covariance from the minority's and the synthetic rows' "
    "score covariances (`GeneratorQuality.se`).",
    '- Experiment 5 with the squared loss needs the ±1 head (`head_loss="squared_pm"`); '
    'section 5 passes it (and the rule options) to `grid="tg"` by wrapping '
    "`run_tg_diagnostics` until `SearchConfig` exposes them.",
]

#: Written after the committed run (see the tables); revisit after a new full run.
FINDINGS: list[str] = [
    "## Summary",
    "",
    "- **Oversizing reproduced and explained.** Under experiment 5's symmetric designs "
    "(d = 20) the paper's χ² Wald test rejects a true symmetry in 95–98% of repetitions at "
    "50 minority rows (logistic), 79–83% at 50 (±1 squared loss), 43–44% / 21–23% at 200 "
    "and still 6–9% at 2,000 (section 3a). The cause is the inverse of the sandwich "
    "variance V, which is dominated by the minority's 20 × 20 score covariance estimated "
    "from n1 rows (section 2): a Hotelling/Behrens–Fisher F reference for the same "
    "statistic (`wald_f`) removes only part of it (96 → 79%, 80 → 38% at n1 = 50), since "
    "heavy-tailed scores make the inverse noisier than Wishart; plugging in the fitted "
    "head adds more (`wald_star`, the statistic at the true head, is lower than `chi2`), "
    "because each row's residual is shrunk by its leverage in the balanced fit, and the "
    "minority carries about half of the p leverages. Target coding and intercepts do not "
    "cause oversizing; they decide *whether* a design is symmetric (section 1: experiment "
    "5 is symmetric only for the ±1 squared-loss or intercept-free logistic head; the "
    'package\'s 0/1 `loss="mse"` head and any intercept make it asymmetric). The test '
    "has no cross-fitting.",
    '- **The calibrated default** (`test="calibrated"`, `vtss_lightning/search/tg/'
    "symmetry.py`) keeps the paper's g_φ and sandwich and fixes the three parts in turn: "
    "HC2 leverage-adjusted scores; g_φ measured in the Wald metric of the *majority's* "
    "score covariance (V_ref⁻¹: estimated from the class with 8–20× more rows, so its noise "
    "neither blows up nor follows g_φ's); and Box's F(f, f0) reference for a quadratic form "
    "over an estimated trace (Welch–Satterthwaite f0). Section 2 shows each step: the same "
    "Box statistic in a design metric without HC2 (`box`) is still 20–33% at n1 = 50.",
    "- **Size** (section 3a, 600 repetitions per cell): the calibrated test rejects "
    "1.5–5.8% over all 30 cells with n1 ≥ 50 (χ²: 6–98%); it never exceeds 7%, but it is "
    "conservative for the logistic head at n1 = 100–200 (1.5–2.8%; the 1.5% cell reads "
    "3.0% in section 2's independent 600 repetitions). At n1 = 25 it is 6.5–8.3% (χ²: "
    "35–99%).",
    "- **Power** (section 3b): 100% on experiments 1 and 2 at every size; on experiment "
    "2 (p = 101) the χ² test has *less* (56–80% at n1 ≤ 100), because its V estimate is "
    "numerically indefinite there (negative T in some repetitions). The price is power "
    "against weak asymmetry at small n1: experiment 5 under the 0/1 head 40% / 74% at "
    "n1 = 25 / 50 (χ² 100%), and a mild scale asymmetry 7–25% up to n1 = 200 (where the "
    "χ² test's 30–96% are mostly its false-rejection rate); at n1 = 500 the calibrated "
    "test has more power there (76% vs 53%).",
    "- **Weak evidence joins the grids** when the statistic (or the GQS) is within one "
    "standard error of its threshold: 15–25% of the symmetric runs at n1 ≥ 50, 0% of the "
    "clearly asymmetric ones, 26–70% under mild asymmetry, and for the GQS 92–100% of "
    "the oracle and SMOTE runs but 0% of the biased generator's at n1 ≥ 200 (section 4).",
    "- **The GQS rule is unreliable at class ratio 20** (section 4): the noise of the "
    "estimated δ alone puts about 12–16 on the score (0.6–0.8 × n0/n1), above τ = 10, so "
    "an oracle generator is called realistic in only 37–53% of repetitions; experiment 3's "
    "biased Q is recognised (≥ 95% at n1 ≥ 50). SMOTE is called realistic in 79–90% while "
    "its true GQS is ≤ τ in only 36–51%: a generator that keeps its fitted rows' mean "
    "inherits their sampling noise, a real mismatch with the population that the "
    "fold-averaged δ of the cross-fitting cancels (median cross-fitted GQS 3.4–4.8 vs true "
    "10–16). That is the 'SMOTE realistic on almost every split' of `baselines.md`. The "
    "weak-evidence rule turns these verdicts into joined grids; fixing the score itself is "
    "left open (see the report).",
    "- **Final loss** (section 5, 8 repetitions each): experiments 1 and 2 unchanged "
    "(+0.00002 ± 0.00001 and 0 in balanced test log loss); experiment 5 lower with the new "
    "default in all 8 settings (±1 squared loss: −0.006 to −0.014 excess risk, 2.5–3 SE; "
    "logistic variant: −0.0005 / −0.0008, 1 SE), because the χ² test sent 1/8 (logistic) "
    "and 4–5/8 (squared) of these truly symmetric runs to a grid without small sizes.",
]

PARTS = ("truth", "ablation", "size", "power", "gqs", "final")


def _keyed(table: dict) -> dict:
    """JSON-safe keys (``(design, n1)`` -> ``"design|n1"``) and values."""
    out = {}
    for k, v in table.items():
        key = "|".join(map(str, k)) if isinstance(k, tuple) else str(k)
        out[key] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


def run_part(part: str, args, log):
    if part == "truth":
        return [
            truth_row(d, args.truth_rows, args.seed)
            for d in SYMMETRIC_DESIGNS + POWER_DESIGNS + TRUTH_ONLY
        ]
    if part == "ablation":
        return {
            **_keyed(ablation_table(args.reps, args.seed, args.truth_rows, log)),
            "reps": args.reps,
        }
    if part == "size":
        return _keyed(rejection_table(SYMMETRIC_DESIGNS, args.sizes, args.reps, args.seed, log))
    if part == "power":
        return _keyed(rejection_table(POWER_DESIGNS, args.sizes, args.reps, args.seed, log))
    if part == "gqs":
        return _keyed(gqs_table(args.sizes, args.reps, args.seed, log))
    return final_table(args.final_reps, args.seed, log)


def _record_run(cache: Path, parts: list[str], argv: list[str], wall: float) -> list[dict]:
    """The invocations behind the cached parts (a rerun of a part supersedes its entry)."""
    path = cache / "runs.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    if parts:
        for r in runs:
            r["parts"] = [p for p in r["parts"] if p not in parts]
        runs = [r for r in runs if r["parts"]]
        runs.append({"argv": argv, "parts": parts, "date": today(), "wall": wall})
        path.write_text(json.dumps(runs))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="truth,ablation,size,power,gqs",
                        help=f"comma-separated subset of {','.join(PARTS)}")  # fmt: skip
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--final-reps", type=int, default=2)
    parser.add_argument(
        "--sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(SIZES)
    )
    parser.add_argument("--truth-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tg_calibration_cache"),
                        help="where each part's results are kept, so parts can run apart")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT_MD)
    args = parser.parse_args(argv)
    single_thread(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    parts = [p for p in args.parts.split(",") if p]
    for part in parts:
        if part not in PARTS:
            parser.error(f"unknown part {part!r}")
        (args.cache / f"{part}.json").write_text(json.dumps(run_part(part, args, log)))
    shown = [
        ".venv/bin/python",
        "benchmarks/tg_calibration.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    runs = _record_run(args.cache, parts, shown, time.perf_counter() - start)
    cache = {
        p: json.loads((args.cache / f"{p}.json").read_text())
        for p in PARTS
        if (args.cache / f"{p}.json").exists()
    }
    cache["findings"] = FINDINGS
    cache["runs"] = runs
    write_report(args.out, cache, args, shown, time.perf_counter() - start)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
