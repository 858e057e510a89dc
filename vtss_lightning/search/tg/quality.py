"""The cross-fitted generator-quality score (GQS) and the mismatch's alignment ``rho``.

When the symmetry test rejects, TG-VTSS (Ma & Zhang, arXiv 2601.16120) asks how
biased the generator is: the GQS is roughly the squared bias the synthetic rows add
at full balance over the variance they remove, and ``rho`` says how much of the
generator's mismatch points along the class shift ``g_phi``, which sets the theory's
best size ``n~* = gap / (1 - 2 rho)``.

Procedure: the minority training rows are split into folds; per fold, ``delta_f`` is
the mean score of ``m`` synthetic rows (label 1) from a generator fitted on the other
folds' minority rows, minus the mean score of the held-out minority rows
(``m = max(200, 5 x held-out rows)``). ``delta`` and ``Sigma_syn`` average the
per-fold mismatch and synthetic score covariance; all scores are taken at the head
fitted on all training rows. Cross-fitting keeps the generator from being judged on
the rows it was fitted on. Only training rows (and synthetic rows from generators
fitted on them) are read.

The GQS is noisy: ``delta`` is estimated from ``n1`` real and about ``5 n1`` synthetic
rows, and its noise alone adds about ``gap^2 / (2 n0) tr(H^-1 C) / tr(H^-1 Sigma_aug)``
to the score (``C`` the covariance of ``delta``), roughly ``0.6-0.8 n0 / n1`` for a
perfect generator: at a class ratio of 20 that is already more than ``tau = 10``.
:attr:`GeneratorQuality.se` is a delta-method standard error of the GQS (``C``
estimated from the minority's and the synthetic rows' score covariances), and
:attr:`GeneratorQuality.noise` that noise floor; the diagnostics call the verdict
weak when the GQS is within one standard error of ``tau``. (A generator that keeps
its fitted rows' mean, like SMOTE or a bootstrap, inherits their sampling noise, a
real mismatch with the population that averaging ``delta_f`` over equal folds
cancels: its cross-fitted GQS reads lower than its true one;
``benchmarks/results/tg_calibration.md``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vtss_lightning._random import GENERATOR_FIT_SALT, GENERATOR_SAMPLE_SALT, derive_seed
from vtss_lightning.search.tg.head_fit import psd_solve
from vtss_lightning.search.tg.head_stats import ClassScores, PilotStats, head_features

REALISTIC = "realistic"
BIASED = "biased"

MIN_SYNTHETIC = 200  # synthetic rows drawn per fold, at least ...
SYNTHETIC_PER_HELD_OUT = 5  # ... and this many per held-out minority row


@dataclass(frozen=True)
class GeneratorQuality:
    """GQS, and the projection coefficient ``rho`` and cosine of ``delta`` on ``g_phi``.

    ``rho`` and the cosine are taken in the head's own coordinates (penultimate
    features and intercept, as the paper writes them); unlike the Wald statistic and
    the GQS they are not invariant to a reparametrisation of the head.
    """

    gqs: float
    rho: float
    cosine: float
    se: float = math.nan
    noise: float = math.nan

    def verdict(self, tau: float) -> str:
        """``"realistic"`` when ``GQS <= tau``, else ``"biased"`` (NaN counts as biased)."""
        return REALISTIC if self.gqs <= tau else BIASED

    def weak(self, tau: float) -> bool:
        """The GQS lies within one standard error of ``tau``."""
        return bool(abs(self.gqs - tau) <= self.se)


@dataclass(frozen=True)
class Mismatch:
    """Fold averages of the synthetic-minus-real mean score and the synthetic covariance."""

    delta: torch.Tensor  # (r,) whitened coordinates
    delta_raw: torch.Tensor  # (p,) the head's own coordinates
    sigma_syn: torch.Tensor  # (r, r)
    cov: torch.Tensor | None = None  # (r, r) covariance of delta (estimated)


def generator_quality(
    pilot: nn.Module,
    dm,
    split,
    stats: PilotStats,
    minority: torch.Tensor,
    folds: int,
    seed: int,
) -> GeneratorQuality:
    """GQS, ``rho`` and cosine of ``dm``'s generator on ``split`` (``minority``: row mask)."""
    n1 = int(minority.sum())
    n0 = len(minority) - n1
    mismatch = cross_fitted_mismatch(pilot, dm, split, stats, minority, folds, seed)
    return quality_from_mismatch(stats, mismatch, n0, n1)


