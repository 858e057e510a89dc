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
* :func:`solve` minimises the sum with one ``torch.optim.LBFGS`` built from the module's
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

    def penalties(self) -> torch.Tensor:
        """``module.penalty(n_k)`` at each member's weights and row count."""
        if self._penalty is None:
            return torch.zeros(self.size, dtype=self.dtype, device=self.device)
        if self.stacked_penalty:  # the module's own batched form (checked in the dry run)
            return self.module.penalty_stacked(self.params, self.counts).to(self.dtype)
        return torch.stack([self._penalty_of(k, n) for k, n in enumerate(self.counts)])

    def _penalty_of(self, k: int, n: int) -> torch.Tensor:
        p = {f"inner.{name}": t[k] for name, t in self.params.items()}
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
    """Minimise the sum of the members' objectives; ``(L-BFGS steps taken, gradient maxima)``.

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
    return (
        (2 * history + 8) * weights
        + 4 * scale * activation_bytes(module, x)
        + 2 * scale * (x.numel() * x.element_size())
    )
