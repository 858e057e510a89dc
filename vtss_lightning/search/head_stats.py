"""Statistics of a classifier's last layer: features, balanced head, scores.

TG-VTSS works in the parameters of the output layer (penultimate features plus
intercept), where the logistic and the squared loss have closed-form per-row scores
and Hessians; this module computes them in torch, batched, on the features' device.
Exact for logistic (or least-squares) linear models, the last-layer approximation for
deeper models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vtss_lightning.errors import VTSSError

#: Losses the head can be refitted with: the pilot's own (log loss, or squared loss
#: for ``TabularClassifier(loss="mse")``).
HEAD_LOSSES = ("log", "squared")
RANK_TOL = 1e-10  # eigenvalues of the normalised Gram matrix below this (relative) are dropped
ROWS_PER_FORWARD = 8192


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
    batch_size: int = ROWS_PER_FORWARD,
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


def balanced_objective(
    z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, theta: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
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
    eye = torch.eye(len(est), dtype=z.dtype, device=z.device)
    for _ in range(3):
        loss, grad = balanced_objective(z, yb, w, est, ridge)
        if float(grad.abs().max()) < 1e-13:
            break
        prob = torch.sigmoid(z @ est)
        hess = (z * (w * prob * (1 - prob))[:, None]).T @ z + ridge * eye
        step = psd_solve(hess, grad)
        t = 1.0
        while t > 1e-4:
            cand = est - t * step
            if float(balanced_objective(z, yb, w, cand, ridge)[0]) <= float(loss):
                est = cand
                break
            t /= 2
        else:
            break
    return est


def fit_least_squares(
    z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, ridge: float = 1e-6
) -> torch.Tensor:
    """Weighted least squares of ``yb`` on ``z`` (closed form, ridge ``ridge``)."""
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return psd_solve((z * w[:, None]).T @ z + ridge * eye, z.T @ (w * yb))


def fit_head(z: torch.Tensor, yb: torch.Tensor, w: torch.Tensor, loss: str = "log") -> torch.Tensor:
    """The balanced head in coordinates ``z`` under ``loss`` (one of HEAD_LOSSES)."""
    if loss == "log":
        return fit_logistic(z, yb, w)
    if loss == "squared":
        return fit_least_squares(z, yb, w)
    raise VTSSError(f"head loss must be one of {', '.join(HEAD_LOSSES)}, got {loss!r}")


def pilot_head_loss(pilot: nn.Module) -> str:
    """``"squared"`` for models trained on the squared loss (``loss="mse"``), else log."""
    hparams = getattr(pilot, "hparams", None)
    name = hparams.get("loss") if hasattr(hparams, "get") else getattr(pilot, "loss", None)
    return "squared" if name == "mse" else "log"


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
    basis = whitening_basis(xt)
    theta_z = fit_logistic(xt @ basis, yb, balanced_weights(yb), ridge)
    return basis @ theta_z


def balanced_weights(yb: torch.Tensor) -> torch.Tensor:
    n1 = yb.sum()
    n0 = len(yb) - n1
    return torch.where(yb > 0, 0.5 / n1, 0.5 / n0)


@dataclass
class ClassScores:
    """Per-row scores ``(mu(eta) - y) x~`` of one set of rows at the balanced head.

    ``mu`` is the sigmoid for the log loss and the identity for the squared loss
    (whose score is the gradient of ``(eta - y)^2 / 2``).
    """

    z: torch.Tensor  # (n, r) scores in whitened coordinates
    raw_mean: torch.Tensor  # (p,) mean score in the head's own coordinates
    hess: torch.Tensor | None  # (r, r) mean curvature-weighted z z'

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


def class_scores(
    xt: torch.Tensor,
    basis: torch.Tensor,
    theta_z: torch.Tensor,
    label: float,
    hessian: bool,
    loss: str = "log",
) -> ClassScores:
    z = xt @ basis
    eta = z @ theta_z
    if loss == "squared":
        resid, curvature = eta - label, torch.ones_like(eta)
    else:
        prob = torch.sigmoid(eta)
        resid, curvature = prob - label, prob * (1 - prob)
    hess = (z * curvature[:, None]).T @ z / len(z) if hessian else None
    return ClassScores(resid[:, None] * z, (resid[:, None] * xt).mean(0), hess)


def wald_statistic(s0: ClassScores, s1: ClassScores) -> float:
    """``T = g' V^-1 g`` with ``g = g0 - g1`` and the sandwich ``V`` of PAPER.md."""
    h = (s0.hess + s1.hess) / 2
    ghinv = psd_solve(h, s0.hess - s1.hess).T  # G H^-1 = (H^-1 G)' (both symmetric)
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    a0 = eye - 0.5 * ghinv
    a1 = -eye - 0.5 * ghinv
    v = a0 @ s0.cov @ a0.T / s0.n + a1 @ s1.cov @ a1.T / s1.n
    g = s0.mean - s1.mean
    return float(g.dot(psd_solve(v, g)))
