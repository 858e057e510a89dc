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

import copy
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from vtss_lightning.data.datamodule import _as_frame, _take
from vtss_lightning.errors import VTSSError

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

_RANK_TOL = 1e-10  # eigenvalues of the normalised Gram matrix below this (relative) are dropped
_ROWS_PER_FORWARD = 8192
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


# ------------------------------------------------------------------- pilot's head
def head_layer(pilot: nn.Module) -> nn.Linear:
    """The pilot's output layer: its last ``nn.Linear`` (in ``modules()`` order)."""
    layers = [m for m in pilot.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise VTSSError(
            f"TG-VTSS needs a classifier whose output layer is an nn.Linear; "
            f"{type(pilot).__name__} has none"
        )
    return layers[-1]


def head_features(
    pilot: nn.Module,
    x: torch.Tensor,
    device: torch.device | str | None = None,
    batch_size: int = _ROWS_PER_FORWARD,
) -> torch.Tensor:
    """Penultimate features plus intercept, ``(n, p)`` float64: the head's design.

    The input of the pilot's last ``nn.Linear`` is captured with a forward hook
    while the pilot runs in eval mode (batched, no grad); a column of ones is
    appended when that layer has a bias. ``device`` (default: ``x``'s) is where the
    result lives; the pilot runs on its own device.
    """
    layer = head_layer(pilot)
    out_device = torch.device(device) if device is not None else x.device
    params = list(pilot.parameters())
    run_device = params[0].device if params else x.device
    floats = [p.dtype for p in params if p.is_floating_point()]
    run_dtype = floats[0] if floats and x.is_floating_point() else x.dtype
    captured: list[torch.Tensor] = []

    def hook(_module, inputs, _output):
        captured.append(inputs[0].detach())

    handle = layer.register_forward_hook(hook)
    was_training = pilot.training
    pilot.eval()
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                batch = x[start : start + batch_size].to(run_device, run_dtype)
                captured.clear()
                pilot(batch)
                if not captured:
                    raise VTSSError(
                        f"the last nn.Linear of {type(pilot).__name__} is not used in its "
                        "forward pass; TG-VTSS reads its input as the penultimate features"
                    )
                phi = captured[-1]
                if phi.ndim != 2 or phi.shape[0] != len(batch):
                    raise VTSSError(
                        f"the input of {type(pilot).__name__}'s last nn.Linear has shape "
                        f"{tuple(phi.shape)}; TG-VTSS needs one feature vector per row"
                    )
                chunks.append(phi.to(out_device).to(torch.float64))  # MPS has no float64
    finally:
        handle.remove()
        pilot.train(was_training)
    width = layer.in_features
    phi = torch.cat(chunks) if chunks else torch.zeros(0, width, dtype=torch.float64)
    phi = phi.to(out_device)
    if layer.bias is not None:
        phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype, device=phi.device)], 1)
    if not torch.isfinite(phi).all():
        raise VTSSError("the pilot's penultimate features contain NaN or inf values")
    return phi


# ------------------------------------------------------------ linear algebra
def _basis(xt: torch.Tensor) -> torch.Tensor:
    """``(p, r)`` map to whitened coordinates ``z = xt @ B`` (unit second moments).

    Columns are first scaled to unit RMS, then rotated onto the eigenvectors of their
    Gram matrix; directions with (relative) eigenvalue below ``_RANK_TOL`` (dead units,
    constant or collinear features) are dropped, so ``r`` is the design's rank. The
    Wald statistic and the GQS are invariant under this reparametrisation; it only
    makes the fit and the solves well conditioned.
    """
    rms = xt.pow(2).mean(0).sqrt()
    scale = torch.where(rms > 0, 1.0 / rms, torch.ones_like(rms))
    xs = xt * scale
    gram = xs.T @ xs / len(xs)
    evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
    keep = evals > evals.max().clamp_min(1e-300) * _RANK_TOL
    return scale[:, None] * evecs[:, keep] * evals[keep].rsqrt()


