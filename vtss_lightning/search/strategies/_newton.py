"""Batched damped Newton for the joint full-batch solve of :mod:`._full_batch`.

Where the module qualifies (:func:`newton_head`: a ``TabularClassifier`` without
hidden layers, log or squared loss, an L-BFGS budget retrain converges in) each
member's Hessian is small (``(D + 1) * outputs`` square), exact from the per-row second
derivatives of the module's own ``per_sample_loss`` in the output layer and the
penalty's autograd Hessian, so a damped Newton step with an Armijo backtracking line
search per member, vectorised over the members (``eigh`` on the batch), converges
quadratically in about 5 to 15 iterations whatever the members' conditioning.

The members' data terms are read block by block (``objective.blocks``): a block is the
members of one split and the rows they share (or one padded row set per member), so
members of several splits solve together while each block's rows are held once and
each member's terms are exactly those of a solve of its own split alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call

if TYPE_CHECKING:
    from vtss_lightning.search.strategies._full_batch import Block, JointObjective
    from vtss_lightning.search.strategies._stack import OptimizerSpec

#: Newton iterations at most (quadratic convergence: about 5 to 15 on logistic losses).
NEWTON_MAX_ITER = 60
#: Newton runs only where retrain's L-BFGS may iterate at least this often (``max_iter``
#: times epochs): a smaller budget stops retrain short of the optimum, so the members
#: must take the joint L-BFGS path, which hands them back to be retrained alone.
NEWTON_MIN_BUDGET = 50
#: Armijo's sufficient-decrease constant and the step halvings of the line search.
ARMIJO, HALVINGS = 1e-4, 40
#: Values of the weighted feature copy one Hessian block is summed from (16 Mi float64:
#: 128 MiB); smaller tables take one block, as before.
GRAM_CHUNK = 1 << 24
#: Hessian eigenvalues below this fraction of the largest count as zero (flat
#: directions, see :func:`newton_step`).
CUTOFF = 1e-11


@dataclass(frozen=True)
class Head:
    """The output layer of a linear model over fixed features, as Newton sees it.

    Each member's parameters are ``theta`` ``(out, D)``: the layer's weight with the
    bias as last column (``features`` then end in a ones column); scores are
    ``features @ theta.T``, behind a fixed class-0 score ``base`` for one binary logit.
    ``features`` has one entry per block of the objective: ``(N, D)`` shared by the
    block's members or ``(K, N, D)`` padded.
    """

    weight: str
    bias: str | None
    features: tuple[torch.Tensor, ...]
    base: float | None


def newton_head(objective: JointObjective, spec: OptimizerSpec, steps: int) -> Head | None:
    """The head batched Newton solves exactly, or ``None`` (then the joint L-BFGS).

    Qualifies: a ``TabularClassifier`` without hidden layers (fixed random features
    allowed) whose objective uses per-row losses, with an L-BFGS budget large enough
    for retrain to converge; and Newton's objective must reproduce the joint one.
    """
    if not _newton_module(objective.module) or objective.mode == "separate":
        return None
    if int(spec.groups[0][1].get("max_iter", 20)) * steps < NEWTON_MIN_BUDGET:
        return None
    head = _head_of(objective)
    if head is None:
        return None
    with torch.no_grad():
        got = _objective(objective, head, _theta(objective, head))
        want = objective.losses()
    return head if torch.allclose(got, want, rtol=1e-10, atol=1e-13) else None


def _newton_module(module: nn.Module) -> bool:
    from vtss_lightning.models.tabular import TabularClassifier

    if not isinstance(module, TabularClassifier) or module.hidden_dims:
        return False
    net = getattr(module, "net", None)
    if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
        return False
    fixed = all(not any(True for _ in m.parameters()) for m in list(net)[:-1])
    return fixed and module.hparams.loss in ("cross_entropy", "mse")


def _head_of(objective: JointObjective) -> Head | None:
    """The last linear layer's keys, the fixed features of each block's rows, the binary base."""
    module, net = objective.module, objective.module.net
    last = list(net._modules)[-1]
    weight, bias = f"net.{last}.weight", f"net.{last}.bias"
    param = objective.params.get(weight)
    if param is None or not param.requires_grad:
        return None
    bias = bias if bias in objective.params else None
    if bias is not None and not objective.params[bias].requires_grad:
        return None
    buffers = {n[4:]: t for n, t in objective.buffers.items() if n.startswith("net.")}
    if any(not torch.equal(t, t[:1].expand_as(t)) for t in buffers.values()):
        return None  # the members' fixed features differ
    features = []
    for block in objective.blocks:
        features.append(_features(net, buffers, bias, block.x))
        if len(net) == 1 and bias is not None:  # the rows are the features' first
            block.x = features[-1][..., :-1]  # columns: one float64 copy of them, not two
    one_logit = module.num_classes == 2 and param.shape[1] == 1
    base = (0.5 if module.hparams.loss == "mse" else 0.0) if one_logit else None
    return Head(weight, bias, tuple(features), base)


@torch.no_grad()
def _features(net: nn.Sequential, buffers: dict, bias: str | None, x: torch.Tensor):
    if len(net) > 1:
        x = functional_call(net[:-1], {n: t[0] for n, t in buffers.items()}, (x,))
    if bias is not None:
        x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)
    return x.contiguous()


def _theta(objective: JointObjective, head: Head) -> torch.Tensor:
    weight = objective.params[head.weight].detach()
    if head.bias is None:
        return weight.clone()
    return torch.cat([weight, objective.params[head.bias].detach().unsqueeze(-1)], -1)


def _params_at(objective: JointObjective, head: Head, theta: torch.Tensor) -> dict:
    d = objective.params[head.weight].shape[-1]
    params = {**objective.params, head.weight: theta[..., :d]}
    if head.bias is not None:
        params[head.bias] = theta[..., d]
    return params


def _scores(head: Head, z: torch.Tensor) -> torch.Tensor:
    return z if head.base is None else torch.cat([torch.full_like(z, head.base), z], -1)


def _data_loss(module: nn.Module, block: Block, head: Head, z: torch.Tensor) -> torch.Tensor:
    """The block's members' (class-weighted, masked) mean row loss at output values ``z``."""
    return block.mean_loss(module.per_sample_loss, _scores(head, z))


def _objective(objective: JointObjective, head: Head, theta: torch.Tensor) -> torch.Tensor:
    data = [
        _data_loss(objective.module, block, head, phi @ block.members(theta).transpose(1, 2))
        for block, phi in zip(objective.blocks, head.features, strict=True)
    ]
    penalties = objective.penalties(_params_at(objective, head, theta))
    return _joined(data) + penalties


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _derivatives(
    objective: JointObjective, head: Head, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objective ``(K,)``, gradient ``(K, P)`` and Hessian ``(K, P, P)`` of each member."""
    parts = [
        _block_derivatives(objective.module, block, head, phi, block.members(theta))
        for block, phi in zip(objective.blocks, head.features, strict=True)
    ]
    data, grad, hess = (_joined(list(p)) for p in zip(*parts, strict=True))
    pen, pen_g, pen_h = _penalty_derivatives(objective, head, theta)
    return data + pen, grad + pen_g, hess + pen_h


