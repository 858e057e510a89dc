"""The balanced head of TG-VTSS: whitened coordinates, solves and the refitted last layer.

The diagnostics (Ma & Zhang, arXiv 2601.16120, "TG-VTSS") are evaluated at the
*balanced* optimum of the pilot's output layer: the head that minimises the
balanced-weighted loss (weights ``1/2n0``, ``1/2n1``), so that ``g0 + g1 = 0`` there.
This module refits that head in float64, for the log loss (L-BFGS, then Newton) or
the squared loss (closed form), in well-conditioned whitened coordinates.

The squared loss comes in two target codings. ``"squared"`` regresses on the 0/1
labels (``TabularClassifier(loss="mse")``); ``"squared_pm"`` on ``t = 2y - 1 in
{-1, +1}``, the coding of the paper's squared-loss experiments. With an intercept the
two give the same test and score (the scores differ by a factor 2), but without one
they are different problems: in the mean-shift design ``X = -+mu + xi`` of experiment
5 the +-1 head is locally symmetric and the 0/1 head is not (its majority risk is
minimised at ``w = 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vtss_lightning.errors import VTSSError

#: Losses the head can be refitted with: the pilot's own (log loss, or squared loss
#: for ``TabularClassifier(loss="mse")``), or the squared loss on +-1 targets.
HEAD_LOSSES = ("log", "squared", "squared_pm")
SQUARED_LOSSES = ("squared", "squared_pm")
RANK_TOL = 1e-10  # eigenvalues of the normalised Gram matrix below this (relative) are dropped


# ------------------------------------------------------------ linear algebra
def whitening_basis(xt: torch.Tensor) -> torch.Tensor:
    """``(p, r)`` map to whitened coordinates ``z = xt @ B`` (unit second moments).

    Columns are first scaled to unit RMS, then rotated onto the eigenvectors of their
    Gram matrix; directions with (relative) eigenvalue below ``RANK_TOL`` (dead units,
    constant or collinear features) are dropped, so ``r`` is the design's rank. The
    Wald statistic and the GQS are invariant under this reparametrisation; it only
    makes the fit and the solves well conditioned.
    """
    rms = xt.pow(2).mean(0).sqrt()
    scale = torch.where(rms > 0, 1.0 / rms, torch.ones_like(rms))
    xs = xt * scale
    gram = xs.T @ xs / len(xs)
    evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
    keep = evals > evals.max().clamp_min(1e-300) * RANK_TOL
    return scale[:, None] * evecs[:, keep] * evals[keep].rsqrt()


def psd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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


# ------------------------------------------------------------ balanced fits
def balanced_weights(yb: torch.Tensor) -> torch.Tensor:
    """Row weights ``1/2n1`` (minority, ``yb = 1``) and ``1/2n0``: each class counts half."""
    n1 = yb.sum()
    n0 = len(yb) - n1
    return torch.where(yb > 0, 0.5 / n1, 0.5 / n0)


def balanced_objective(
    z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, theta: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted log loss with a ridge, and its gradient, at ``theta``."""
    eta = z @ theta
    loss = (w * (F.softplus(eta) - yb * eta)).sum() + 0.5 * ridge * theta.dot(theta)
    grad = z.T @ (w * (torch.sigmoid(eta) - yb)) + ridge * theta
    return loss, grad


def fit_logistic(
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
        loss, grad = balanced_objective(z, yb, w, theta.detach(), ridge)
        theta.grad = grad
        return loss

    opt.step(closure)
    est = theta.detach().clone()
    for _ in range(3):
        est, improved = _newton_step(z, yb, w, est, ridge)
        if not improved:
            break
    return est


def _newton_step(
    z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, est: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, bool]:
    """One damped Newton step; ``False`` when converged or no step length helps."""
    loss, grad = balanced_objective(z, yb, w, est, ridge)
    if float(grad.abs().max()) < 1e-13:
        return est, False
    eye = torch.eye(len(est), dtype=z.dtype, device=z.device)
    prob = torch.sigmoid(z @ est)
    hess = (z * (w * prob * (1 - prob))[:, None]).T @ z + ridge * eye
    step = psd_solve(hess, grad)
    t = 1.0
    while t > 1e-4:
        cand = est - t * step
        if float(balanced_objective(z, yb, w, cand, ridge)[0]) <= float(loss):
            return cand, True
        t /= 2
    return est, False


def fit_least_squares(
    z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    """Weighted least squares of ``yb`` on ``z`` (closed form, ridge ``ridge``)."""
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return psd_solve((z * w[:, None]).T @ z + ridge * eye, z.T @ (w * yb))


def head_target(label, loss: str):
    """The regression target of 0/1 ``label`` (a float or a tensor) under ``loss``.

    ``2 label - 1`` for ``"squared_pm"``, the label itself otherwise.
    """
    return 2 * label - 1 if loss == "squared_pm" else label


def check_head_loss(loss: str) -> str:
    """``loss`` if it is one of :data:`HEAD_LOSSES`, else a :class:`VTSSError`."""
    if loss not in HEAD_LOSSES:
        raise VTSSError(f"head loss must be one of {', '.join(HEAD_LOSSES)}, got {loss!r}")
    return loss


def fit_head(z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, loss: str = "log") -> torch.Tensor:
    """The balanced head in coordinates ``z`` under ``loss`` (one of HEAD_LOSSES)."""
    if check_head_loss(loss) == "log":
        return fit_logistic(z, yb, w)
    return fit_least_squares(z, head_target(yb, loss), w)


def pilot_head_loss(pilot: nn.Module) -> str:
    """The head's loss for ``pilot``: its own, so the scores are those it trains on.

    A ``tg_head_loss`` attribute on the pilot (one of :data:`HEAD_LOSSES`) wins, e.g.
    ``"squared_pm"`` for a squared-loss model on +-1 targets; otherwise
    ``"squared"`` for models trained on the squared loss (``loss="mse"``), else log.
    """
    explicit = getattr(pilot, "tg_head_loss", None)
    if explicit is not None:
        return check_head_loss(explicit)
    hparams = getattr(pilot, "hparams", None)
    name = hparams.get("loss") if hasattr(hparams, "get") else getattr(pilot, "loss", None)
    return "squared" if name == "mse" else "log"


def fit_balanced_logistic(
    features: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    """Balanced-weighted binary logistic regression (weights ``1/2n0``, ``1/2n1``).

    ``features`` is the head's design (e.g. :func:`~vtss_lightning.search.tg.head_features`,
    intercept column included), ``y`` is 1 for the minority and 0 for the majority.
    Fitted in float64 with L-BFGS (strong Wolfe) and a ridge of ``ridge`` in whitened
    coordinates; returns the coefficients in the coordinates of ``features`` (a
    minimum-norm-like solution when the design is rank deficient).
    """
    xt = features.to(torch.float64)
    yb = y.to(xt.device, torch.float64)
    basis = whitening_basis(xt)
    theta_z = fit_logistic(xt @ basis, yb, balanced_weights(yb), ridge)
    return basis @ theta_z
