"""Full-batch L-BFGS candidates of a convex model, solved as one problem.

``retrain`` fits a full-batch module (``full_batch = True``: one batch of all the
candidate's rows, one ``LBFGS.step`` per epoch, each step iterating up to ``max_iter``
times) one candidate at a time. L-BFGS is not elementwise (its line search and its
curvature pairs couple every coordinate), so the stacked loop of :mod:`._stack` cannot
replay it member by member. But the K members' objectives share no parameter, so the
minimiser of their *sum* over stacked parameters is the tuple of the members'
minimisers; for an objective that is convex in the parameters (the module says so with
``convex_objective``; :class:`~vtss_lightning.models.TabularClassifier` without hidden
layers: logistic, softmax or least-squares regression, L2-penalised by default) each
member's minimiser is the optimum retrain's L-BFGS converges to. So:

* :class:`JointObjective` evaluates the K objectives at once: the module's training loss
  on each member's *own* rows (real rows + its pool prefix, the tensors of retrain's
  full-batch loader), each (class-weighted) mean over the member's rows only, plus
  ``module.penalty(n_rows)`` with the member's row count, as ``training_step`` adds it.
  Every candidate's rows are part of the largest candidate's (nested pool prefixes), so
  those are held once with a mask per member (``"shared"``; one GEMM for the linear
  layer of all members); else each member's rows are padded to the longest with a mask
  (``"padded"``), or, where the module has no per-row loss, each member's loss is
  computed on its own rows (``"separate"``). The dry run (:func:`check_joint`) checks the
  layout against the module's own ``loss + penalty`` on two members.
* :func:`solve` runs batched Newton (:func:`newton`) where the module qualifies
  (:func:`newton_head`: a ``TabularClassifier`` without hidden layers, log or squared
  loss, an L-BFGS budget retrain converges in): each member's Hessian is small
  (``(D + 1) * outputs`` square), exact from the per-row second derivatives of the
  module's own ``per_sample_loss`` in the output layer and the penalty's autograd
  Hessian, so a damped Newton step with an Armijo backtracking line search per member,
  vectorised over the members (``eigh`` on the batch), converges quadratically in about
  5 to 15 iterations whatever the members' conditioning. One L-BFGS over the sum mixes
  the members' curvature pairs and stops only when its slowest member does: about
  7 times slower than retrain on ``abalone19``, where Newton is 2.5 times faster than
  retrain (``benchmarks/results/joint_solve.md``).
* Otherwise (and for members Newton leaves above the tolerance), :func:`solve`
  minimises the sum with one ``torch.optim.LBFGS`` built from the module's
  own settings (``lr``, ``max_iter``, ``max_eval``, ``history_size``,
  ``line_search_fn``), in float64 whatever the module's dtype, for at most as many
  L-BFGS steps as retrain takes (``max_epochs``, capped by ``max_steps``). The joint
  largest-gradient-entry test is every member's own, so it is the stopping rule, at
  ``max(tolerance_grad, CONVERGED_GRAD)``; the summed loss's change would stop the
  solve before its flattest member converged, so its tolerance only detects a stalled
  line search (:data:`STALLED`).

A member left above that tolerance (a budget too small for it, as when a small
``max_iter`` truncates retrain's own fit too) is handed back unconverged and the caller
retrains it alone. Without a penalty on separable rows no minimiser exists: both fits
stop on a small gradient along the same direction, with different weights and the
same near-zero losses. Float32 L-BFGS (retrain) stops where its
loss stops changing in float32, at largest gradient entries of about 1e-6 to 1e-5 on
small tables; the joint float64 solve stops at 1e-7 (the float32 cast of its result
keeps about 1e-8 to 1e-7), so each member is at least as close to its optimum as
retrain's fit, and members solved in different stacks agree far more closely than
either agrees with retrain (on ill-conditioned tables retrain's own float32 error
dominates: validation losses differ from the optimum's by up to ~1e-4 there).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from vtss_lightning.search.strategies._stack import (
    MemberState,
    OptimizerSpec,
    activation_bytes,
    training_loss,
)

#: Largest gradient entry at which a member counts as converged (see the module doc).
CONVERGED_GRAD = 1e-7
#: Change of the summed loss below which the joint L-BFGS counts as stalled (float64).
STALLED = 1e-15
#: The solve's dtype: the float32 sum of K objectives resolves K times less than one.
SOLVE_DTYPE = torch.float64


def joint_blocker(module: nn.Module, spec: OptimizerSpec) -> str | None:
    """Why full-batch L-BFGS candidates of ``module`` cannot be solved jointly (or ``None``)."""
    if not getattr(module, "full_batch", False):
        return (
            "LBFGS on mini-batches is not elementwise (a line search couples the members); "
            "parallel solves L-BFGS jointly only for full-batch modules (full_batch = True)"
        )
    if not getattr(module, "convex_objective", False):
        return (
            "full-batch L-BFGS of a model whose objective is not convex in its parameters "
            "(hidden layers; or the module does not set convex_objective = True): one joint "
            "L-BFGS would take each member to a different local optimum than retrain"
        )
    if len(spec.groups) != 1:
        return "the LBFGS optimizer has several parameter groups"
    return None


class _Penalty(nn.Module):
    """``module.penalty(n_rows)`` as a forward, so ``functional_call`` can swap weights."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, n_rows: int):
        return self.inner.penalty(n_rows)