def _psd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^-1 b`` for symmetric positive (semi-)definite ``a``: Cholesky, else pinv."""
    a = (a + a.T) / 2
    vector = b.ndim == 1
    rhs = b[:, None] if vector else b
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        out = torch.cholesky_solve(rhs, chol)
    else:
        out = torch.linalg.pinv(a, hermitian=True) @ rhs
    return out[:, 0] if vector else out


def _balanced_objective(
    z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, theta: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    eta = z @ theta
    loss = (w * (F.softplus(eta) - yb * eta)).sum() + 0.5 * ridge * theta.dot(theta)
    grad = z.T @ (w * (torch.sigmoid(eta) - yb)) + ridge * theta
    return loss, grad


def _fit_logistic(
    z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    """Weighted logistic regression in (whitened) coordinates ``z``: L-BFGS, then Newton.

    L-BFGS with a strong-Wolfe line search does the work; up to three damped Newton
    steps then polish the optimum so that the balanced gradient condition holds to
    machine precision.
    """
    theta = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        loss, grad = _balanced_objective(z, yb, w, theta.detach(), ridge)
        theta.grad = grad
        return loss

    opt.step(closure)
    est = theta.detach().clone()
    eye = torch.eye(len(est), dtype=z.dtype, device=z.device)
    for _ in range(3):
        loss, grad = _balanced_objective(z, yb, w, est, ridge)
        if float(grad.abs().max()) < 1e-13:
            break
        prob = torch.sigmoid(z @ est)
        hess = (z * (w * prob * (1 - prob))[:, None]).T @ z + ridge * eye
        step = _psd_solve(hess, grad)
        t = 1.0
        while t > 1e-4:
            cand = est - t * step
            if float(_balanced_objective(z, yb, w, cand, ridge)[0]) <= float(loss):
                est = cand
                break
            t /= 2
        else:
            break
    return est


def fit_balanced_logistic(
    features: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    """Balanced-weighted binary logistic regression (weights ``1/2n0``, ``1/2n1``).

    ``features`` is the head's design (e.g. :func:`head_features`, intercept column
    included), ``y`` is 1 for the minority and 0 for the majority. Fitted in float64
    with L-BFGS (strong Wolfe) and a ridge of ``ridge`` in whitened coordinates;
    returns the coefficients in the coordinates of ``features`` (a minimum-norm-like
    solution when the design is rank deficient).
    """
    xt = features.to(torch.float64)
    yb = y.to(xt.device, torch.float64)
    basis = _basis(xt)
    theta_z = _fit_logistic(xt @ basis, yb, _balanced_weights(yb), ridge)
    return basis @ theta_z


def _balanced_weights(yb: torch.Tensor) -> torch.Tensor:
    n1 = yb.sum()
    n0 = len(yb) - n1
    return torch.where(yb > 0, 0.5 / n1, 0.5 / n0)


@dataclass
class _Scores:
    """Per-row log-loss scores ``(p - y) x~`` of one set of rows at the pilot head."""

    z: torch.Tensor  # (n, r) whitened coordinates
    raw_mean: torch.Tensor  # (p,) mean score in the head's own coordinates
    hess: torch.Tensor | None  # (r, r) mean p(1-p) z z'

    @property
    def n(self) -> int:
        return len(self.z)

    @property
    def mean(self) -> torch.Tensor:
        return self.z.mean(0)

    @property
    def cov(self) -> torch.Tensor:
        c = self.z - self.mean
        return c.T @ c / max(self.n - 1, 1)


def _scores(
    xt: torch.Tensor, basis: torch.Tensor, theta_z: torch.Tensor, label: float, hessian: bool
) -> _Scores:
    z = xt @ basis
    prob = torch.sigmoid(z @ theta_z)
    resid = prob - label
    hess = (z * (prob * (1 - prob))[:, None]).T @ z / len(z) if hessian else None
    return _Scores(resid[:, None] * z, (resid[:, None] * xt).mean(0), hess)


def _wald(s0: _Scores, s1: _Scores) -> float:
    """``T = g' V^-1 g`` with ``g = g0 - g1`` and the sandwich ``V`` of PAPER.md."""
    h = (s0.hess + s1.hess) / 2
    ghinv = _psd_solve(h, s0.hess - s1.hess).T  # G H^-1 = (H^-1 G)' (both symmetric)
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    a0 = eye - 0.5 * ghinv
    a1 = -eye - 0.5 * ghinv
    v = a0 @ s0.cov @ a0.T / s0.n + a1 @ s1.cov @ a1.T / s1.n
    g = s0.mean - s1.mean
    return float(g.dot(_psd_solve(v, g)))