def quality_from_mismatch(
    stats: PilotStats, mismatch: Mismatch, n0: int, n1: int
) -> GeneratorQuality:
    """GQS (with its standard error and noise floor), ``rho`` and cosine of a mismatch."""
    rho, cosine = alignment(stats, mismatch.delta_raw)
    gqs, se, noise = quality_score_with_se(stats, mismatch, n0, n1)
    return GeneratorQuality(gqs, rho, cosine, se, noise)


def fold_parts(n1: int, folds: int, seed: int) -> list[np.ndarray]:
    """The cross-fitting folds: positions ``0 .. n1-1`` of the minority rows, permuted."""
    return np.array_split(np.random.default_rng(seed).permutation(n1), folds)


def synthetic_count(held_out: int) -> int:
    """Synthetic rows drawn for a fold with ``held_out`` real minority rows."""
    return max(MIN_SYNTHETIC, SYNTHETIC_PER_HELD_OUT * held_out)


def mismatch_from_folds(
    synthetic: list[ClassScores], real: list[ClassScores], minority: ClassScores
) -> Mismatch:
    """Fold averages of ``synthetic[f].mean - real[f].mean`` and of the synthetic covariance.

    ``minority`` (the scores of all minority training rows) gives the real rows'
    covariance for ``Mismatch.cov``: ``sum_f (Sigma1 / n_f + Sigma_syn,f / m_f) / F^2``
    (``n_f`` held-out and ``m_f`` synthetic rows in fold ``f``; independent rows; a generator that copies its fitted rows
    makes the folds' errors correlated and this an approximation).
    """
    folds = len(synthetic)
    delta_z = torch.stack([s.mean - r.mean for s, r in zip(synthetic, real, strict=True)])
    delta_raw = torch.stack([s.raw_mean - r.raw_mean for s, r in zip(synthetic, real, strict=True)])
    cov_syn = torch.stack([s.cov for s in synthetic])
    inverse_sizes = sum(1 / max(r.n, 1) for r in real)
    cov = (minority.cov * inverse_sizes + sum(s.cov / s.n for s in synthetic)) / folds**2
    return Mismatch(delta_z.mean(0), delta_raw.mean(0), cov_syn.mean(0), cov)


def cross_fitted_mismatch(
    pilot: nn.Module,
    dm,
    split,
    stats: PilotStats,
    minority: torch.Tensor,
    folds: int,
    seed: int,
) -> Mismatch:
    """``delta`` and ``Sigma_syn`` over ``folds`` folds of the minority training rows."""
    positions = torch.nonzero(minority).flatten().cpu().numpy()
    parts = fold_parts(len(positions), folds, seed)
    synthetic, real = [], []
    for f, held in enumerate(parts):
        rest = np.concatenate([parts[j] for j in range(folds) if j != f])
        synthetic.append(
            _synthetic_scores(pilot, dm, split, stats, np.sort(positions[rest]), len(held), f, seed)
        )
        held_rows = torch.as_tensor(np.sort(positions[held]), device=stats.xt.device)
        real.append(stats.scores(stats.xt[held_rows], 1.0))
    return mismatch_from_folds(synthetic, real, stats.s1)


