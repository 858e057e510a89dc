"""The test of local symmetry: is imbalance the leading error of the pilot's head?

Under *local symmetry* (Ma & Zhang, arXiv 2601.16120, "TG-VTSS") each class's own
risk gradient vanishes at the balanced optimum, ``g_phi = g0 - g1 = 0``, so the class
imbalance is not the leading error and only a small synthetic size can help.

Two tests of ``g_phi = 0`` are offered (:data:`TESTS`):

``"chi2"`` (the paper's)
    the Wald statistic ``T = g' V^-1 g`` (``V`` the sandwich variance of ``g_phi`` at
    the estimated balanced head) against the ``chi2_df`` quantile.
``"calibrated"`` (the default)
    the same ``g_phi`` and sandwich, with leverage-adjusted scores, measured in a
    stable metric and referred to an F distribution whose degrees of freedom come
    from the data (a Box-type, ANOVA-type test: Box 1954; Brunner, Dette & Munk 1997).

Why not the Wald test: ``V`` is dominated by the minority's score covariance, a
``df x df`` matrix estimated from ``n1`` rows; its inverse is very noisy when ``n1`` is
not large against ``df``, more so because the scores are heavy-tailed (log loss: a
few badly fitted rows carry most of the variance) and because residuals at the
fitted head are shrunk by the head's own fit. With ``df = 20`` the Wald test rejected
a true symmetry 2-10 times as often as ``alpha`` even at 200-500 minority rows
(``benchmarks/results/tg_calibration.md``). An F reference for the Wald statistic
(Hotelling, Nel-van der Merwe) does not repair it, since the inverse's noise is
not Wishart-like.

The calibrated test therefore keeps the paper's ``g_phi`` and sandwich, and changes
what makes the Wald test fragile:

1. *leverage*: each row's residual is divided by ``sqrt(1 - h_i)`` (``HC2``; ``h_i``
   the row's leverage in the balanced fit), since residuals at the fitted head are
   shrunk by about ``1 - h_i`` (exactly so for a linear fit);
2. *a stable metric*: ``g_phi`` is measured in the metric ``W = V_ref^-1``, where
   ``V_ref`` is the sandwich with the *majority's* score covariance in place of
   each class's (``A0 Sigma0 A0' / n0 + A1 Sigma0 A1' / n1``): the Wald test's
   weighting of directions, estimated from the class with many rows, so that its
   noise neither blows up nor follows ``g_phi``'s; ``S = g' W g``, whose mean under
   symmetry is ``tr(W V)`` for the (HC2) sandwich ``V``;
3. *a reference for an estimated variance*: ``Q = S / tr(W V)`` against
   ``F(f, f0)`` (Box 1954; the ANOVA-type statistic of Brunner, Dette & Munk 1997),
   ``f = tr(W V)^2 / tr((W V)^2)`` matching the quadratic form to a scaled
   chi-square and ``f0 = tr(W V)^2 / sum_k tr((W V_k)^2) / (n_k - 1)`` the
   Welch-Satterthwaite degrees of freedom of the estimated ``tr(W V)``, about ``n1``
   when the minority dominates.

With log loss and an intercept, ``g_phi``'s intercept component is ``2 E_P0[p(x)] > 0``,
so local symmetry is only ever found for heads without an intercept (as in the
paper's symmetric mean-shift experiment); with one, the imbalance always biases the
intercept and the test (rightly) rejects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.tg.head_fit import psd_solve
from vtss_lightning.search.tg.head_stats import ClassScores

SYMMETRIC = "local symmetry"
ASYMMETRIC = "local asymmetry"

CALIBRATED = "calibrated"
CHI2 = "chi2"
#: The symmetry tests: the default first.
TESTS = (CALIBRATED, CHI2)
MAX_LEVERAGE = 0.99  # leverages are capped here before the HC2 adjustment
METRIC_RIDGE = 1e-6  # relative ridge on the calibrated test's metric


def a_matrices(s0: ClassScores, s1: ClassScores) -> tuple[torch.Tensor, torch.Tensor]:
    """``A0 = I - G H^-1 / 2`` and ``A1 = -I - G H^-1 / 2`` (``H = (H0 + H1)/2``, ``G = H0 - H1``).

    ``g_phi`` at the estimated head moves by ``A0`` times the majority's mean-score
    noise and by ``A1`` times the minority's.
    """
    h = (s0.hess + s1.hess) / 2
    ghinv = psd_solve(h, s0.hess - s1.hess).T  # G H^-1 = (H^-1 G)' (both symmetric)
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    return eye - 0.5 * ghinv, -eye - 0.5 * ghinv


def wald_statistic(s0: ClassScores, s1: ClassScores) -> float:
    """``T = g' V^-1 g`` with ``g = g0 - g1`` and the sandwich ``V`` of the paper.

    ``V = A0 Sigma0 A0' / n0 + A1 Sigma1 A1' / n1`` accounts for the head being
    estimated (:func:`a_matrices`).
    """
    a0, a1 = a_matrices(s0, s1)
    v = a0 @ s0.cov @ a0.T / s0.n + a1 @ s1.cov @ a1.T / s1.n
    g = s0.mean - s1.mean
    return float(g.dot(psd_solve(v, g)))


@dataclass(frozen=True)
class SymmetryTest:
    """The symmetry test that ran: its statistic, cutoff, p-value and reference.

    ``t_sym`` is always the paper's Wald statistic (``chi2_cutoff`` its ``chi2_df``
    quantile), whichever test decides; ``statistic``, ``cutoff`` and ``p_value`` are
    those of ``test``. ``df`` is the head's number of (identified) parameters;
    ``df_num``/``df_den`` the reference's degrees of freedom (``chi2``: ``df``/``None``).
    ``se`` is a standard error of ``statistic`` (for a Gaussian ``g_phi``, with the
    noncentrality estimated without its noise bias), used to call the evidence weak
    when the statistic is within ``se`` of the cutoff.
    """

    t_sym: float
    cutoff: float
    df: int
    alpha: float
    test: str = CHI2
    statistic: float = math.nan
    p_value: float = math.nan
    df_num: float | None = None
    df_den: float | None = None
    se: float = math.nan
    chi2_cutoff: float = math.nan

    @property
    def symmetric(self) -> bool:
        """Not rejected: the statistic is at or below the cutoff."""
        stat = self.t_sym if math.isnan(self.statistic) else self.statistic
        return stat <= self.cutoff

    @property
    def regime(self) -> str:
        return SYMMETRIC if self.symmetric else ASYMMETRIC

    @property
    def weak(self) -> bool:
        """The statistic lies within one standard error of the cutoff."""
        return bool(abs(self.statistic - self.cutoff) <= self.se)


# ------------------------------------------------------------ the calibrated test
@dataclass(frozen=True)
class BoxStatistic:
    """``Q = S / tr(W V)`` and its reference ``F(f, f0)`` (see the module doc)."""

    q: float
    f: float
    f0: float
    se: float


def hc2_scores(s0: ClassScores, s1: ClassScores) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's scores with the residual divided by ``sqrt(1 - h_i)``.

    ``h_i = w_i mu'_i z_i' H^-1 z_i`` (``w_i = 1 / 2 n_k``, ``H = (H0 + H1) / 2``, the
    balanced fit's Hessian) is row ``i``'s leverage in the balanced head: its residual
    at the fitted head is shrunk by about ``1 - h_i`` against the true head's; the
    leverages add up to the head's rank.
    """
    h = (s0.hess + s1.hess) / 2
    out = []
    for s in (s0, s1):
        z = s.design
        lev = s.curvature * (z * psd_solve(h, z.T).T).sum(1) / (2 * s.n)
        lev = lev.clamp(0.0, MAX_LEVERAGE)
        out.append((s.resid / (1 - lev).sqrt())[:, None] * z)
    return out[0], out[1]


