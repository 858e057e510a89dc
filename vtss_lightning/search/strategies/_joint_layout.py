"""Whether and how the full-batch candidates of a module are solved as one problem.

:func:`joint_blocker` says why a module's full-batch L-BFGS candidates cannot be solved
jointly (:mod:`._full_batch`); :func:`check_joint` is the dry run that picks how the
joint objective holds the rows (a :class:`Layout`); :func:`joint_member_bytes` sizes a
member of a joint solve for the memory budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from vtss_lightning.search.strategies._full_batch import (
    MODES,
    SOLVE_DTYPE,
    JointObjective,
    _cast,
)
from vtss_lightning.search.strategies._stack import (
    MemberState,
    OptimizerSpec,
    activation_bytes,
    training_loss,
)


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


def joint_member_bytes(
    module: nn.Module, spec: OptimizerSpec, x: torch.Tensor, rows: int | None = None
) -> int:
    """Rough bytes one member of a joint solve needs (float64 rows, activations, history).

    ``x``: the member's rows, or a sample of them when ``rows`` gives their number
    (activations and rows scale with it).
    """
    rows = len(x) if rows is None else rows
    per_row = rows / max(1, len(x))
    weights = sum(p.numel() for p in module.parameters()) * 8
    history = int(spec.groups[0][1].get("history_size", 100))
    scale = 8 // max(1, x.element_size())
    hessian = 4 * 8 * sum(p.numel() for p in module.parameters()) ** 2  # Newton's, a few
    return int(
        (2 * history + 8) * weights
        + hessian
        + 4 * scale * activation_bytes(module, x) * per_row
        + 2 * scale * (x.numel() * x.element_size()) * per_row
    )
