"""The Wald test of local symmetry: is imbalance the leading error of the pilot's head?

Under *local symmetry* (Ma & Zhang, arXiv 2601.16120, "TG-VTSS") each class's own
risk gradient vanishes at the balanced optimum, ``g_phi = g0 - g1 = 0``, so the class
imbalance is not the leading error and only a small synthetic size can help. The test
compares ``T = g_phi' V^-1 g_phi`` (``V`` the sandwich variance of ``g_phi`` at the
estimated balanced head) with a chi-square quantile on the head's ``df`` parameters.

With log loss and an intercept, ``g_phi``'s intercept component is ``2 E_P0[p(x)] > 0``,
so local symmetry is only ever found for heads without an intercept (as in the
paper's symmetric mean-shift experiment); with one, the imbalance always biases the
intercept and the test (rightly) rejects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtss_lightning.search.tg.head_fit import psd_solve
from vtss_lightning.search.tg.head_stats import ClassScores

SYMMETRIC = "local symmetry"
ASYMMETRIC = "local asymmetry"


def wald_statistic(s0: ClassScores, s1: ClassScores) -> float:
    """``T = g' V^-1 g`` with ``g = g0 - g1`` and the sandwich ``V`` of the paper.

    ``V`` accounts for the head being estimated: with ``H = (H0 + H1)/2`` and
    ``G = H0 - H1``, ``g`` moves by ``(I - G H^-1 / 2)`` times the majority's score
    noise and by ``(-I - G H^-1 / 2)`` times the minority's.
    """
    h = (s0.hess + s1.hess) / 2
    ghinv = psd_solve(h, s0.hess - s1.hess).T  # G H^-1 = (H^-1 G)' (both symmetric)
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    a0 = eye - 0.5 * ghinv
    a1 = -eye - 0.5 * ghinv
    v = a0 @ s0.cov @ a0.T / s0.n + a1 @ s1.cov @ a1.T / s1.n
    g = s0.mean - s1.mean
    return float(g.dot(psd_solve(v, g)))


@dataclass(frozen=True)
class SymmetryTest:
    """Wald statistic, its chi-square cutoff, degrees of freedom and level."""

    t_sym: float
    cutoff: float
    df: int
    alpha: float

    @property
    def symmetric(self) -> bool:
        """Not rejected: the statistic is at or below the cutoff."""
        return self.t_sym <= self.cutoff

    @property
    def regime(self) -> str:
        return SYMMETRIC if self.symmetric else ASYMMETRIC


def symmetry_test(s0: ClassScores, s1: ClassScores, df: int, alpha: float) -> SymmetryTest:
    """Test ``g_phi = 0`` at level ``alpha`` against ``chi2_df``."""
    from scipy.stats import chi2

    t_sym = wald_statistic(s0, s1)
    cutoff = float(chi2.ppf(1 - alpha, df))
    return SymmetryTest(t_sym, cutoff, int(df), float(alpha))