class _Loss(nn.Module):
    """``loss(module(x), y)`` as a forward: the loss sees the swapped buffers too."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return training_loss(self.inner)(self.inner(x), y)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


#: How a joint objective holds the members' rows, in the dry run's order of preference:
#: the largest member's rows once with a mask per member (every member's rows are part
#: of them), a padded copy per member with a mask, or each member's rows unpadded.
MODES = ("shared", "padded", "separate")


class JointObjective:
    """The K members' full-batch training objectives over stacked parameters.

    Parameters
    ----------
    module
        The built template (metric-free), whose ``forward``/``forward_stacked``, loss
        and ``penalty`` define each objective.
    states
        The members' starting weights.
    data
        Each member's training rows ``(x, y)``, as retrain's full-batch loader has them.
    batched
        Use ``module.forward_stacked`` (checked to agree with ``forward``), else ``vmap``.
    mode
        One of :data:`MODES` (the dry run, :func:`check_joint`, picks it); ``"shared"``
        becomes ``"padded"`` where the members' rows are not part of the largest one's.
    n_real
        Rows every member starts with (the real training rows), for ``"shared"``.
    stacked_penalty
        Use ``module.penalty_stacked(params, counts)`` where the module has it (checked
        to agree with ``penalty``), else one ``functional_call`` of ``penalty`` a member.
    """

    def __init__(
        self,
        module: nn.Module,
        states: list[MemberState],
        data: list[tuple[torch.Tensor, torch.Tensor]],
        batched: bool,
        mode: str = "shared",
        n_real: int | None = None,
        stacked_penalty: bool = True,
        dtype: torch.dtype = SOLVE_DTYPE,
    ) -> None:
        self.module, self.size, self.dtype = module, len(states), dtype
        self.solver: str | None = None  # what :func:`solve` ran: newton, lbfgs, newton+lbfgs
        self.dtypes = {n: t.dtype for n, t in states[0].weights().items()}
        grads = {n: p.requires_grad for n, p in module.named_parameters()}
        self.params = {
            n: _cast(torch.stack([s.params[n] for s in states]), dtype).requires_grad_(grads[n])
            for n in states[0].params
        }
        self.buffers = {
            n: _cast(torch.stack([s.buffers[n] for s in states]), dtype) for n in states[0].buffers
        }
        self.counts = [len(y) for _, y in data]
        self.device = data[0][0].device
        self._tied = len(list(module.named_parameters(remove_duplicate=False))) != len(grads)
        self._loss = _Loss(module)
        self._penalty = _Penalty(module) if callable(getattr(module, "penalty", None)) else None
        self.stacked_penalty = stacked_penalty and callable(
            getattr(module, "penalty_stacked", None)
        )
        self._data = [(_cast(x, dtype), y) for x, y in data]
        shared = shared_rows(self._data, n_real) if mode == "shared" else None
        self.mode = "padded" if mode == "shared" and shared is None else mode
        if self.mode == "separate":
            return
        self._forward = self._stacked_forward(batched)
        if shared is not None:
            self.x, y, index = shared
            self.y = y.expand(self.size, *y.shape).contiguous()
            self.weights = torch.zeros(self.size, len(y), dtype=dtype, device=self.device)
            for k, rows in enumerate(index):
                self.weights[k, rows] = 1
        else:
            self._pad()
        class_weights = _class_weights(module)
        if class_weights is not None:
            self.weights = self.weights * _cast(class_weights, dtype)[self.y]
        self._total = self.weights.sum(1)
        self._data = []  # the shared or padded rows are all the solve needs

    def _stacked_forward(self, batched: bool) -> Callable:
        module, tied = self.module, self._tied
        if batched:
            return module.forward_stacked
        rows = None if self.mode == "shared" else 0
        return vmap(
            lambda p, b, x: functional_call(module, (p, b), (x,), tie_weights=tied),
            in_dims=(0, 0, rows),
        )

    def _pad(self) -> None:
        n = max(self.counts)
        x0, y0 = self._data[0]
        self.x = x0.new_empty((self.size, n, *x0.shape[1:]))
        self.y = y0.new_empty((self.size, n, *y0.shape[1:]))
        self.weights = torch.zeros(self.size, n, dtype=self.dtype, device=self.device)
        for k, (x, y) in enumerate(self._data):
            m = len(y)
            self.x[k, :m], self.y[k, :m], self.weights[k, :m] = x, y, 1
            self.x[k, m:], self.y[k, m:] = x[:1], y[:1]  # real rows: finite, masked out

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.params.values() if p.requires_grad]

    def losses(self) -> torch.Tensor:
        """Each member's objective ``(K,)``: its loss on its own rows plus its penalty."""
        if self.mode == "separate":
            data = torch.stack([self._member_loss(k) for k in range(self.size)])
        else:
            scores = self._forward(self.params, self.buffers, self.x)
            k, n = self.y.shape[:2]
            rows = self.module.per_sample_loss(
                scores.reshape(k * n, *scores.shape[2:]), self.y.reshape(k * n, *self.y.shape[2:])
            ).view(k, n)
            data = (self.weights * rows).sum(1) / self._total
        return data + self.penalties()

    def _member_loss(self, k: int) -> torch.Tensor:
        x, y = self._data[k]
        p = {f"inner.{n}": t[k] for n, t in self.params.items()}
        b = {f"inner.{n}": t[k] for n, t in self.buffers.items()}
        return functional_call(self._loss, (p, b), (x, y), tie_weights=self._tied)

    def penalties(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``module.penalty(n_k)`` at each member's weights (or ``params``) and row count."""
        params = self.params if params is None else params
        if self._penalty is None:
            return torch.zeros(self.size, dtype=self.dtype, device=self.device)
        if self.stacked_penalty:  # the module's own batched form (checked in the dry run)
            return self.module.penalty_stacked(params, self.counts).to(self.dtype)
        return torch.stack([self._penalty_of(k, n, params) for k, n in enumerate(self.counts)])

    def _penalty_of(self, k: int, n: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
        p = {f"inner.{name}": t[k] for name, t in params.items()}
        b = {f"inner.{name}": t[k] for name, t in self.buffers.items()}
        value = functional_call(self._penalty, (p, b), (n,), tie_weights=self._tied)
        if torch.is_tensor(value):
            return value.to(self.dtype)
        return torch.tensor(float(value), dtype=self.dtype, device=self.device)

    def gradient_max(self) -> torch.Tensor:
        """Each member's largest absolute gradient entry ``(K,)`` at the current weights."""
        params = self.trainable()
        with torch.enable_grad():
            grads = torch.autograd.grad(self.losses().sum(), params, allow_unused=True)
        per = [g.detach().abs().reshape(self.size, -1).amax(1) for g in grads if g is not None]
        return torch.stack(per).amax(0) if per else torch.zeros(self.size, device=self.device)

    def states(self) -> list[MemberState]:
        """Each member's weights, detached, in the module's own dtypes."""
        return [
            MemberState(
                {n: p[k].detach().to(self.dtypes[n]).clone() for n, p in self.params.items()},
                {n: b[k].to(self.dtypes[n]).clone() for n, b in self.buffers.items()},
            )
            for k in range(self.size)
        ]


def shared_rows(
    data: list[tuple[torch.Tensor, torch.Tensor]], n_real: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None:
    """The largest member's rows and each member's row indices into them, or ``None``.

    The layout of :meth:`~vtss_lightning.data.datamodule.VTSSDataModule.training_tensors`:
    ``n_real`` real rows, then per class in sorted order that class's pool prefix, so a
    smaller candidate's rows are the real rows plus, per class, the first rows of that
    class among the largest one's synthetic rows. Verified row by row.
    """
    x_all, y_all = max(data, key=lambda d: len(d[1]))
    if n_real is None or y_all.dim() != 1 or any(len(y) < n_real for _, y in data):
        return None
    head = torch.arange(n_real, device=y_all.device)
    tail = y_all[n_real:]
    where = {int(c): (tail == c).nonzero().squeeze(1) + n_real for c in torch.unique(tail)}
    index = []
    for x, y in data:
        parts = [head]
        for c, count in zip(*torch.unique(y[n_real:], return_counts=True), strict=True):
            rows = where.get(int(c))
            if rows is None or len(rows) < int(count):
                return None
            parts.append(rows[: int(count)])
        rows = torch.cat(parts)
        if not (torch.equal(y_all[rows], y) and torch.equal(x_all[rows], x)):
            return None
        index.append(rows)
    return x_all, y_all, index


def _class_weights(module: nn.Module) -> torch.Tensor | None:
    """Per-class weights of a class-weighted mean loss (``BalancedClassifier``), else None."""
    hparams = dict(getattr(module, "hparams", {}) or {})
    if hparams.get("class_weight") is None:
        return None
    return getattr(module, "class_weights", None)


def solve(
    objective: JointObjective,
    spec: OptimizerSpec,
    steps: int,
    on_step: Callable[[JointObjective], None] | None = None,
) -> tuple[int, torch.Tensor]:
    """Minimise the members' objectives; ``(solver steps taken, gradient maxima)``.

    A qualifying linear head (:func:`newton_head`) is solved by batched Newton first
    (one "step"), the members it leaves above the tolerance by the joint L-BFGS; any
    other module by the joint L-BFGS alone. ``objective.solver`` records which ran.
    """
    head = newton_head(objective, spec, steps) if USE_NEWTON else None
    if head is None:
        objective.solver = "lbfgs"
        return _lbfgs(objective, spec, steps, on_step)
    objective.solver = "newton"
    grads = newton(objective, head, acceptance(spec))
    if on_step is not None:
        on_step(objective)
    if bool(converged(grads, spec).all()):
        return 1, grads
    objective.solver = "newton+lbfgs"  # a member Newton could not finish
    taken, grads = _lbfgs(objective, spec, steps, on_step)
    return 1 + taken, grads


def _lbfgs(
    objective: JointObjective,
    spec: OptimizerSpec,
    steps: int,
    on_step: Callable[[JointObjective], None] | None = None,
) -> tuple[int, torch.Tensor]:
    """One ``torch.optim.LBFGS`` over the summed objectives (the module's settings).

    At most ``steps`` ``LBFGS.step`` calls (retrain's epochs), fewer once every member
    is converged (:func:`converged`); ``on_step`` runs after each step.
    """
    hp = dict(spec.groups[0][1])
    # Stop on the members' gradients, not on the change of their summed loss: what is
    # left of the loss-change rule only detects a stalled line search (float64 floor).
    hp["tolerance_change"] = min(float(hp.get("tolerance_change", 1e-9)), STALLED)
    # The joint largest-entry test is every member's: stop once all are converged.
    hp["tolerance_grad"] = acceptance(spec)
    optimizer = spec.cls(objective.trainable(), **hp)

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = objective.losses().sum()
        loss.backward()
        return loss

    taken, grads = 0, objective.gradient_max()
    while taken < steps and not bool(converged(grads, spec).all()):
        optimizer.step(closure)
        taken += 1
        grads = objective.gradient_max()
        if on_step is not None:
            on_step(objective)
    return taken, grads


def converged(grads: torch.Tensor, spec: OptimizerSpec) -> torch.Tensor:
    """Which members count as converged: largest gradient entry within the tolerance."""
    return grads <= acceptance(spec)


def acceptance(spec: OptimizerSpec) -> float:
    return max(float(spec.groups[0][1].get("tolerance_grad", 0.0)), CONVERGED_GRAD)


# ------------------------------------------------------------------ batched Newton
#: Solve qualifying linear heads by batched Newton (``False``: the joint L-BFGS only;
#: benchmarks and tests compare the two).
USE_NEWTON = True
#: Newton iterations at most (quadratic convergence: about 5 to 15 on logistic losses).
NEWTON_MAX_ITER = 60
#: Newton runs only where retrain's L-BFGS may iterate at least this often (``max_iter``
#: times epochs): a smaller budget stops retrain short of the optimum, so the members
#: must take the joint L-BFGS path, which hands them back to be retrained alone.
NEWTON_MIN_BUDGET = 50
#: Armijo's sufficient-decrease constant and the step halvings of the line search.
ARMIJO, HALVINGS = 1e-4, 40
#: Hessian eigenvalues below this fraction of the largest count as zero (flat
#: directions, see :func:`newton_step`).
CUTOFF = 1e-11


@dataclass(frozen=True)
class Head:
    """The output layer of a linear model over fixed features, as Newton sees it.

    Each member's parameters are ``theta`` ``(out, D)``: the layer's weight with the
    bias as last column (``features`` then end in a ones column); scores are
    ``features @ theta.T``, behind a fixed class-0 score ``base`` for one binary logit.
    """

    weight: str
    bias: str | None
    features: torch.Tensor  # (N, D) shared by the members or (K, N, D) padded
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
    """The last linear layer's keys, the fixed features of the rows, the binary base."""
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
    with torch.no_grad():
        x = objective.x
        if len(net) > 1:
            x = functional_call(net[:-1], {n: t[0] for n, t in buffers.items()}, (x,))
        if bias is not None:
            x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)
    one_logit = module.num_classes == 2 and param.shape[1] == 1
    base = (0.5 if module.hparams.loss == "mse" else 0.0) if one_logit else None
    return Head(weight, bias, x.contiguous(), base)


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


def _data_loss(objective: JointObjective, head: Head, z: torch.Tensor) -> torch.Tensor:
    """Each member's (class-weighted, masked) mean row loss at output-layer values ``z``."""
    scores = _scores(head, z)
    k, n = objective.y.shape[:2]
    rows = objective.module.per_sample_loss(
        scores.reshape(k * n, -1), objective.y.reshape(k * n)
    ).view(k, n)
    return (objective.weights * rows).sum(1) / objective._total


def _objective(objective: JointObjective, head: Head, theta: torch.Tensor) -> torch.Tensor:
    z = head.features @ theta.transpose(1, 2)
    return _data_loss(objective, head, z) + objective.penalties(_params_at(objective, head, theta))


def _derivatives(
    objective: JointObjective, head: Head, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objective ``(K,)``, gradient ``(K, P)`` and Hessian ``(K, P, P)`` of each member.

    The data term's Hessian is ``features.T diag(w) d2l/dz2 features`` (exact: the scores
    are linear in ``theta``), from the per-row second derivatives in the outputs ``z``.
    """
    phi = head.features
    with torch.enable_grad():
        z = (phi @ theta.transpose(1, 2)).requires_grad_()
        data = _data_loss(objective, head, z)
        (gz,) = torch.autograd.grad(data.sum(), z, create_graph=True)
        hz = _output_hessian(gz, z)
    pen, pen_g, pen_h = _penalty_derivatives(objective, head, theta)
    k, out, d = theta.shape
    grad = (gz.detach().transpose(1, 2) @ phi).reshape(k, -1) + pen_g
    return data.detach() + pen, grad, _gram(hz, phi).reshape(k, out * d, -1) + pen_h


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
    """``sum_n hz[k, n, a, b] phi[n, i] phi[n, j]`` as ``(K, out, D, out, D)``."""
    k, _, out, _ = hz.shape
    d = phi.shape[-1]
    h = phi.new_zeros(k, out, d, out, d)
    for a in range(out):
        for b in range(a, out):
            block = (hz[..., a, b].unsqueeze(-1) * phi).transpose(-1, -2) @ phi
            h[:, a, :, b, :] = block
            h[:, b, :, a, :] = block.transpose(-1, -2)
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


@dataclass(frozen=True)
class Layout:
    """How the joint objective of a module is computed (what the dry run found to work)."""

    mode: str  # one of MODES
    stacked_penalty: bool


def check_joint(
    module: nn.Module, state: MemberState, x: torch.Tensor, y: torch.Tensor, batched: bool
) -> Layout | str:
    """The dry run: the first :class:`Layout` (modes in :data:`MODES` order, the stacked
    penalty first) whose objective reproduces the module's ``loss + penalty`` on two
    members of different row counts, else the reason."""
    gen = torch.Generator().manual_seed(0)
    other = MemberState(
        {n: t + 0.1 * torch.randn(t.shape, generator=gen).to(t) for n, t in state.params.items()},
        dict(state.buffers),
    )
    cut = max(1, min(len(y), 3))
    extra = torch.sort(y[cut:], stable=True).indices + cut  # a pool prefix: class by class
    data = [(x[:cut], y[:cut]), (torch.cat([x[:cut], x[extra]]), torch.cat([y[:cut], y[extra]]))]
    want = _reference_objectives(module, [state, other], data)
    masked = callable(getattr(module, "per_sample_loss", None))
    stacked = (True, False) if callable(getattr(module, "penalty_stacked", None)) else (False,)
    for layout in (Layout(m, p) for m in MODES for p in stacked):
        if layout.mode != "separate" and not masked:
            continue
        try:
            objective = JointObjective(
                module, [state, other], data, batched, layout.mode, cut, layout.stacked_penalty
            )
            got = objective.losses()
            got.sum().backward()
        except Exception:  # noqa: BLE001 - the next layout may still work
            continue
        if objective.mode == layout.mode and torch.allclose(
            got.detach(), want.to(got.device), rtol=1e-9, atol=1e-12
        ):
            return layout
    return "the stacked objective differs from the module's loss + penalty"


def _reference_objectives(
    module: nn.Module, states: list[MemberState], data: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """``loss(module(x), y) + penalty(len(y))`` of each member, as ``training_step`` has it."""
    reference = copy.deepcopy(module).to(SOLVE_DTYPE)
    loss = training_loss(reference)
    out = []
    for state, (x, y) in zip(states, data, strict=True):
        reference.load_state_dict({**reference.state_dict(), **state.weights()})
        penalty = reference.penalty(len(y)) if hasattr(reference, "penalty") else 0.0
        value = loss(reference(_cast(x, SOLVE_DTYPE)), y) + penalty
        out.append(torch.as_tensor(value, dtype=SOLVE_DTYPE).detach())
    return torch.stack(out)


def joint_member_bytes(module: nn.Module, spec: OptimizerSpec, x: torch.Tensor) -> int:
    """Rough bytes one member of a joint solve needs (float64 rows, activations, history)."""
    weights = sum(p.numel() for p in module.parameters()) * 8
    history = int(spec.groups[0][1].get("history_size", 100))
    scale = 8 // max(1, x.element_size())
    hessian = 4 * 8 * sum(p.numel() for p in module.parameters()) ** 2  # Newton's, a few
    return (
        (2 * history + 8) * weights
        + hessian
        + 4 * scale * activation_bytes(module, x)
        + 2 * scale * (x.numel() * x.element_size())
    )