def _block_derivatives(
    module: nn.Module, block: Block, head: Head, phi: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The data term of one block's members, its gradient and Hessian in ``theta``.

    The Hessian is ``features.T diag(w) d2l/dz2 features`` (exact: the scores are
    linear in ``theta``), from the per-row first and second derivatives in the outputs
    ``z``: in closed form for the module's own log and squared losses, else by autograd
    of its ``per_sample_loss``.
    """
    z = phi @ theta.transpose(1, 2)
    closed = _closed_form(module, block, head, z)
    if closed is None:
        with torch.enable_grad():
            z = z.requires_grad_()
            data = _data_loss(module, block, head, z)
            (gz,) = torch.autograd.grad(data.sum(), z, create_graph=True)
            hz = _output_hessian(gz, z)
        data, gz = data.detach(), gz.detach()
    else:
        data, gz, hz = closed
    k, out, d = theta.shape
    grad = (gz.transpose(1, 2) @ phi).reshape(k, -1)
    return data, grad, _gram(hz, phi).reshape(k, out * d, -1)


def _closed_form(
    module: nn.Module, block: Block, head: Head, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The block's data term, ``d loss / dz`` ``(K, N, out)`` and ``d2 loss / dz2``
    ``(K, N, out, out)`` of ``TabularClassifier``'s own losses, or ``None`` (a module
    that redefines ``per_sample_loss``: autograd then).

    Log loss: ``p - onehot(y)`` and ``diag(p) - p p.T`` with ``p`` the softmax of the
    scores (for one binary logit behind a fixed class-0 score: ``sigmoid(z) - y`` and
    ``s (1 - s)``); squared loss: ``2 (z - target)`` and ``2 I``.
    """
    from vtss_lightning.models.tabular import TabularClassifier

    if type(module).per_sample_loss is not TabularClassifier.per_sample_loss:
        return None
    data = _data_loss(module, block, head, z)
    row = (block.weights / block.total.unsqueeze(1)).unsqueeze(-1)  # (K, N, 1)
    out = z.shape[-1]
    if module.hparams.loss == "cross_entropy":
        if head.base is not None:  # one logit: the class-1 probability
            p = torch.sigmoid(z - head.base)
            gz = p - (block.y == 1).unsqueeze(-1).to(z.dtype)
            hz = (p * (1 - p)).unsqueeze(-1)
        else:
            p = torch.softmax(z, -1)
            gz = p - nn.functional.one_hot(block.y, out).to(z.dtype)
            hz = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    else:
        if head.base is not None:
            target = block.y.unsqueeze(-1).to(z.dtype)
        else:
            target = nn.functional.one_hot(block.y, out).to(z.dtype)
        gz = 2 * (z - target)
        hz = torch.full((*z.shape, out), 0.0, dtype=z.dtype, device=z.device)
        hz[..., range(out), range(out)] = 2.0
    return data, row * gz, row.unsqueeze(-1) * hz


def _output_hessian(gz: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``d2 loss / dz_a dz_b`` per row ``(K, N, out, out)`` (zero where ``gz`` is constant)."""
    if not gz.requires_grad:
        return z.new_zeros(*z.shape, z.shape[-1])
    cols = []
    for a in range(z.shape[-1]):
        (col,) = torch.autograd.grad(gz[..., a].sum(), z, retain_graph=True, allow_unused=True)
        cols.append(torch.zeros_like(z) if col is None else col)
    return torch.stack(cols, -2).detach()


def _gram(hz: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``sum_n hz[k, n, a, b] phi[n, i] phi[n, j]`` as ``(K, out, D, out, D)``.

    Summed over blocks of rows, so the weighted copy of the features it multiplies is
    at most :data:`GRAM_CHUNK` values, not members x rows x columns (gigabytes for a
    table of millions of rows).
    """
    k, n, out, _ = hz.shape
    d = phi.shape[-1]
    h = phi.new_zeros(k, out, d, out, d)
    step = max(1, GRAM_CHUNK // max(1, k * d))
    for start in range(0, n, step):
        rows = phi[..., start : start + step, :]
        part = hz[:, start : start + step]
        for a in range(out):
            for b in range(a, out):
                block = (part[..., a, b].unsqueeze(-1) * rows).transpose(-1, -2) @ rows
                h[:, a, :, b, :] += block
                if b != a:
                    h[:, b, :, a, :] += block.transpose(-1, -2)
    return h


def _penalty_derivatives(
    objective: JointObjective, head: Head, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The penalty's value ``(K,)``, gradient ``(K, P)`` and Hessian ``(K, P, P)`` (autograd:
    no rows involved, so cheap)."""
    k, p = theta.shape[0], theta[0].numel()
    t = theta.detach().requires_grad_()
    zero_g, zero_h = theta.new_zeros(k, p), theta.new_zeros(k, p, p)
    with torch.enable_grad():
        value = objective.penalties(_params_at(objective, head, t))
        if not value.requires_grad:
            return value.detach(), zero_g, zero_h
        (g,) = torch.autograd.grad(value.sum(), t, create_graph=True)
        if not g.requires_grad:  # linear in theta
            return value.detach(), g.detach().reshape(k, p), zero_h
        eye = torch.eye(p, dtype=t.dtype, device=t.device).view(p, 1, *t.shape[1:])
        (h,) = torch.autograd.grad(g, t, eye.expand(p, *t.shape), is_grads_batched=True)
    return value.detach(), g.detach().reshape(k, p), h.reshape(p, k, p).transpose(0, 1)


def newton(objective: JointObjective, head: Head, tolerance: float) -> torch.Tensor:
    """Damped Newton per member, vectorised over members; leaves the result in
    ``objective.params`` and returns each member's largest gradient entry.

    A member stops once its largest gradient entry is within ``tolerance``, or when its
    line search finds no decrease (a float64 floor); the caller hands what is left
    above the tolerance to the joint L-BFGS.
    """
    theta = _theta(objective, head)
    stalled = torch.zeros(theta.shape[0], dtype=torch.bool, device=theta.device)
    for _ in range(NEWTON_MAX_ITER):
        value, grad, hess = _derivatives(objective, head, theta)
        done = stalled | (grad.abs().amax(1) <= tolerance)
        if bool(done.all()):
            break
        step = newton_step(hess, grad).masked_fill(done.unsqueeze(1), 0.0)
        t, ok = _backtrack(objective, head, theta, value, grad, step)
        stalled |= ~ok
        theta = theta + (t * ok).view(-1, 1, 1) * step.view(theta.shape)
    _store(objective, head, theta)
    return objective.gradient_max()


def newton_step(hess: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``-H^+ g`` per member; steepest descent where that is no descent direction.

    The pseudo-inverse (eigenvalues below :data:`CUTOFF` of the largest dropped) keeps
    the step off directions the objective does not see (a softmax's shared bias shift:
    retrain's L-BFGS never moves along it either), where a solve would amplify rounding.
    """
    values, vectors = torch.linalg.eigh(0.5 * (hess + hess.transpose(1, 2)))
    floor = CUTOFF * values.abs().amax(1, keepdim=True).clamp_min(1e-300)
    inverse = torch.where(values > floor, 1.0 / values.clamp_min(1e-300), 0.0)
    along = (vectors.transpose(1, 2) @ grad.unsqueeze(-1)).squeeze(-1)
    step = -(vectors @ (inverse * along).unsqueeze(-1)).squeeze(-1)
    bad = ~torch.isfinite(step).all(1) | ((step * grad).sum(1) >= 0)
    return torch.where(bad.unsqueeze(1), -grad, step)


def _backtrack(
    objective: JointObjective,
    head: Head,
    theta: torch.Tensor,
    value: torch.Tensor,
    grad: torch.Tensor,
    step: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Armijo step lengths per member ``(K,)`` and which found a decrease."""
    slope = (grad * step).sum(1)
    slack = 4 * torch.finfo(value.dtype).eps * value.abs()  # float64 resolution of f
    t, ok = torch.ones_like(value), slope == 0
    with torch.no_grad():
        for _ in range(HALVINGS):
            trial = _objective(objective, head, theta + t.view(-1, 1, 1) * step.view(theta.shape))
            ok = ok | (torch.isfinite(trial) & (trial <= value + ARMIJO * t * slope + slack))
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
    return t, ok


def _store(objective: JointObjective, head: Head, theta: torch.Tensor) -> None:
    with torch.no_grad():
        for name, value in _params_at(objective, head, theta).items():
            if name in (head.weight, head.bias):
                objective.params[name].copy_(value)
