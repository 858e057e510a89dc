"""The pieces of the stacked strategies around the stack itself.

:class:`Member` is one candidate of one split inside a stack (its batch stream, its
split's rows, step budget and weights); :class:`StackedRungs` offers stacked training
to successive halving; :func:`settings_blocker` says which trainer settings the
stacked loop cannot replay.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from vtss_lightning.search.strategies._joint_layout import (
    Layout,
    check_joint,
    joint_member_bytes,
)
from vtss_lightning.search.strategies._stack import (
    MemberState,
    OptimizerSpec,
    Stack,
    activation_bytes,
    forward_stacked_agrees,
    initial_state,
)
from vtss_lightning.search.strategies._stack import _first_line as first_line
from vtss_lightning.search.strategies._staged import SplitView, batch_of, head_rows, row_count
from vtss_lightning.search.strategies.base import Job, Scored

if TYPE_CHECKING:
    from vtss_lightning.search.strategies.parallel import ParallelScorer


@dataclass
class Member:
    """One candidate of one split inside the parallel trainer: its data stream, its
    split (validation rows, for scoring), budget, state and what it was trained to."""

    index: int
    sizes: dict[int, int]
    loader: object  # IndexedBatches or TensorBatches: batch_size, next_order(), rows
    budget: int  # optimizer steps of a full retrain fit
    state: MemberState
    split: SplitView | None = None
    steps: int = 0
    pos: int = 0
    order: torch.Tensor | None = None  # this pass's row permutation
    target: int = 0  # the step count the current training call brings it to
    best_loss: torch.Tensor | None = None
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    evaluated_at: int = -1
    seconds: float = 0.0
    failed: str | None = None
    note: str | None = None  # how it was trained differently (its status)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos == 0:
            self.order = self.loader.next_order()
        return batch_of(self.loader, self.order, self.pos, self.pos + self.loader.batch_size)

    def advance(self, rows: int) -> bool:
        """Count one step of ``rows`` rows; True when it ended an epoch."""
        self.steps += 1
        self.pos += rows
        if self.pos >= row_count(self.loader):
            self.pos = 0
            return True
        return False

    def snapshot(self) -> tuple:
        """Everything a stacked run changes, to restart from here after running out of memory."""
        return (
            self.state, self.steps, self.pos, self.order, self.best_loss, self.best,
            self.evaluated_at, self.loader._passes,
        )  # fmt: skip

    def restore(self, snap: tuple) -> None:
        (
            self.state, self.steps, self.pos, self.order, self.best_loss, self.best,
            self.evaluated_at, self.loader._passes,
        ) = snap  # fmt: skip

    def keep(self, loss: torch.Tensor, weights: dict[str, torch.Tensor], best: bool) -> None:
        """Take the scored weights (``best``: only where the loss improved)."""
        self.evaluated_at = self.steps
        if self.best_loss is None or not best:
            self.best_loss, self.best = loss.clone(), {n: w.clone() for n, w in weights.items()}
            return
        better = loss < self.best_loss  # stays on the device: no host sync per epoch
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.best = {n: torch.where(better, w, self.best[n]) for n, w in weights.items()}

    def loss(self) -> float:
        if self.failed is not None:
            return math.nan
        value = math.inf if self.best_loss is None else float(self.best_loss)
        return value if math.isfinite(value) else math.nan


#: Rows of a member a memory estimate runs the module on (scaled to all its rows).
SAMPLE_ROWS = 4096


def member_bytes(module: nn.Module, spec: OptimizerSpec, joint: bool, members: list[Member]) -> int:
    """Rough bytes one of ``members`` needs in a stack (the largest, for a joint solve)."""
    if joint:  # float64 rows, Newton's or L-BFGS's state
        m = max(members, key=lambda m: row_count(m.loader))
        x = head_rows(m.loader, SAMPLE_ROWS)
        return joint_member_bytes(module, spec, x, row_count(m.loader))
    m = members[0]
    weights = sum(t.numel() * t.element_size() for t in m.state.weights().values())
    x = head_rows(m.loader, m.loader.batch_size)
    return 6 * weights + 3 * activation_bytes(module, x) + 2 * x.numel() * 4


def candidate_major(members: list[Member]) -> list[Member]:
    """Staged members (split after split) reordered as every split's first job, then
    every split's second, ...: chunks then hold alike candidates of several folds."""
    seen: dict[int | None, int] = {}
    position = []
    for m in members:
        position.append((seen.get(m.split.index, 0), m.split.index))
        seen[m.split.index] = position[-1][0] + 1
    order = sorted(range(len(members)), key=position.__getitem__)
    return [members[j] for j in order]


