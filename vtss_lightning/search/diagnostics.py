"""TG-VTSS diagnostics: is the task locally symmetric, and how biased is the generator?

The theory-guided refinement of VTSS (``reference/PAPER.md``, "TG-VTSS") replaces
the fixed ratio grid by one chosen from two statistics of a pilot model trained on
the real training rows:

1. a Wald test of *local symmetry* (``g_phi = 0``: each class's own risk gradient
   vanishes at the balanced optimum, so imbalance is not the leading error and only
   a small synthetic size can help), and
2. when the test rejects, a cross-fitted *generator-quality score* (GQS, roughly
   squared bias over variance at full balance) and the alignment ``rho`` of the
   generator's mismatch with the class shift, which give the theory's best size
   ``n~* = gap / (1 - 2 rho)``.

Everything works on the pilot's *last* ``nn.Linear`` layer (penultimate features plus
an intercept), as the reference does for non-linear models, so any torch classifier
is supported; for ``TabularClassifier(hidden_dims=[])`` the features are the inputs
and the statistics are those of exact logistic regression. Binary tasks only.

Only the active split's real *training* rows (and synthetic rows from generators
fitted on them) are ever read; validation and test rows are not touched.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.head_stats import (
    balanced_weights,
    class_scores,
    fit_balanced_logistic,
    fit_head,
    head_features,
    head_layer,
    pilot_head_loss,
    psd_solve,
    wald_statistic,
    whitening_basis,
)

__all__ = [
    "ASYMMETRIC",
    "BIASED",
    "REALISTIC",
    "SYMMETRIC",
    "TGDiagnostics",
    "fit_balanced_logistic",
    "head_features",
    "head_layer",
    "tg_candidate_ratios",
    "tg_diagnostics",
]

SYMMETRIC = "local symmetry"
ASYMMETRIC = "local asymmetry"
REALISTIC = "realistic"
BIASED = "biased"

#: Grid under local symmetry: nothing or a little (shares of the gap).
SYMMETRIC_RATIOS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2)
#: Multipliers around full balance and around the theory target (realistic generator).
LOCAL_MULTIPLIERS: tuple[float, ...] = tuple(round(0.8 + 0.05 * i, 4) for i in range(9))
#: Wide grid for a biased generator: 0, 0.05, ..., 2.00.
WIDE_RATIOS: tuple[float, ...] = tuple(round(0.05 * i, 4) for i in range(41))

_MIN_SYNTHETIC = 200
_SYNTHETIC_PER_HELD_OUT = 5


# --------------------------------------------------------------------------- result
@dataclass
class TGDiagnostics:
    """What the TG-VTSS pre-analysis found, and the grid it implies.

    Attributes
    ----------
    regime
        ``"local symmetry"`` (Wald statistic at or below the cutoff) or
        ``"local asymmetry"``.
    generator_quality
        ``"realistic"`` (GQS <= tau) or ``"biased"``; ``None`` under local symmetry,
        where the GQS is not needed (and not computed).
    t_sym, cutoff, df, alpha
        Wald statistic ``g_phi' V^-1 g_phi``, the chi-square quantile it is compared
        with, its degrees of freedom (parameters of the tested head) and the level.
    gqs, cosine, rho
        Generator-quality score, cosine and projection coefficient of the mismatch
        ``delta`` on ``g_phi``; ``None`` under local symmetry.
    theory_target
        ``n~* = gap / (1 - 2 rho)`` in synthetic rows; ``inf`` when ``rho >= 1/2`` (no
        finite size cancels the bias), ``None`` under local symmetry.
    gap
        ``n0 - n1`` on the active split's training rows.
    candidate_ratios
        The TG grid as shares of the gap, sorted: what the search engine consumes.
    tau
        GQS threshold between a realistic and a biased generator.
    notes
        Caveats met on the way (rank-deficient features, a near-separable pilot, ...).
    """

    regime: str
    generator_quality: str | None
    t_sym: float
    cutoff: float
    df: int
    alpha: float
    gqs: float | None
    cosine: float | None
    rho: float | None
    theory_target: float | None
    gap: int
    candidate_ratios: list[float]
    tau: float = 10.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (non-finite numbers become ``None``).

        Keys: the attributes, plus ``"candidates"``: the grid in rows,
        ``[{"ratio": r, "rows": round(r * gap)}, ...]``.
        """
        return {
            "regime": self.regime,
            "generator_quality": self.generator_quality,
            "t_sym": _finite(self.t_sym),
            "cutoff": _finite(self.cutoff),
            "df": int(self.df),
            "alpha": _finite(self.alpha),
            "gqs": _finite(self.gqs),
            "cosine": _finite(self.cosine),
            "rho": _finite(self.rho),
            "theory_target": _finite(self.theory_target),
            "gap": int(self.gap),
            "tau": _finite(self.tau),
            "candidate_ratios": [float(r) for r in self.candidate_ratios],
            "candidates": [
                {"ratio": float(r), "rows": int(math.floor(r * self.gap + 0.5))}
                for r in self.candidate_ratios
            ],
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """Two or three lines for logs: regime, generator quality and target, grid."""
        rel = "<=" if self.regime == SYMMETRIC else ">"
        lines = [
            f"TG-VTSS: {self.regime} (Wald T = {self.t_sym:.4g} {rel} chi2_{self.df} "
            f"cutoff {self.cutoff:.4g} at alpha = {self.alpha:g})"
        ]
        if self.regime == SYMMETRIC:
            lines.append("imbalance is not the leading error: trying no or few synthetic rows")
        else:
            if self.theory_target is None:
                target = "theory target undefined"
            elif math.isfinite(self.theory_target):
                share = self.theory_target / self.gap if self.gap else math.nan
                target = f"theory target n~* = {self.theory_target:,.0f} rows ({share:.3g} x gap {self.gap:,})"
            else:
                target = "rho >= 1/2: no finite size cancels the generator's bias"
            lines.append(
                f"generator {self.generator_quality} (GQS = {self.gqs:.4g} "
                f"{'<=' if self.generator_quality == REALISTIC else '>'} tau = {self.tau:g}; "
                f"rho = {self.rho:.3g}, cos = {self.cosine:.3g}); {target}"
            )
        r = self.candidate_ratios
        lines.append(f"grid: {len(r)} ratios of the gap from {r[0]:g} to {r[-1]:g}")
        return "\n".join(lines)


def _finite(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def tg_candidate_ratios(
    regime: str, generator_quality: str | None, target_share: float | None = None
) -> list[float]:
    """The TG grid (shares of the gap) for a regime, quality and ``n~*/gap``.

    Local symmetry: ``{0, .05, .10, .15, .20}``. Realistic generator:
    ``{0.80, ..., 1.20}`` around full balance, united with the same multipliers of
    ``target_share`` when it is finite and positive (0 is not added). Biased
    generator: ``{0, 0.05, ..., 2.00}``.
    """
    if regime == SYMMETRIC:
        return list(SYMMETRIC_RATIOS)
    if generator_quality == BIASED:
        return list(WIDE_RATIOS)
    grid = set(LOCAL_MULTIPLIERS)
    if target_share is not None and math.isfinite(target_share) and target_share > 0:
        grid |= {round(m * target_share, 4) for m in LOCAL_MULTIPLIERS}
    return sorted(grid)


# ------------------------------------------------------------------ generator
@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for the generators, restoring the RNGs after."""
    from pytorch_lightning.utilities.seed import isolate_rng

    with isolate_rng():
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------- driver
def tg_diagnostics(
    pilot: nn.Module,
    dm,
    alpha: float = 0.05,
    tau: float = 10.0,
    folds: int = 3,
    seed: int = 0,
) -> TGDiagnostics:
    """Symmetry test, generator-quality score and TG grid for a trained pilot.

    Parameters
    ----------
    pilot
        A classifier trained on the real training rows (any ``nn.Module`` whose
        output layer is an ``nn.Linear``). Only its penultimate features are used;
        the head is refitted here with balanced weights, so the pilot's own head and
        its training objective do not matter. It is put in eval mode for the
        forward passes and restored after.
    dm
        A set-up :class:`SyntheticAugmentationDataModule` with two classes; its
        active split's real training rows and its generator template are used.
    alpha
        Level of the Wald test of local symmetry.
    tau
        GQS threshold: ``GQS <= tau`` is a realistic generator.
    folds
        Cross-fitting folds over the minority training rows for the GQS.
    seed
        Seeds the fold assignment, the generator fits and draws.

    Procedure and readings of PAPER.md
    ----------------------------------
    * The head's design is ``x~ = (phi(x), 1)``; the ``1`` is appended only when the
      last ``nn.Linear`` has a bias (its parameters are what is tested, ``p`` of
      them). With log loss and an intercept, ``g_phi``'s intercept component is
      ``2 E_P0[p(x)] > 0``, so local symmetry is only ever found for heads without
      an intercept (as in the paper's symmetric mean-shift experiment); with one,
      the imbalance always biases the intercept and the test (rightly) rejects.
    * ``theta`` minimises the balanced-weighted loss of the pilot's kind (weights
      ``1/2n0``, ``1/2n1``, ridge 1e-6): log loss, or for pilots trained with
      ``loss="mse"`` the squared loss on the minority indicator. So ``g0 + g1 = 0``
      at ``theta``. Scores are the loss gradients ``(mu - y) x~`` (``mu`` = sigmoid
      of the head's output for log loss, the output itself for squared loss);
      ``g_k`` their class means, ``Sigma_k`` their centred class covariances (divisor
      ``n_k - 1``), ``H_k`` the class-mean Hessians (``p (1 - p) x~ x~'`` for log
      loss, ``x~ x~'`` for squared loss), all at ``theta``.
    * ``df`` is the rank of the design (``= p`` unless features are constant or
      collinear, e.g. dead ReLU units; the statistics then live on its row space).
    * Class 1 in the formulas is the class with fewer training rows, whatever its
      label; ``n0``, ``n1`` and ``gap = n0 - n1`` are real training counts of the
      active split.
    * GQS: per fold, ``delta_f`` = mean score of ``m`` synthetic rows (label 1) from a
      generator fitted on the other folds' minority rows, minus the mean score of the
      held-out minority rows (``m = max(200, 5 x held-out rows)``); ``delta`` and
      ``Sigma_syn`` are the averages of the per-fold mismatch and synthetic score
      covariance over folds. Scores use the ``theta`` fitted on all training rows.
    * ``rho = <delta, g_phi> / |g_phi|^2`` and the cosine are taken in the head's own
      coordinates (penultimate features and intercept, as PAPER.md writes them);
      unlike ``T`` and the GQS they are not invariant to a reparametrisation of the
      head.
    """
    if not 0 < alpha < 1:
        raise VTSSError(f"alpha must be in (0, 1), got {alpha}")
    if not tau > 0:
        raise VTSSError(f"tau must be > 0, got {tau}")
    if int(folds) != folds or folds < 2:
        raise VTSSError(f"folds must be an integer >= 2, got {folds}")
    split = getattr(dm, "active", None)
    if split is None:
        raise VTSSError("the DataModule is not set up yet; call setup() before TG-VTSS")
    if dm.num_classes != 2:
        raise VTSSError(
            f'grid="tg" supports binary tasks only; this task has {dm.num_classes} classes '
            "(use a ratio grid)"
        )
    from scipy.stats import chi2

    data_device = split.x_train.device
    device = torch.device("cpu") if data_device.type == "mps" else data_device  # no float64
    y = split.y_train.to(device)
    counts = torch.bincount(y, minlength=2).tolist()
    minority = 1 if counts[1] <= counts[0] else 0
    n0, n1 = counts[1 - minority], counts[minority]
    gap = n0 - n1
    if n1 < max(2, folds):
        raise VTSSError(f"TG-VTSS needs at least {max(2, folds)} minority training rows, got {n1}")
    yb = (y == minority).to(torch.float64)
    loss = pilot_head_loss(pilot)
    notes: list[str] = []

    with _seeded(seed):
        xt = head_features(pilot, split.x_train, device=device)
        basis = whitening_basis(xt)
        df = int(basis.shape[1])
        if df < xt.shape[1]:
            notes.append(
                f"the head's design has rank {df} < {xt.shape[1]} parameters (constant or "
                "collinear features); the test uses its row space"
            )
        theta_z = fit_head(xt @ basis, yb, balanced_weights(yb), loss)
        is0, is1 = yb == 0, yb == 1
        s0 = class_scores(xt[is0], basis, theta_z, 0.0, hessian=True, loss=loss)
        s1 = class_scores(xt[is1], basis, theta_z, 1.0, hessian=True, loss=loss)
        prob = torch.sigmoid(xt @ basis @ theta_z)
        if loss == "log" and float(prob[is0].max()) < 1e-3 and float(prob[is1].min()) > 1 - 1e-3:
            notes.append(
                "the classes are (nearly) separable in the pilot's features; the "
                "statistics below are unreliable"
            )
        t_sym = wald_statistic(s0, s1)
        cutoff = float(chi2.ppf(1 - alpha, df))

        if t_sym <= cutoff or gap <= 0:
            if gap <= 0:
                notes.append("the classes are balanced (gap 0): no synthetic rows are needed")
            return TGDiagnostics(
                regime=SYMMETRIC if t_sym <= cutoff else ASYMMETRIC,
                generator_quality=None,
                t_sym=t_sym,
                cutoff=cutoff,
                df=df,
                alpha=float(alpha),
                gqs=None,
                cosine=None,
                rho=None,
                theory_target=None,
                gap=gap,
                candidate_ratios=list(SYMMETRIC_RATIOS),
                tau=float(tau),
                notes=notes,
            )

        # ---- cross-fitted generator quality over the minority training rows
        positions = torch.nonzero(is1).flatten().cpu().numpy()
        parts = np.array_split(np.random.default_rng(seed).permutation(len(positions)), folds)
        delta_z, delta_raw, cov_syn = [], [], []
        for f, held in enumerate(parts):
            rest = np.concatenate([parts[j] for j in range(folds) if j != f])
            generator = dm.fit_generator(
                split, np.sort(positions[rest]), seed * 1009 + f, "TG-VTSS cross-fitting fold"
            )
            m = max(_MIN_SYNTHETIC, _SYNTHETIC_PER_HELD_OUT * len(held))
            synthetic = dm.sample_encoded(split, generator, m, seed * 7919 + f)
            syn_x = head_features(pilot, synthetic, device)
            syn = class_scores(syn_x, basis, theta_z, 1.0, False, loss)
            held_rows = torch.as_tensor(np.sort(positions[held]), device=xt.device)
            real = class_scores(xt[held_rows], basis, theta_z, 1.0, False, loss)
            delta_z.append(syn.mean - real.mean)
            delta_raw.append(syn.raw_mean - real.raw_mean)
            cov_syn.append(syn.cov)
        delta = torch.stack(delta_z).mean(0)
        sigma_syn = torch.stack(cov_syn).mean(0)
        h = (s0.hess + s1.hess) / 2
        sigma_aug = 0.5 * s0.cov + n1 / (2 * n0) * s1.cov + (n0 - n1) / (2 * n0) * sigma_syn
        bias2 = (n0 - n1) ** 2 / (2 * n0) * float(delta.dot(psd_solve(h, delta)))
        variance = float(torch.trace(psd_solve(h, sigma_aug)))
        gqs = bias2 / variance if variance > 0 else math.inf

        g_phi = s0.raw_mean - s1.raw_mean
        d_raw = torch.stack(delta_raw).mean(0)
        g2 = float(g_phi.dot(g_phi))
        dot = float(d_raw.dot(g_phi))
        rho = dot / g2 if g2 > 0 else math.nan
        norms = math.sqrt(g2) * float(d_raw.norm())
        cosine = dot / norms if norms > 0 else math.nan

    if math.isnan(rho):
        target = math.nan
    elif rho < 0.5:
        target = gap / (1 - 2 * rho)
    else:
        target = math.inf
    quality = REALISTIC if gqs <= tau else BIASED
    share = target / gap if math.isfinite(target) else None
    return TGDiagnostics(
        regime=ASYMMETRIC,
        generator_quality=quality,
        t_sym=t_sym,
        cutoff=cutoff,
        df=df,
        alpha=float(alpha),
        gqs=gqs,
        cosine=cosine,
        rho=rho,
        theory_target=target,
        gap=gap,
        candidate_ratios=tg_candidate_ratios(ASYMMETRIC, quality, share),
        tau=float(tau),
        notes=notes,
    )
