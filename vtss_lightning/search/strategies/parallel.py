"""``strategy="parallel"``: every candidate of every fold trained at once as stacked models.

Each member replays exactly what :class:`RetrainScorer` would do for its candidate:
the template's initial weights, the module's own optimizer and loss, and batches of
its *own* training set (real rows + its pool prefix) in the order the DataModule's
loader gives them, for ``max_epochs`` passes over that set (capped by ``max_steps``).
All members of a stack take their optimizer steps together; a member that has used
its budget leaves the stack, so the work is the sum of the candidates' steps, done
in wide vectorised steps. By default (``snapshot="last"``) a member is scored on
its final weights like ``retrain``; ``snapshot="best"`` scores every member on the
real validation rows after each of its epochs and keeps its best epoch (early
stopping per candidate, which selects differently from retrain). Differences from
``retrain`` either way: Dropout draws different masks per member, and Lightning hooks
of the module other than ``forward``/``loss``/``configure_optimizers`` are not run.
Full-batch L-BFGS candidates of a convex model (``TabularClassifier()``'s logistic
regression) are instead solved as one problem, one L-BFGS over the sum of the members'
objectives, whose minimiser is each member's own optimum (:mod:`._full_batch`); a member
that problem leaves unconverged is retrained alone.

Folds are stacked with candidates: the scorer takes the engine's two-phase call
(``scores_across_splits``, the hold-out included). While the engine is inside each
split, :meth:`stage` keeps what that split's members need (:class:`~._staged.SplitView`:
the real rows and each class's largest pool prefix copied once per split, the
validation rows; a member's rows are an index into them); then :meth:`run_staged`
trains the (fold x candidate) grid as stacks, members of any folds whose input rows
have the same shape together, as many per stack as ``memory_budget_mb`` allows (by
default 70% of the free GPU memory, half the available memory on the CPU). A joint
solve holds each fold's rows once (one block per fold). A member's loss and weights do
not depend on its stack mates (its own rows, batches and validation rows; a joint
solve's up to its tolerance), so a resumed search, which stages only the jobs still to
do, ends as the uninterrupted one.

What cannot be stacked falls back to ``retrain`` with a one-line reason (under the
two-phase call, scored as each split is staged). A stack that runs out of device memory
is split in two and retried from where it started; a member that does not fit even
alone is scored NaN with the reason in its status.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from vtss_lightning._random import seeded
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.guard import free_device_memory, is_out_of_memory
from vtss_lightning.search.strategies import _full_batch
from vtss_lightning.search.strategies._joint_layout import Layout, joint_blocker
from vtss_lightning.search.strategies._members import (
    Member,
    candidate_major,
    dry_run,
    member_bytes,
    settings_blocker,
)
from vtss_lightning.search.strategies._stack import (
    MemberState,
    OptimizerSpec,
    Stack,
    initial_state,
    optimizer_spec,
    training_loss,
    without_metrics,
)
from vtss_lightning.search.strategies._staged import (
    SplitView,
    default_budget_mb,
    grouped,
    joint_rows,
    largest_sizes,
)
from vtss_lightning.search.strategies.base import (
    BaseScorer,
    Job,
    Scored,
    StagedScored,
    clone_module,
    full_budget,
    is_full_batch,
)

SNAPSHOTS = ("best", "last")


class ParallelScorer(BaseScorer):
    """Score candidates by training them together as stacked models.

    Parameters
    ----------
    template, settings, seed
        As :class:`~vtss_lightning.search.strategies.base.BaseScorer`, whose retrain
        recipe is the fallback.
    snapshot
        ``"last"``: each member's score and weights are those of its final step, like
        ``retrain``; ``"best"``: of its best epoch by balanced validation loss.
    memory_budget_mb
        Memory the stacked training may use; members are trained in chunks that fit.
        Default: 70% of the free GPU memory on CUDA, half the available memory on the CPU.
    keep_states
        Keep each member's weights so the winner can become the final model (under
        the two-phase call: the last staged split's, as ``trained_state`` promises).
    verbose
        Print the reason when falling back to ``retrain``.
    """

    def __init__(
        self,
        template,
        settings,
        seed: int = 0,
        snapshot: str = "last",
        memory_budget_mb: float | None = None,
        keep_states: bool = False,
        verbose: bool = True,
        name: str = "parallel",
    ) -> None:
        super().__init__(template, settings, seed, keep_states=keep_states)
        self.name = name  # the strategy as the user named it, in the fallback line
        if snapshot not in SNAPSHOTS:
            raise VTSSError(f"snapshot must be 'best' or 'last', got {snapshot!r}")
        self.snapshot = snapshot
        self.memory_budget_mb = memory_budget_mb
        self.verbose = verbose
        self.chunk_size: int | None = None
        self._oom_cap: int | None = None  # members per stack after running out of memory
        self._base = None
        self._full_state: dict[str, torch.Tensor] = {}
        self._bases: dict[tuple, tuple[nn.Module, dict]] = {}  # by input row shape
        self._from_data = False  # the template was built from the data (per row shape)
        self._batched = False  # the module's forward_stacked is used (checked in the dry run)
        self._spec: OptimizerSpec | None = None
        self._joint: Layout | None = None  # full-batch L-BFGS: the joint solve
        self._staged: list[Member] = []  # the two-phase call's members, all splits
        self._ready: list[tuple] = []  # results scored while staging (retrain fallback)
        self._keep_split: int | None = None  # the last staged split (keep_states)

    @property
    def scores_across_splits(self) -> bool:
        """Take every split's jobs at once (the engine's two-phase call: folds stack too),
        unless the module is known not to stack: retrain then runs split by split, each
        fit recorded as it ends (staged, its results would wait for the last split)."""
        return self.fallback_reason is None and settings_blocker(self.settings) is None

    # ------------------------------------------------------------ scoring
    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        """Yield ``(candidate index, loss, seconds)`` as each stack finishes.

        A module that cannot be stacked trains one candidate at a time with the
        retrain recipe, guarded like ``retrain``.
        """
        if not self.prepare(dm):
            yield from super().score_many(dm, jobs)
            return
        for chunk in self.chunks(self.members(dm, jobs)):
            self.train(chunk)
            for m in chunk:
                yield self.result(m)

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        if not self.prepare(dm):
            return super().score(dm, sizes)  # the retrain recipe
        return next(iter(self.score_many(dm, [(0, dict(sizes))])))[1]

    def stage(self, dm, split: int, jobs: list[Job]) -> None:
        """Keep what the jobs of split ``split`` (the active one) need; train nothing.

        A module that cannot be stacked is scored now with the retrain recipe (it needs
        the active split), its results kept for :meth:`run_staged`.
        """
        self._keep_split = split
        if not self.prepare(dm):
            for i, loss, secs in super().score_many(dm, jobs):
                self._ready.append((split, i, loss, secs, self.statuses.pop(i, None)))
            return
        self._staged.extend(self.members(dm, jobs, split))

    def run_staged(self, verbose: bool = False) -> Iterator[StagedScored]:
        """Train every staged member, folds and candidates stacked together by input
        shape in chunks that fit the memory budget; yield ``(split, index, loss,
        seconds)`` as each stack finishes."""
        ready, self._ready = self._ready, []
        for split, i, loss, secs, status in ready:
            self._set_status(i, status)
            yield split, i, loss, secs
        members, self._staged = candidate_major(self._staged), []
        for group in grouped(members, lambda m: m.split.shape):
            for chunk in self.chunks(group):
                chunk.sort(key=lambda m: m.split.index)  # a fold's members side by side
                self.train(chunk)
                for m in chunk:
                    i, loss, secs = self.result(m, staged=True)
                    yield m.split.index, i, loss, secs

    def result(self, m: Member, staged: bool = False) -> tuple[int, float, float]:
        """``(index, loss, seconds)`` of a member whose training ended; drops its state.

        Its status (why it failed, how it was trained) is set for the engine to copy;
        ``staged``: cleared when it has none (statuses are keyed by candidate index,
        and the same candidate of another fold may have left one).
        """
        status = m.failed if m.failed is not None else m.note
        if status is not None or staged:
            self._set_status(m.index, status)
        self.finish(m)
        return m.index, m.loss(), m.seconds

    def _set_status(self, index: int, status: str | None) -> None:
        if status is None:
            self.statuses.pop(index, None)
        else:
            self.statuses[index] = status

    # --------------------------------------------------------- preparation
    def prepare(self, dm) -> bool:
        """Check once that the template stacks; on failure set ``fallback_reason``."""
        if self._spec is not None:
            return True
        if self.fallback_reason is None:
            self.fallback_reason = self._blocker(dm)
            if self.fallback_reason is not None and self.verbose:
                print(
                    f"VTSS {self.name}: training one candidate at a time (retrain): "
                    f"{self.fallback_reason}",
                    flush=True,
                )
        return self._spec is not None

    def _blocker(self, dm) -> str | None:
        """Why the template cannot be stacked (``None``: it can; the dry run is kept)."""
        reason = settings_blocker(self.settings)
        if reason is not None:
            return reason
        if getattr(dm, "transform", None) is not None:
            return "the DataModule augments real images per batch (transforms=), not replayed"
        base = clone_module(self.template)
        if not getattr(base, "automatic_optimization", True):
            return "the module uses manual optimization"
        device = self.settings.device()
        from_data = not any(True for _ in base.parameters()) and hasattr(
            base, "configure_from_data"
        )
        with seeded(self.seed):
            if from_data:
                base.configure_from_data(dm)
        if not any(True for _ in base.parameters()):
            return "the module has no parameters before fit (build it first)"
        if training_loss(base) is None:
            return "the module defines neither loss(scores, y) nor per_sample_loss(scores, y)"
        spec = optimizer_spec(base, also=(torch.optim.LBFGS,))
        if isinstance(spec, str):
            return spec
        joint = spec.cls is torch.optim.LBFGS
        reason = joint_blocker(base, spec) if joint else None
        if reason is not None:
            return reason
        base.to(device)
        full = {k: v.detach().cpu() for k, v in base.state_dict().items()}
        base = without_metrics(base)
        outcome = dry_run(dm, base, spec, joint, device)
        if isinstance(outcome, str):
            return outcome
        self._joint, self._batched, self._spec = *outcome, spec
        self._base, self._full_state, self._from_data = base, full, from_data
        self._bases[tuple(dm.active.x_train.shape[1:])] = (base, full)
        return None

    def members(self, dm, jobs: list[Job], split: int | None = None) -> list[Member]:
        """The jobs of the active split as members; ``split``: its index in a staged search."""
        self._dm = dm  # the split being trained (for checks)
        device = self.settings.device()
        view = SplitView(dm, largest_sizes(jobs), device, split)
        base = self._base_for(view)
        full = is_full_batch(base)
        out = []
        for i, sizes in jobs:
            loader = view.loader(sizes, full_batch=full)
            budget = full_budget(loader, self.settings)
            state = initial_state(base, device)
            out.append(Member(i, dict(sizes), loader, budget, state, split=view))
        return out

    def _base_for(self, view: SplitView) -> nn.Module:
        """The built template for the split's input row shape (one per shape when the
        template is built from the data, as each fold's retrain fit builds its own)."""
        return self._base_entry(view)[0]

    def _base_entry(self, view: SplitView) -> tuple[nn.Module, dict]:
        shape = view.shape
        if shape not in self._bases:
            if not self._from_data:
                return self._base, self._full_state  # built once: one shape fits
            base = clone_module(self.template)
            with seeded(self.seed):
                base.configure_from_data(view)
            base.to(self.settings.device())
            full = {k: v.detach().cpu() for k, v in base.state_dict().items()}
            self._bases[shape] = (without_metrics(base), full)
        return self._bases[shape]

    def chunks(self, members: list[Member]) -> list[list[Member]]:
        """Members per stack so that one stack fits ``memory_budget_mb``."""
        size = self._members_per_stack(members)
        if self._oom_cap is not None:  # a larger stack already ran out of memory
            size = min(size, self._oom_cap)
        self.chunk_size = size
        return [members[i : i + size] for i in range(0, len(members), size)]

    def _members_per_stack(self, members: list[Member]) -> int:
        budget = self.memory_budget_mb
        if budget is None:
            budget = default_budget_mb(self.settings.device())
        if budget is None or not members:
            return max(1, len(members))
        base = self._base_for(members[0].split)
        per_member = member_bytes(base, self._spec, self._joint is not None, members)
        return max(1, min(len(members), int(budget * 2**20 // per_member)))

    # ------------------------------------------------------------ training
    def train(self, members: list[Member], steps: int | None = None) -> None:
        """Train ``members`` (of one input shape) to ``steps`` optimizer steps each
        (``None``: each to its full budget; a number: a halving rung).

        Out of device memory, the members go back to where they started and train
        again as two smaller stacks (and so on down to one); a member that runs out of
        memory alone is marked failed and trains no further.
        """
        for m in members:
            m.target = m.budget if steps is None else steps
        self._guarded([m for m in members if m.failed is None])

    def _guarded(self, members: list[Member]) -> None:
        cap = self._oom_cap
        if cap is not None and len(members) > cap:
            for i in range(0, len(members), cap):
                self._guarded(members[i : i + cap])
            return
        snaps = [m.snapshot() for m in members]
        try:
            self._train(members)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
            if not is_out_of_memory(exc):
                raise
            free_device_memory()
            for m, snap in zip(members, snaps, strict=True):
                m.restore(snap)
            if len(members) == 1:
                members[0].failed = (
                    "failed: out of memory in the stacked loop even alone "
                    f"(batch size {members[0].loader.batch_size}); strategy='retrain' retries "
                    "with smaller batches"
                )
                return
            self._oom_cap = self.chunk_size = len(members) // 2
            warnings.warn(
                f"VTSS parallel: out of memory with {len(members)} members per stack; "
                f"retrying with {self._oom_cap}",
                RuntimeWarning,
                stacklevel=3,
            )
            self._guarded(members)

    def _train(self, members: list[Member]) -> None:
        if not members:
            return
        if self._joint is not None:
            self._solve(members)
            return
        base = self._base_for(members[0].split)
        active = [m for m in members if m.steps < m.target]
        t0 = time.perf_counter()
        with seeded(self.seed + members[0].steps):
            while active:
                stack = Stack(base, [m.state for m in active], self._spec, self._batched)
                done = {id(m) for m in self._run(stack, active)}
                for m, state in zip(active, stack.unstack(), strict=True):
                    m.state = state
                active = [m for m in active if id(m) not in done]
        elapsed = time.perf_counter() - t0
        steps = sum(max(1, m.target) for m in members)
        for m in members:
            m.seconds += elapsed * max(1, m.target) / steps

    def _run(self, stack: Stack, active: list[Member]) -> list[Member]:
        """Step the stack until a member reaches its target; returns those that did."""
        while True:
            batches = [m.next_batch() for m in active]
            lengths = [len(b[1]) for b in batches]
            groups = []
            for n in dict.fromkeys(lengths):
                idx = [j for j, length in enumerate(lengths) if length == n]
                xs = torch.stack([batches[j][0] for j in idx])
                ys = torch.stack([batches[j][1] for j in idx])
                groups.append((None if len(idx) == len(active) else idx, xs, ys))
            stack.step(groups)
            due, done = [], []
            for j, (m, n) in enumerate(zip(active, lengths, strict=True)):
                epoch_end = m.advance(n)
                reached = m.steps >= m.target
                if reached:
                    done.append(m)
                if reached or (epoch_end and self.snapshot == "best"):
                    due.append(j)
            if due:
                self._evaluate(stack, active, due)
            if done:
                return done

    def _evaluate(self, stack: Stack, active: list[Member], due: list[int]) -> None:
        """Score the due members on their own split's validation rows; keep the best."""
        for part in grouped(due, lambda j: id(active[j].split)):
            split = active[part[0]].split
            idx = None if len(part) == len(active) else part
            losses = stack.balanced_losses(idx, split.x_val, split.y_val, split.num_classes)
            for loss, j in zip(losses, part, strict=True):
                active[j].keep(loss, stack.member_weights(j), self.snapshot == "best")

    # ------------------------------------------------ full-batch L-BFGS (joint)
    def _solve(self, members: list[Member]) -> None:
        """Full-batch L-BFGS members solved as one problem (:mod:`._full_batch`), scored.

        Members of one fold are side by side (one rows block per fold). A member the
        joint solve leaves unconverged is retrained alone with the retrain recipe on its
        own split's rows, so every member ends at its own optimum or exactly at
        retrain's weights.
        """
        active = [m for m in members if m.steps < m.target]
        if not active:
            return
        t0 = time.perf_counter()
        objective = _full_batch.JointObjective(
            self._base_for(active[0].split),
            [m.state for m in active],
            [joint_rows(m.loader) for m in active],
            self._batched,
            self._joint.mode,
            active[0].split.n_real,
            self._joint.stacked_penalty,
        )
        best = self.snapshot == "best"  # then every L-BFGS step (epoch) is scored
        taken, grads = _full_batch.solve(
            objective,
            self._spec,
            max(m.target - m.steps for m in active),
            (lambda obj: self._score_states(active, obj.states())) if best else None,
        )
        share = (time.perf_counter() - t0) / len(active)
        ok = _full_batch.converged(grads, self._spec).tolist()
        for m, state, good, grad in zip(
            active, objective.states(), ok, grads.tolist(), strict=True
        ):
            m.steps = m.target
            m.seconds += share
            m.state = state if good else self._retrained(m, grad, taken)
        self._score_states(active, [m.state for m in active])

    def _score_states(self, members: list[Member], states: list[MemberState]) -> None:
        stack = Stack(self._base_for(members[0].split), states, None, self._batched)
        self._evaluate(stack, members, list(range(len(members))))

    def _retrained(self, m: Member, grad: float, taken: int) -> MemberState:
        """The member trained alone with the retrain recipe for ``m.target`` L-BFGS
        steps (a halving rung: fewer than its budget) on its own split's rows (that
        split may no longer be active); its status says why."""
        t0 = time.perf_counter()
        rung = m.target if m.target < m.budget else None
        model = self.fit(clone_module(self.template), m.split, m.sizes, max_steps=rung)
        device = self.settings.device()
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        m.best_loss = None  # scored afresh on these weights
        m.seconds += time.perf_counter() - t0
        m.note = (
            f"trained alone (retrain recipe): the joint L-BFGS left its largest gradient "
            f"entry at {grad:.1e} (> {_full_batch.acceptance(self._spec):g}) after {taken} "
            "L-BFGS step(s)"
        )
        return MemberState(
            {n: params[n].detach().to(device).clone() for n in m.state.params},
            {n: buffers[n].detach().to(device).clone() for n in m.state.buffers},
        )

    def finish(self, m: Member, keep: bool = True) -> None:
        """Keep the member's chosen weights for reuse and drop its training state."""
        base, full = self._base_entry(m.split)
        if keep and self.keep_states and m.split.index in (None, self._keep_split):
            self.keep(m.sizes, self._state_dict(full, m.best))
        if keep and not any(m.sizes.values()) and m.failed is None and m.best:
            model = copy.deepcopy(base)  # built and metric-free: the stacked keys
            model.load_state_dict({**model.state_dict(), **m.best})
            self.record_comparator(model, m.split, m.sizes)
        m.state = MemberState({}, {})
        m.order = None

    @staticmethod
    def _state_dict(full: dict, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The module's keys (metrics' persistent states included), the member's weights."""
        return {k: weights.get(k, v).detach().cpu().clone() for k, v in full.items()}
