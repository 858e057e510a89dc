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

    def verdict(self, tau: float) -> str:
        """``"realistic"`` when ``GQS <= tau``, else ``"biased"`` (NaN counts as biased)."""
        return REALISTIC if self.gqs <= tau else BIASED


@dataclass(frozen=True)
class Mismatch:
    """Fold averages of the synthetic-minus-real mean score and the synthetic covariance."""

    delta: torch.Tensor  # (r,) whitened coordinates
    delta_raw: torch.Tensor  # (p,) the head's own coordinates
    sigma_syn: torch.Tensor  # (r, r)


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
    rho, cosine = alignment(stats, mismatch.delta_raw)
    return GeneratorQuality(quality_score(stats, mismatch, n0, n1), rho, cosine)


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
    parts = np.array_split(np.random.default_rng(seed).permutation(len(positions)), folds)
    delta_z, delta_raw, cov_syn = [], [], []
    for f, held in enumerate(parts):
        rest = np.concatenate([parts[j] for j in range(folds) if j != f])
        syn = _synthetic_scores(
            pilot, dm, split, stats, np.sort(positions[rest]), len(held), f, seed
        )
        held_rows = torch.as_tensor(np.sort(positions[held]), device=stats.xt.device)
        real = stats.scores(stats.xt[held_rows], 1.0)
        delta_z.append(syn.mean - real.mean)
        delta_raw.append(syn.raw_mean - real.raw_mean)
        cov_syn.append(syn.cov)
    return Mismatch(
        torch.stack(delta_z).mean(0), torch.stack(delta_raw).mean(0), torch.stack(cov_syn).mean(0)
    )


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
    m = max(MIN_SYNTHETIC, SYNTHETIC_PER_HELD_OUT * held_out)
    draw_seed = derive_seed(seed, GENERATOR_SAMPLE_SALT, fold)
    synthetic = builder.sample(split, generator, m, draw_seed, "")
    return stats.scores(head_features(pilot, synthetic, stats.xt.device), 1.0)


def quality_score(stats: PilotStats, mismatch: Mismatch, n0: int, n1: int) -> float:
    """``GQS = bias^2 / variance`` of the balanced head at full balance (``gap`` rows).

    The bias is ``gap^2 / 2n0 * delta' H^-1 delta``; the variance is the trace of
    ``H^-1 Sigma_aug``, with ``Sigma_aug`` the score covariance of the augmented
    minority (real and synthetic rows in their shares) and the majority.
    """
    s0, s1 = stats.s0, stats.s1
    delta = mismatch.delta
    h = (s0.hess + s1.hess) / 2
    sigma_aug = 0.5 * s0.cov + n1 / (2 * n0) * s1.cov + (n0 - n1) / (2 * n0) * mismatch.sigma_syn
    bias2 = (n0 - n1) ** 2 / (2 * n0) * float(delta.dot(psd_solve(h, delta)))
    variance = float(torch.trace(psd_solve(h, sigma_aug)))
    return bias2 / variance if variance > 0 else math.inf


def alignment(stats: PilotStats, delta_raw: torch.Tensor) -> tuple[float, float]:
    """``rho = <delta, g_phi> / |g_phi|^2`` and the cosine (NaN when a norm is 0)."""
    g_phi = stats.s0.raw_mean - stats.s1.raw_mean
    g2 = float(g_phi.dot(g_phi))
    dot = float(delta_raw.dot(g_phi))
    rho = dot / g2 if g2 > 0 else math.nan
    norms = math.sqrt(g2) * float(delta_raw.norm())
    cosine = dot / norms if norms > 0 else math.nan
    return rho, cosine