def dry_run(
    dm, base: nn.Module, spec: OptimizerSpec, joint: bool, device: torch.device
) -> tuple[Layout | None, bool] | str:
    """Two members of the active split through forward, backward and evaluation:
    ``(joint layout or None, forward_stacked used)``, or why it fails (one line)."""
    try:
        split = dm.active
        x, y = split.x_train[:2].to(device), split.y_train[:2].to(device)
        state = initial_state(base, device)
        batched = forward_stacked_agrees(base, state, x)
        layout = None
        if joint:
            xj, yj = split.x_train[:5].to(device), split.y_train[:5].to(device)
            layout = check_joint(base, state, xj, yj, batched)
            if isinstance(layout, str):
                return layout
        else:
            stack = Stack(base, [state, state], spec, batched)
            stack.step([(None, x.expand(2, *x.shape), y.expand(2, *y.shape))])
        Stack(base, [state, state], None, batched).balanced_losses(None, x, y, dm.num_classes)
    except Exception as err:  # noqa: BLE001 - anything vmap cannot do
        return f"cannot vmap {type(base).__name__}: {first_line(err)}"
    return layout, batched


def settings_blocker(settings) -> str | None:
    """Trainer settings the stacked loop does not replay, as the reason (else ``None``).

    The stacked loop counts optimizer steps (``max_epochs`` passes, capped by
    ``max_steps``); ``min_epochs``/``min_steps`` only delay an early stop, which the
    stacked loop never makes, so they change nothing there. ``max_time`` is a
    wall-clock budget per candidate fit that a stack of members cannot split fairly.
    """
    kw = settings.kwargs
    if kw.get("max_time") is not None:
        return (
            f"max_time ({kw['max_time']}) is a wall-clock budget per candidate fit, which "
            "the stacked loop (counting steps) cannot honour; only retrain does"
        )
    if settings.callbacks:
        names = ", ".join(type(c).__name__ for c in settings.callbacks)
        return f"the trainer's callbacks ({names}) shape training; only retrain replays them"
    if str(kw.get("precision") or "32-true") not in ("32", "32-true"):
        return f"precision {kw['precision']} is not replayed by the stacked loop"
    if kw.get("gradient_clip_val"):
        return "gradient clipping is per model and not replayed by the stacked loop"
    if (kw.get("accumulate_grad_batches") or 1) != 1:
        return "accumulate_grad_batches is not replayed by the stacked loop"
    if kw.get("limit_train_batches") not in (None, 1, 1.0):
        return "limit_train_batches is not replayed by the stacked loop"
    devices = kw.get("devices")
    if (
        kw.get("strategy") not in (None, "auto")
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, list | tuple) and len(devices) > 1)
    ):
        return "several devices per candidate (DDP) need retrain"
    return None


class StackedRungs:
    """Halving rungs as stacked models: survivors continue from where they stopped.

    Offered to :class:`~vtss_lightning.search.strategies.halving.HalvingScorer` by the
    strategy registry; ``begin`` returns ``None`` when the module cannot be stacked
    (the halving then runs on its fallback rungs, with ``fallback_reason`` set).
    """

    def __init__(self, scorer: ParallelScorer) -> None:
        self.scorer = scorer
        self.statuses = scorer.statuses
        self._members: list[Member] = []

    @property
    def fallback_reason(self) -> str | None:
        return self.scorer.fallback_reason

    def begin(self, dm, jobs: list[Job]) -> list[int] | None:
        if not self.scorer.prepare(dm):
            return None
        self._members = self.scorer.members(dm, jobs)
        return [m.budget for m in self._members]

    def advance(self, dm, alive: list[int], steps: int) -> dict[int, float]:
        for chunk in self.scorer.chunks([self._members[j] for j in alive]):
            self.scorer.train(chunk, steps)
        return {j: self._members[j].loss() for j in alive}

    def prune(self, j: int) -> float:
        m = self._members[j]
        if m.failed is not None:
            self.statuses[m.index] = m.failed
        self.scorer.finish(m, keep=False)
        return m.seconds

    def complete(self, dm, alive: list[int]) -> Iterator[Scored]:
        for chunk in self.scorer.chunks([self._members[j] for j in alive]):
            self.scorer.train(chunk)
            for m in chunk:
                yield self.scorer.result(m)