def box_statistic(
    s0: ClassScores,
    s1: ClassScores,
    hc2: bool = True,
    metric: str = "majority",
    fourth_moments: bool = False,
) -> BoxStatistic:
    """The calibrated test's statistic and degrees of freedom (needs ``design`` etc.).

    The defaults are the test; the switches exist to measure what each part does:
    ``hc2=False`` drops the leverage adjustment; ``metric="design"`` measures
    ``g_phi`` in the inverse second moments of the head's design instead of
    ``V_ref^-1``; ``fourth_moments=True`` estimates ``Var(tr(W V))`` from the scores'
    fourth moments instead of the Gaussian (Wishart) formula.
    """
    if s0.design is None or s1.design is None:
        raise VTSSError("the calibrated symmetry test needs the rows' design and residuals")
    a0, a1 = a_matrices(s0, s1)
    chol = torch.linalg.cholesky(_metric_inverse(s0, s1, a0, a1, metric))
    parts, var_tr = [], 0.0
    scores_k = hc2_scores(s0, s1) if hc2 else (s0.z, s1.z)
    for a, scores in zip((a0, a1), scores_k, strict=True):
        n = len(scores)
        centred = scores - scores.mean(0)
        # rows y_i with sum_i y_i y_i' = C^-1 A Sigma A' C^-T / n (C C' = W^-1)
        y = torch.linalg.solve_triangular(chol, a @ centred.T, upper=False).T
        y = y / math.sqrt(n * max(n - 1, 1))
        parts.append(y.T @ y)
        if fourth_moments:
            u = y.pow(2).sum(1)  # row shares of tr(W V_k)
            var_tr += float(n * u.var()) if n > 1 else 0.0
        else:
            var_tr += 2 * float((parts[-1] * parts[-1]).sum()) / max(n - 1, 1)
    v = parts[0] + parts[1]
    g = torch.linalg.solve_triangular(chol, (s0.mean - s1.mean)[:, None], upper=False)[:, 0]
    tr_v, tr_v2 = float(torch.trace(v)), float((v * v).sum())
    if not tr_v > 0:
        q = 0.0 if float(g.abs().max()) == 0 else math.inf
        return BoxStatistic(q, 1.0, math.inf, 0.0)
    f = tr_v**2 / tr_v2
    f0 = 2 * tr_v**2 / var_tr if var_tr > 0 else math.inf
    # Var(g' g) = 2 tr(V^2) + 4 mu' V mu for g ~ N(mu, V); E[g' V g] = mu' V mu + tr(V^2)
    se = math.sqrt(2 * tr_v2 + 4 * max(float(g.dot(v @ g)) - tr_v2, 0.0)) / tr_v
    return BoxStatistic(float(g.dot(g)) / tr_v, f, f0, se)