def _synthetic_scores(
    pilot: nn.Module,
    dm,
    split,
    stats: PilotStats,
    fit_rows: np.ndarray,
    held_out: int,
    fold: int,
    seed: int,
) -> ClassScores:
    """Scores of rows from a generator fitted on ``fit_rows`` (positions in ``x_train``)."""
    builder = dm.pool_builder
    fit_seed = derive_seed(seed, GENERATOR_FIT_SALT, fold)
    generator = builder.fit_generator(split, fit_rows, fit_seed, "TG-VTSS cross-fitting fold")
    m = synthetic_count(held_out)
    draw_seed = derive_seed(seed, GENERATOR_SAMPLE_SALT, fold)
    synthetic = builder.sample(split, generator, m, draw_seed, "")
    return stats.scores(head_features(pilot, synthetic, stats.xt.device), 1.0)


def quality_score(stats: PilotStats, mismatch: Mismatch, n0: int, n1: int) -> float:
    """``GQS = bias^2 / variance`` of the balanced head at full balance (``gap`` rows).

    The bias is ``gap^2 / 2n0 * delta' H^-1 delta``; the variance is the trace of
    ``H^-1 Sigma_aug``, with ``Sigma_aug`` the score covariance of the augmented
    minority (real and synthetic rows in their shares) and the majority.
    """
    return quality_score_with_se(stats, mismatch, n0, n1)[0]


def quality_score_with_se(
    stats: PilotStats, mismatch: Mismatch, n0: int, n1: int
) -> tuple[float, float, float]:
    """GQS, its delta-method standard error and the part its noise alone explains.

    With ``A = H^-1``, ``C = Mismatch.cov`` and ``k = gap^2 / 2 n0``: the GQS is
    ``k d' A d / v``; ``Var(d' A d) = 4 delta' A C A delta + 2 tr((A C)^2)`` (Gaussian
    ``d``; ``delta' A C A delta`` estimated by ``d' A C A d - tr((A C)^2)``),
    and ``E[d' A d]`` exceeds the true ``delta' A delta`` by ``tr(A C)``: the noise
    floor ``k tr(A C) / v``. Without ``cov``, the standard error and floor are NaN.
    """
    s0, s1 = stats.s0, stats.s1
    delta = mismatch.delta
    h = (s0.hess + s1.hess) / 2
    sigma_aug = 0.5 * s0.cov + n1 / (2 * n0) * s1.cov + (n0 - n1) / (2 * n0) * mismatch.sigma_syn
    scale = (n0 - n1) ** 2 / (2 * n0)
    a_delta = psd_solve(h, delta)
    bias2 = scale * float(delta.dot(a_delta))
    variance = float(torch.trace(psd_solve(h, sigma_aug)))
    if not variance > 0:
        return math.inf, math.nan, math.nan
    if mismatch.cov is None:
        return bias2 / variance, math.nan, math.nan
    ac = psd_solve(h, mismatch.cov)
    tr_ac2 = float((ac * ac.T).sum())
    # d' A C A d overestimates delta' A C A delta by tr((A C)^2): take that off
    var_quad = 4 * max(float(a_delta.dot(mismatch.cov @ a_delta)) - tr_ac2, 0.0) + 2 * tr_ac2
    se = scale * math.sqrt(max(var_quad, 0.0)) / variance
    return bias2 / variance, se, scale * float(torch.trace(ac)) / variance


def alignment(stats: PilotStats, delta_raw: torch.Tensor) -> tuple[float, float]:
    """``rho = <delta, g_phi> / |g_phi|^2`` and the cosine (NaN when a norm is 0)."""
    g_phi = stats.s0.raw_mean - stats.s1.raw_mean
    g2 = float(g_phi.dot(g_phi))
    dot = float(delta_raw.dot(g_phi))
    rho = dot / g2 if g2 > 0 else math.nan
    norms = math.sqrt(g2) * float(delta_raw.norm())
    cosine = dot / norms if norms > 0 else math.nan
    return rho, cosine