# ------------------------------------------------------------------ generator
def _fit_fold_generator(dm, split, positions: np.ndarray, seed: int, device: torch.device):
    """A fresh copy of ``dm.generator`` fitted on some training rows (as the DataModule)."""
    generator = copy.deepcopy(dm.generator).to(device)
    if generator.input_kind == "frame":
        rows = _as_frame(_take(dm._x_dev, split.train_index[positions]))
    else:
        rows = split.x_train[torch.as_tensor(positions, device=split.x_train.device)]
    if len(rows) < generator.min_rows:
        raise VTSSError(
            f"TG-VTSS fits {generator.name} on {len(rows)} minority rows per fold; it needs at "
            f"least {generator.min_rows}: use fewer folds or more data"
        )
    return generator.fit(rows, split.preprocessor.schema, seed=seed)


def _sample_encoded(split, generator, m: int, seed: int, device: torch.device) -> torch.Tensor:
    rows = generator.sample(m, generator_seed=seed)
    if isinstance(rows, pd.DataFrame):
        rows = split.preprocessor.transform(rows)
    rows = torch.as_tensor(rows, dtype=torch.float32).reshape(m, -1).to(device)
    width = split.x_train.shape[1]
    if rows.shape != (m, width):
        raise VTSSError(
            f"{generator.name} returned rows of shape {tuple(rows.shape)}, expected ({m}, {width})"
        )
    if not torch.isfinite(rows).all():
        raise VTSSError(f"{generator.name} returned non-finite values")
    return rows


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
    * ``theta`` maximises the balanced-weighted log likelihood (weights ``1/2n0``,
      ``1/2n1``, ridge 1e-6), so ``g0 + g1 = 0`` at ``theta``. Scores are the log-loss
      gradients ``(p - y) x~``; ``g_k`` their class means, ``Sigma_k`` their centred
      class covariances (divisor ``n_k - 1``), ``H_k`` the class-mean Hessians
      ``p (1 - p) x~ x~'``, all at ``theta``.
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
    notes: list[str] = []

    with _seeded(seed):
        xt = head_features(pilot, split.x_train, device=device)
        basis = _basis(xt)
        df = int(basis.shape[1])
        if df < xt.shape[1]:
            notes.append(
                f"the head's design has rank {df} < {xt.shape[1]} parameters (constant or "
                "collinear features); the test uses its row space"
            )
        theta_z = _fit_logistic(xt @ basis, yb, _balanced_weights(yb))
        is0, is1 = yb == 0, yb == 1
        s0 = _scores(xt[is0], basis, theta_z, 0.0, hessian=True)
        s1 = _scores(xt[is1], basis, theta_z, 1.0, hessian=True)
        prob = torch.sigmoid(xt @ basis @ theta_z)
        if float(prob[is0].max()) < 1e-3 and float(prob[is1].min()) > 1 - 1e-3:
            notes.append(
                "the classes are (nearly) separable in the pilot's features; the "
                "statistics below are unreliable"
            )
        t_sym = _wald(s0, s1)
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
            generator = _fit_fold_generator(
                dm, split, np.sort(positions[rest]), seed * 1009 + f, data_device
            )
            m = max(_MIN_SYNTHETIC, _SYNTHETIC_PER_HELD_OUT * len(held))
            synthetic = _sample_encoded(split, generator, m, seed * 7919 + f, data_device)
            syn = _scores(head_features(pilot, synthetic, device), basis, theta_z, 1.0, False)
            held_rows = torch.as_tensor(np.sort(positions[held]), device=xt.device)
            real = _scores(xt[held_rows], basis, theta_z, 1.0, False)
            delta_z.append(syn.mean - real.mean)
            delta_raw.append(syn.raw_mean - real.raw_mean)
            cov_syn.append(syn.cov)
        delta = torch.stack(delta_z).mean(0)
        sigma_syn = torch.stack(cov_syn).mean(0)
        h = (s0.hess + s1.hess) / 2
        sigma_aug = 0.5 * s0.cov + n1 / (2 * n0) * s1.cov + (n0 - n1) / (2 * n0) * sigma_syn
        bias2 = (n0 - n1) ** 2 / (2 * n0) * float(delta.dot(_psd_solve(h, delta)))
        variance = float(torch.trace(_psd_solve(h, sigma_aug)))
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