def _metric_inverse(
    s0: ClassScores, s1: ClassScores, a0: torch.Tensor, a1: torch.Tensor, metric: str
) -> torch.Tensor:
    """``W^-1``: ``V_ref`` (``"majority"``) or the design's second moments (``"design"``).

    A ridge of ``METRIC_RIDGE`` times the mean eigenvalue keeps it invertible when the
    majority has fewer rows than the head has parameters.
    """
    if metric == "majority":
        w_inv = a0 @ s0.cov @ a0.T / s0.n + a1 @ s0.cov @ a1.T / s1.n
    elif metric == "design":
        w_inv = (s0.design.T @ s0.design + s1.design.T @ s1.design) / (s0.n + s1.n)
    else:
        raise VTSSError(f"metric must be 'majority' or 'design', got {metric!r}")
    w_inv = (w_inv + w_inv.T) / 2
    eye = torch.eye(len(w_inv), dtype=w_inv.dtype, device=w_inv.device)
    return w_inv + METRIC_RIDGE * float(torch.trace(w_inv)) / len(w_inv) * eye


def _f_reference(q: float, f: float, f0: float, alpha: float) -> tuple[float, float]:
    """Cutoff and p-value of ``q`` against ``F(f, f0)`` (``f0 = inf``: ``chi2_f / f``)."""
    from scipy.stats import chi2
    from scipy.stats import f as f_dist

    if math.isfinite(f0):
        return float(f_dist.ppf(1 - alpha, f, f0)), float(f_dist.sf(q, f, f0))
    return float(chi2.ppf(1 - alpha, f) / f), float(chi2.sf(q * f, f))


# -------------------------------------------------------------------- driver
def symmetry_test(
    s0: ClassScores, s1: ClassScores, df: int, alpha: float, test: str = CALIBRATED
) -> SymmetryTest:
    """Test ``g_phi = 0`` at level ``alpha`` with ``test`` (one of :data:`TESTS`).

    ``"chi2"`` is the paper's Wald test against ``chi2_df``; ``"calibrated"`` the
    Box-type test of the module doc. The Wald statistic is computed either way.
    """
    from scipy.stats import chi2

    if test not in TESTS:
        raise VTSSError(f"symmetry test must be one of {', '.join(TESTS)}, got {test!r}")
    t_sym = wald_statistic(s0, s1)
    chi2_cutoff = float(chi2.ppf(1 - alpha, df))
    common = {"df": int(df), "alpha": float(alpha), "test": test, "chi2_cutoff": chi2_cutoff}
    if test == CHI2:
        se = math.sqrt(2 * df + 4 * max(t_sym - df, 0.0)) if math.isfinite(t_sym) else math.nan
        return SymmetryTest(
            t_sym, chi2_cutoff, statistic=t_sym, p_value=float(chi2.sf(t_sym, df)),
            df_num=float(df), df_den=None, se=se, **common,
        )  # fmt: skip
    box = box_statistic(s0, s1)
    cutoff, p_value = _f_reference(box.q, box.f, box.f0, alpha)
    return SymmetryTest(
        t_sym, cutoff, statistic=box.q, p_value=p_value, df_num=box.f,
        df_den=box.f0 if math.isfinite(box.f0) else None, se=box.se, **common,
    )  # fmt: skip
