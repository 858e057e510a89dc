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
  Every candidate's rows are part of the largest candidate's of its split (nested pool
  prefixes), so those are held once per split with a mask per member (``"shared"``:
  one :class:`Block` per split, one GEMM for the linear layer of its members; members
  of several folds solve together, each on its own fold's rows); else each member's
  rows are padded to the longest with a mask (``"padded"``), or, where the module has
  no per-row loss, each member's loss is computed on its own rows (``"separate"``). The
  dry run (:func:`._joint_layout.check_joint`) checks the layout against the module's own
  ``loss + penalty`` on two members.
* :func:`solve` runs batched Newton (:func:`._newton.newton`) where the module
  qualifies (:func:`._newton.newton_head`: a ``TabularClassifier`` without hidden
  layers, log or squared loss, an L-BFGS budget retrain converges in), member by member
  vectorised, converging quadratically in about 5 to 15 iterations whatever the
  members' conditioning. One L-BFGS over the sum mixes the members' curvature pairs and
  stops only when its slowest member does: about 7 times slower than retrain on
  ``abalone19``, where Newton is 2.5 times faster than retrain
  (``benchmarks/results/joint_solve.md``).
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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from vtss_lightning.search.strategies._newton import newton, newton_head
from vtss_lightning.search.strategies._stack import (
    MemberState,
    OptimizerSpec,
    member_rows,
    training_loss,
)

#: Largest gradient entry at which a member counts as converged (see the module doc).
CONVERGED_GRAD = 1e-7
#: Change of the summed loss below which the joint L-BFGS counts as stalled (float64).
STALLED = 1e-15
#: The solve's dtype: the float32 sum of K objectives resolves K times less than one.
SOLVE_DTYPE = torch.float64


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


def _float(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if t.is_floating_point() else t.dtype


def _own_rows(rows: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A member's own ``(x, y)`` (gathered from its split's rows when indexed)."""
    if len(rows) == 3:
        x, y, index = rows
        return x[index], y[index]
    return rows[0], rows[1]


#: How a joint objective holds the members' rows, in the dry run's order of preference:
#: the largest member's rows once with a mask per member (every member's rows are part
#: of them), a padded copy per member with a mask, or each member's rows unpadded.
MODES = ("shared", "padded", "separate")


#: A member's training rows: ``(x, y)`` its own, or ``(x, y, index)`` rows ``index`` of
#: its split's staged rows (members of one split pass the same ``x``).
Rows = tuple[torch.Tensor, ...]


@dataclass
class Block:
    """Members ``start:stop`` of a joint objective and the rows their data terms read.

    Shared rows (``x`` ``(N, ...)``) are one split's, held once with a mask per member;
    padded rows (``x`` ``(K_b, N, ...)``) are each member's own.
    """

    start: int
    stop: int
    whole: bool  # the block is every member of the objective: no slicing
    x: torch.Tensor
    y: torch.Tensor  # (K_b, N)
    weights: torch.Tensor  # (K_b, N): the row's (class) weight on a member's rows, else 0
    total: torch.Tensor | None = None  # (K_b,) sum of each member's weights

    def mean_loss(self, per_sample_loss: Callable, scores: torch.Tensor) -> torch.Tensor:
        """Each member's (class-weighted, masked) mean row loss at ``scores`` ``(K_b, N, C)``."""
        return (self.weights * member_rows(per_sample_loss, scores, self.y)).sum(1) / self.total

    def members(self, t):
        """The block's slice of a stacked tensor (or of a dict of them)."""
        if self.whole:
            return t
        if isinstance(t, dict):
            return {n: v[self.start : self.stop] for n, v in t.items()}
        return t[self.start : self.stop]


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
        Each member's training rows (:data:`Rows`), as retrain's full-batch loader has
        them: ``(x, y)``, or ``(x, y, index)`` into its split's rows (members of several
        splits then solve together, each split's rows one :class:`Block`).
    batched
        Use ``module.forward_stacked`` (checked to agree with ``forward``), else ``vmap``.
    mode
        One of :data:`MODES` (the dry run, :func:`._joint_layout.check_joint`, picks it); ``"shared"``
        becomes ``"padded"`` where the members' rows are not part of the largest one's.
    n_real
        Rows every member starts with (the real training rows), for ``"shared"`` with
        ``(x, y)`` rows.
    stacked_penalty
        Use ``module.penalty_stacked(params, counts)`` where the module has it (checked
        to agree with ``penalty``), else one ``functional_call`` of ``penalty`` a member.
    """

    def __init__(
        self,
        module: nn.Module,
        states: list[MemberState],
        data: list[Rows],
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
        self.counts = [len(d[2]) if len(d) == 3 else len(d[1]) for d in data]
        self.device = data[0][0].device
        self._tied = len(list(module.named_parameters(remove_duplicate=False))) != len(grads)
        self._loss = _Loss(module)
        self._penalty = _Penalty(module) if callable(getattr(module, "penalty", None)) else None
        self.stacked_penalty = stacked_penalty and callable(
            getattr(module, "penalty_stacked", None)
        )
        self._data: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.blocks = (shared_blocks(data, n_real, dtype) if mode == "shared" else None) or []
        self.mode = "padded" if mode == "shared" and not self.blocks else mode
        if self.mode == "separate":
            self._data = [(_cast(x, dtype), y) for x, y in map(_own_rows, data)]
            return
        self._forward = self._stacked_forward(batched)
        if self.mode == "padded":
            self.blocks = [self._padded([_own_rows(d) for d in data])]
        class_weights = _class_weights(module)
        for block in self.blocks:
            if class_weights is not None:
                block.weights = block.weights * _cast(class_weights, dtype)[block.y]
            block.total = block.weights.sum(1)

    def _stacked_forward(self, batched: bool) -> Callable:
        module, tied = self.module, self._tied
        if batched:
            return module.forward_stacked
        rows = None if self.mode == "shared" else 0
        return vmap(
            lambda p, b, x: functional_call(module, (p, b), (x,), tie_weights=tied),
            in_dims=(0, 0, rows),
        )

    def _padded(self, data: list[tuple[torch.Tensor, torch.Tensor]]) -> Block:
        """Every member's rows padded to the longest, masked."""
        n = max(self.counts)
        x0, y0 = data[0]
        x = x0.new_empty((self.size, n, *x0.shape[1:]), dtype=_float(x0, self.dtype))
        y = y0.new_empty((self.size, n, *y0.shape[1:]))
        weights = torch.zeros(self.size, n, dtype=self.dtype, device=self.device)
        for k, (xk, yk) in enumerate(data):
            m = len(yk)
            x[k, :m], y[k, :m], weights[k, :m] = xk, yk, 1
            x[k, m:], y[k, m:] = xk[:1], yk[:1]  # real rows: finite, masked out
        return Block(0, self.size, True, x, y, weights)

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.params.values() if p.requires_grad]

    def losses(self) -> torch.Tensor:
        """Each member's objective ``(K,)``: its loss on its own rows plus its penalty."""
        if self.mode == "separate":
            data = torch.stack([self._member_loss(k) for k in range(self.size)])
        elif len(self.blocks) == 1:
            data = self._block_loss(self.blocks[0])
        else:
            data = torch.cat([self._block_loss(b) for b in self.blocks])
        return data + self.penalties()

    def _block_loss(self, block: Block) -> torch.Tensor:
        """The (class-weighted) mean row loss of the block's members on their own rows."""
        scores = self._forward(block.members(self.params), block.members(self.buffers), block.x)
        return block.mean_loss(self.module.per_sample_loss, scores)

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


def shared_blocks(data: list[Rows], n_real: int | None, dtype: torch.dtype) -> list[Block] | None:
    """The ``"shared"`` layout: one :class:`Block` per run of members of one split.

    Indexed rows (``(x, y, index)``) need no check: a run's block is the union of its
    members' rows of the split (the largest member's, for nested prefixes), in the
    split's order. Own rows (``(x, y)``) are one block, verified by :func:`shared_rows`.
    """
    if len(data[0]) == 2:
        shared = shared_rows(data, n_real)
        if shared is None:
            return None
        x, y, index = shared
        return [_block(0, len(data), len(data), _cast(x, dtype), y, index, dtype)]
    if data[0][1].dim() != 1:
        return None
    blocks = []
    for start, stop in _runs([id(d[0]) for d in data]):
        x, y = data[start][0], data[start][1]
        indices = [data[k][2] for k in range(start, stop)]
        rows = torch.unique(torch.cat(indices))  # sorted: the split's order
        where = [torch.searchsorted(rows, index) for index in indices]
        blocks.append(_block(start, stop, len(data), _cast(x[rows], dtype), y[rows], where, dtype))
    return blocks


def _runs(keys: list) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of equal consecutive keys."""
    out, start = [], 0
    for k in range(1, len(keys) + 1):
        if k == len(keys) or keys[k] != keys[start]:
            out.append((start, k))
            start = k
    return out


def _block(
    start: int,
    stop: int,
    size: int,
    x: torch.Tensor,
    y: torch.Tensor,
    where: list[torch.Tensor],
    dtype: torch.dtype,
) -> Block:
    """Members ``start:stop`` sharing rows ``x, y``; member ``j``'s rows are ``where[j]``."""
    weights = torch.zeros(stop - start, len(y), dtype=dtype, device=x.device)
    for j, rows in enumerate(where):
        weights[j, rows] = 1
    ys = y.expand(stop - start, *y.shape).contiguous()
    return Block(start, stop, start == 0 and stop == size, x, ys, weights)


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
#: Solve qualifying linear heads by batched Newton (:mod:`._newton`; ``False``: the joint
#: L-BFGS only; benchmarks and tests compare the two).
USE_NEWTON = True
