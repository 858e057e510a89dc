"""Pilot scores: the last layer's design, per-row scores and class moments.

TG-VTSS (Ma & Zhang, arXiv 2601.16120) works in the parameters of the pilot's output
layer (penultimate features plus intercept), where the logistic and the squared loss
have closed-form per-row scores and Hessians; this module computes them in torch,
batched, on the features' device. Exact for logistic (or least-squares) linear
models, the last-layer approximation for deeper models, so any torch classifier whose
output layer is an ``nn.Linear`` is supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vtss_lightning._random import EVAL_CHUNK_ROWS
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.tg.head_fit import (
    SQUARED_LOSSES,
    balanced_weights,
    check_head_loss,
    fit_head,
    head_target,
    whitening_basis,
)


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
    batch_size: int = EVAL_CHUNK_ROWS,
) -> torch.Tensor:
    """Penultimate features plus intercept, ``(n, p)`` float64: the head's design.

    The input of the pilot's last ``nn.Linear`` is captured with a forward hook
    while the pilot runs in eval mode (batched, no grad); a column of ones is
    appended when that layer has a bias. ``device`` (default: ``x``'s) is where the
    result lives; the pilot runs on its own device.
    """
    layer = head_layer(pilot)
    out_device = torch.device(device) if device is not None else x.device
    chunks = _captured_inputs(pilot, layer, x, out_device, batch_size)
    width = layer.in_features
    phi = torch.cat(chunks) if chunks else torch.zeros(0, width, dtype=torch.float64)
    phi = phi.to(out_device)
    if layer.bias is not None:
        phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype, device=phi.device)], 1)
    if not torch.isfinite(phi).all():
        raise VTSSError("the pilot's penultimate features contain NaN or inf values")
    return phi


def _captured_inputs(
    pilot: nn.Module, layer: nn.Linear, x: torch.Tensor, out_device: torch.device, batch_size: int
) -> list[torch.Tensor]:
    """The inputs of ``layer`` for ``x``, batch by batch, in float64 on ``out_device``."""
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
                phi = _checked_capture(pilot, captured, len(batch))
                chunks.append(phi.to(out_device).to(torch.float64))  # MPS has no float64
    finally:
        handle.remove()
        pilot.train(was_training)
    return chunks


def _checked_capture(pilot: nn.Module, captured: list[torch.Tensor], rows: int) -> torch.Tensor:
    """The last captured input, refused unless it is one feature vector per row."""
    if not captured:
        raise VTSSError(
            f"the last nn.Linear of {type(pilot).__name__} is not used in its "
            "forward pass; TG-VTSS reads its input as the penultimate features"
        )
    phi = captured[-1]
    if phi.ndim != 2 or phi.shape[0] != rows:
        raise VTSSError(
            f"the input of {type(pilot).__name__}'s last nn.Linear has shape "
            f"{tuple(phi.shape)}; TG-VTSS needs one feature vector per row"
        )
    return phi


# ------------------------------------------------------------------ scores
@dataclass
class ClassScores:
    """Per-row scores ``(mu(eta) - y) x~`` of one set of rows at the balanced head.

    ``mu`` is the sigmoid for the log loss and the identity for the squared loss
    (whose score is the gradient of ``(eta - y)^2 / 2``; ``y`` is the target, ``+-1``
    for ``"squared_pm"``). ``design``, ``resid`` and ``curvature`` (the whitened rows,
    ``mu(eta) - y`` and ``mu'(eta)``) are what the calibrated symmetry test reads.
    """

    z: torch.Tensor  # (n, r) scores in whitened coordinates
    raw_mean: torch.Tensor  # (p,) mean score in the head's own coordinates
    hess: torch.Tensor | None  # (r, r) mean curvature-weighted z z'
    design: torch.Tensor | None = None  # (n, r) whitened rows
    resid: torch.Tensor | None = None  # (n,) mu(eta) - y
    curvature: torch.Tensor | None = None  # (n,) mu'(eta)

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
    """Scores (and, with ``hessian``, the mean Hessian) of rows ``xt`` labelled ``label``.

    ``label`` is 0 or 1 (the minority); ``"squared_pm"`` regresses on ``2 label - 1``.
    """
    z = xt @ basis
    eta = z @ theta_z
    if loss in SQUARED_LOSSES:
        resid, curvature = eta - head_target(label, loss), torch.ones_like(eta)
    else:
        prob = torch.sigmoid(eta)
        resid, curvature = prob - label, prob * (1 - prob)
    hess = (z * curvature[:, None]).T @ z / len(z) if hessian else None
    return ClassScores(resid[:, None] * z, (resid[:, None] * xt).mean(0), hess, z, resid, curvature)


# --------------------------------------------------------- the pilot's statistics
@dataclass
class PilotStats:
    """The balanced head of a pilot and the class scores at it (every later step's input).

    ``xt`` is the design of the real training rows, ``basis`` the whitening map,
    ``theta_z`` the balanced head in whitened coordinates, ``s0``/``s1`` the scores of
    the majority / minority rows, ``df`` the design's rank.
    """

    xt: torch.Tensor
    basis: torch.Tensor
    theta_z: torch.Tensor
    loss: str
    s0: ClassScores
    s1: ClassScores
    notes: list[str] = field(default_factory=list)

    @property
    def df(self) -> int:
        return int(self.basis.shape[1])

    def scores(self, xt: torch.Tensor, label: float) -> ClassScores:
        """Scores of other rows (held-out or synthetic) at the same head."""
        return class_scores(xt, self.basis, self.theta_z, label, False, self.loss)


def pilot_statistics(
    pilot: nn.Module, x: torch.Tensor, yb: torch.Tensor, loss: str, device: torch.device
) -> PilotStats:
    """Design, balanced head and class scores of rows ``x`` (``yb = 1``: the minority).

    ``theta`` minimises the balanced-weighted loss of the pilot's kind (``loss``), so
    ``g0 + g1 = 0`` there; ``g_k``, ``Sigma_k`` (divisor ``n_k - 1``) and ``H_k`` are the
    class means, covariances and mean Hessians of the scores at ``theta``. ``df`` is
    the design's rank (``p`` unless features are constant or collinear, e.g. dead ReLU
    units: the statistics then live on its row space, and a note says so); a (nearly)
    separable log-loss pilot, where the statistics are unreliable, is noted too.
    """
    return design_statistics(head_features(pilot, x, device=device), yb, loss)


def design_statistics(xt: torch.Tensor, yb: torch.Tensor, loss: str) -> PilotStats:
    """:func:`pilot_statistics` on a given head design ``xt`` (float64, ``(n, p)``).

    The balanced head, scores and notes of rows ``xt`` with minority indicator ``yb``
    under ``loss``: what a linear pilot's statistics are, without a model.
    """
    check_head_loss(loss)
    xt = xt.to(torch.float64)
    yb = yb.to(xt.device, torch.float64)
    basis = whitening_basis(xt)
    notes: list[str] = []
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
    return PilotStats(xt, basis, theta_z, loss, s0, s1, notes)
