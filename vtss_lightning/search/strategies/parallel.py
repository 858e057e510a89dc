"""``strategy="parallel"``: every candidate trained at once as one stacked model.

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
What cannot be stacked falls back to ``retrain`` with a one-line reason. A stack that
runs out of device memory is split in two and retried from where it started; a member
that does not fit even alone is scored NaN with the reason in its status.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator, Mapping

import torch

from vtss_lightning._random import seeded
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.guard import free_device_memory, is_out_of_memory
from vtss_lightning.search.strategies import _full_batch
from vtss_lightning.search.strategies._members import Member, settings_blocker
from vtss_lightning.search.strategies._stack import (
    MemberState,
    OptimizerSpec,
    Stack,
    activation_bytes,
    forward_stacked_agrees,
    initial_state,
    optimizer_spec,
    training_loss,
    without_metrics,
)
from vtss_lightning.search.strategies._stack import _first_line as first_line
from vtss_lightning.search.strategies.base import (
    BaseScorer,
    Job,
    Scored,
    clone_module,
    full_budget,
    is_full_batch,
)

SNAPSHOTS = ("best", "last")


class ParallelScorer(BaseScorer):
    """Score candidates by training them together as one stacked model.

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
        Default: 70% of the free GPU memory on CUDA, no limit on the CPU.
    keep_states
        Keep each member's weights so the winner can become the final model.
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
        self._batched = False  # the module's forward_stacked is used (checked in the dry run)
        self._spec: OptimizerSpec | None = None
        self._joint: _full_batch.Layout | None = None  # full-batch L-BFGS: the joint solve

    # ------------------------------------------------------------ scoring
    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        """Yield ``(candidate index, loss, seconds)`` as each stack finishes.

        A module that cannot be stacked trains one candidate at a time with the
        retrain recipe, guarded like ``retrain``.
        """
        if not self.prepare(dm):
            yield from super().score_many(dm, jobs)
            return
        members = self.members(dm, jobs)
        for chunk in self.chunks(members):
            self.train(dm, chunk, {m.index: m.budget for m in chunk})
            for m in chunk:
                yield self.result(m)

    def result(self, m: Member) -> tuple[int, float, float]:
        """``(index, loss, seconds)`` of a member whose training ended; drops its state."""
        if m.failed is not None:
            self.statuses[m.index] = m.failed
        self.finish(m)
        return m.index, m.loss(), m.seconds

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        if not self.prepare(dm):
            return super().score(dm, sizes)  # the retrain recipe
        return next(iter(self.score_many(dm, [(0, dict(sizes))])))[1]

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
        with seeded(self.seed):
            if not any(True for _ in base.parameters()) and hasattr(base, "configure_from_data"):
                base.configure_from_data(dm)
        if not any(True for _ in base.parameters()):
            return "the module has no parameters before fit (build it first)"
        if training_loss(base) is None:
            return "the module defines neither loss(scores, y) nor per_sample_loss(scores, y)"
        spec = optimizer_spec(base, also=(torch.optim.LBFGS,))
        if isinstance(spec, str):
            return spec
        joint = spec.cls is torch.optim.LBFGS
        reason = _full_batch.joint_blocker(base, spec) if joint else None
        if reason is not None:
            return reason
        base.to(device)
        self._full_state = {k: v.detach().cpu() for k, v in base.state_dict().items()}
        base = without_metrics(base)
        try:  # a two-member dry run: forward, backward, evaluation
            split = dm.active
            x, y = split.x_train[:2].to(device), split.y_train[:2].to(device)
            state = initial_state(base, device)
            batched = forward_stacked_agrees(base, state, x)
            if joint:
                xj, yj = split.x_train[:5].to(device), split.y_train[:5].to(device)
                layout = _full_batch.check_joint(base, state, xj, yj, batched)
                if isinstance(layout, str):
                    return layout
                self._joint = layout
            else:
                stack = Stack(base, [state, state], spec, batched)
                xs, ys = x.expand(2, *x.shape), y.expand(2, *y.shape)
                stack.step([(None, xs, ys)])
            Stack(base, [state, state], None, batched).balanced_losses(None, x, y, dm.num_classes)
        except Exception as err:  # noqa: BLE001 - anything vmap cannot do
            return f"cannot vmap {type(base).__name__}: {first_line(err)}"
        self._base, self._spec, self._batched = base, spec, batched
        return None

    def members(self, dm, jobs) -> list[Member]:
        self._dm = dm  # the split being trained (for the no-synthetic comparator)
        device = self.settings.device()
        full = is_full_batch(self._base)
        out = []
        for i, sizes in jobs:
            loader = dm.make_train_loader(sizes, full_batch=full)
            loader.x, loader.y = loader.x.to(device), loader.y.to(device)
            out.append(
                Member(
                    i,
                    dict(sizes),
                    loader,
                    full_budget(loader, self.settings),
                    initial_state(self._base, device),
                )
            )
        return out

    def chunks(self, members: list[Member]) -> list[list[Member]]:
        """Members per stack so that one stack fits ``memory_budget_mb``."""
        size = self._members_per_stack(members)
        if self._oom_cap is not None:  # a larger stack already ran out of memory
            size = min(size, self._oom_cap)
        self.chunk_size = size
        return [members[i : i + size] for i in range(0, len(members), size)]

    def _members_per_stack(self, members: list[Member]) -> int:
        budget = self.memory_budget_mb
        device = self.settings.device()
        if budget is None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = 0.7 * free / 2**20
        if budget is None or not members:
            return max(1, len(members))
        m = members[0]
        weights = sum(t.numel() * t.element_size() for t in m.state.weights().values())
        x = m.loader.x[: m.loader.batch_size]
        per_member = 6 * weights + 3 * activation_bytes(self._base, x) + 2 * x.numel() * 4
        if self._joint is not None:  # padded to the longest member, in float64
            x = max((m.loader.x for m in members), key=len)
            per_member = _full_batch.joint_member_bytes(self._base, self._spec, x)
        return max(1, min(len(members), int(budget * 2**20 // per_member)))

    # ------------------------------------------------------------ training
    def train(self, dm, members: list[Member], targets: dict[int, int]) -> None:
        """Train ``members`` (equal step counts) until each reaches its target step.

        Out of device memory, the members go back to where they started and train
        again as two smaller stacks (and so on down to one); a member that runs out of
        memory alone is marked failed and trains no further.
        """
        members = [m for m in members if m.failed is None]
        cap = self._oom_cap
        if cap is not None and len(members) > cap:
            for i in range(0, len(members), cap):
                self.train(dm, members[i : i + cap], targets)
            return
        snaps = [m.snapshot() for m in members]
        try:
            self._train(dm, members, targets)
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
                stacklevel=2,
            )
            self.train(dm, members, targets)

    def _train(self, dm, members: list[Member], targets: dict[int, int]) -> None:
        if self._joint is not None:
            self._solve(dm, members, targets)
            return
        split = dm.active
        device = self.settings.device()
        x_val, y_val = split.x_val.to(device), split.y_val.to(device)
        active = [m for m in members if m.steps < targets[m.index]]
        t0 = time.perf_counter()
        with seeded(self.seed + members[0].steps):
            while active:
                stack = Stack(self._base, [m.state for m in active], self._spec, self._batched)
                done = self._run(stack, active, targets, x_val, y_val, dm.num_classes)
                for m, state in zip(active, stack.unstack(), strict=True):
                    m.state = state
                active = [m for m in active if m not in done]
        elapsed = time.perf_counter() - t0
        steps = sum(max(1, targets[m.index]) for m in members)
        for m in members:
            m.seconds += elapsed * max(1, targets[m.index]) / steps

    def _run(self, stack: Stack, active, targets, x_val, y_val, num_classes) -> list[Member]:
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
                reached = m.steps >= targets[m.index]
                if reached:
                    done.append(m)
                if reached or (epoch_end and self.snapshot == "best"):
                    due.append(j)
            if due:
                self._evaluate(stack, active, due, x_val, y_val, num_classes)
            if done:
                return done

    def _evaluate(self, stack: Stack, active, due, x_val, y_val, num_classes) -> None:
        losses = stack.balanced_losses(
            None if len(due) == len(active) else due, x_val, y_val, num_classes
        )
        for loss, j in zip(losses, due, strict=True):
            m = active[j]
            m.evaluated_at = m.steps
            weights = stack.member_weights(j)
            if m.best_loss is None or self.snapshot == "last":
                m.best_loss, m.best = loss.clone(), {n: w.clone() for n, w in weights.items()}
                continue
            better = loss < m.best_loss  # stays on the device: no host sync per epoch
            m.best_loss = torch.where(better, loss, m.best_loss)
            m.best = {n: torch.where(better, w, m.best[n]) for n, w in weights.items()}

    # ------------------------------------------------ full-batch L-BFGS (joint)
    def _solve(self, dm, members: list[Member], targets: dict[int, int]) -> None:
        """Full-batch L-BFGS members solved as one problem (:mod:`._full_batch`), scored.

        The members of one call share their step target (retrain's epochs). A member the
        joint solve leaves unconverged is retrained alone with the retrain recipe, so
        every member ends at its own optimum or exactly at retrain's weights.
        """
        active = [m for m in members if m.steps < targets[m.index]]
        if not active:
            return
        split, device = dm.active, self.settings.device()
        val = (split.x_val.to(device), split.y_val.to(device), dm.num_classes)
        t0 = time.perf_counter()
        objective = _full_batch.JointObjective(
            self._base,
            [m.state for m in active],
            [(m.loader.x, m.loader.y) for m in active],
            self._batched,
            self._joint.mode,
            len(split.y_train),
            self._joint.stacked_penalty,
        )
        best = self.snapshot == "best"  # then every L-BFGS step (epoch) is scored
        taken, grads = _full_batch.solve(
            objective,
            self._spec,
            max(targets[m.index] - m.steps for m in active),
            (lambda obj: self._score_states(active, obj.states(), *val)) if best else None,
        )
        share = (time.perf_counter() - t0) / len(active)
        ok = _full_batch.converged(grads, self._spec).tolist()
        for m, state, good, grad in zip(
            active, objective.states(), ok, grads.tolist(), strict=True
        ):
            m.steps = targets[m.index]
            m.seconds += share
            m.state = state if good else self._retrained(dm, m, targets[m.index], grad, taken)
        self._score_states(active, [m.state for m in active], *val)

    def _score_states(self, members: list[Member], states, x_val, y_val, num_classes) -> None:
        stack = Stack(self._base, states, None, self._batched)
        self._evaluate(stack, members, list(range(len(members))), x_val, y_val, num_classes)

    def _retrained(self, dm, m: Member, target: int, grad: float, taken: int) -> MemberState:
        """The member trained alone with the retrain recipe for ``target`` L-BFGS steps
        (a halving rung: fewer than its budget); its status says why."""
        t0 = time.perf_counter()
        rung = target if target < m.budget else None
        model = self.fit(clone_module(self.template), dm, m.sizes, max_steps=rung)
        device = self.settings.device()
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        m.best_loss = None  # scored afresh on these weights
        m.seconds += time.perf_counter() - t0
        self.statuses[m.index] = (
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
        if keep and self.keep_states:
            self.keep(m.sizes, self._state_dict(m.best))
        if keep and not any(m.sizes.values()) and m.failed is None and m.best:
            model = copy.deepcopy(self._base)  # built and metric-free: the stacked keys
            model.load_state_dict({**model.state_dict(), **m.best})
            self.record_comparator(model, self._dm, m.sizes)
        m.state = MemberState({}, {})
        m.epoch_x = m.epoch_y = None

    def _state_dict(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        full = self._full_state  # the module's keys, metrics' persistent states included
        return {k: weights.get(k, v).detach().cpu().clone() for k, v in full.items()}
