"""``strategy="ray"``: the search's fits as the trials of one Ray Tune run.

The driver (the process running the search) enters each split as usual and *stages*
its jobs (the engine's two-phase call, :class:`~.base.StagedScorer`): every
candidate's training set (real rows + its pool prefix, already encoded) and the
split's real rows go into Ray's object store once, each trial fetching only its own.
After the last split, one Tune run trains every (split, candidate) job: when the
module can be stacked, a trial is a stack of candidates of one split trained by the
``parallel`` machinery (exactly that strategy's losses); otherwise a trial is one
candidate's ``retrain`` fit (fresh Lightning ``Trainer``, same seed, same batch
order). Losses come back as trial reports, handed to the engine as each trial
finishes; with ``keep_states`` each trial also returns its weights as a Tune
checkpoint so the winner can become the final model.

Tune runs quietly: no console reporter (whatever the verbosity, its lines name a
results folder that is removed after the run), no result files, and its log records
only when the search is verbose; a trial that raises gives its error to its
candidates' ``status``. Ray is optional (``pip install "vtss-lightning[ray]"``).
Without a running Ray the first search starts a local instance; to use a cluster,
start it (``ray start --head`` on one node, ``ray start --address=<head>:6379`` on the
others) and set ``RAY_ADDRESS`` or call ``ray.init(address=...)`` before the search.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from vtss_lightning.data.row_layout import standalone
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.strategies._ray_trial import (
    STATE_FILE,
    StagedJob,
    StagedSplit,
    TrialPlan,
    run_trial,
)
from vtss_lightning.search.strategies._ray_tune import (
    TuneRun,
    import_ray,
    quiet_tune,
    ray_session,
    trial_failure,
)
from vtss_lightning.search.strategies.base import (
    BaseScorer,
    Job,
    Scored,
    StagedScored,
    clone_module,
)
from vtss_lightning.search.strategies.settings import TrainerSettings

#: ``RayScorer(resources=...)`` keys as Ray's cluster resources name them.
RESOURCE_NAMES = {"cpu": "CPU", "gpu": "GPU"}


# --------------------------------------------------------------------- scorer
class RayScorer(BaseScorer):
    """Score all jobs of a search as the trials of one Ray Tune run.

    Parameters
    ----------
    template, settings, seed, keep_states
        As :class:`~vtss_lightning.search.strategies.base.BaseScorer`.
    resources
        Ray resources of one trial, default ``{"cpu": 1, "gpu": 1}`` when the driver
        sees a GPU, else ``{"cpu": 1}``.
    max_concurrent
        Trials at once (default: as many as the cluster's resources allow).
    stack_size
        Most candidates per trial for a stackable module. Default: a split's candidates
        spread over the trials the cluster can run at once (all of them in one trial
        when there are at least as many splits as such trials), each trial's stack
        chunked to its device's memory by the ``parallel`` machinery; ``1`` trains each
        candidate alone with the ``retrain`` fit.
    snapshot, memory_budget_mb
        Of the stacked trials, as :class:`~.parallel.ParallelScorer`.
    stacker
        The scorer class that trains a stack inside a trial (the strategy registry
        passes :class:`~.parallel.ParallelScorer`; strategies do not import each
        other). ``None``: every trial trains one candidate with the ``retrain`` fit.
    """

    #: Takes every split's jobs at once (the engine's two-phase call).
    scores_across_splits = True

    def __init__(
        self,
        template,
        settings: TrainerSettings,
        seed: int = 0,
        keep_states: bool = False,
        resources: Mapping[str, float] | None = None,
        max_concurrent: int | None = None,
        stack_size: int | None = None,
        snapshot: str = "last",
        memory_budget_mb: float | None = None,
        stacker: type | None = None,
    ) -> None:
        super().__init__(template, settings, seed, keep_states=keep_states)
        if stack_size is not None and stack_size < 1:
            raise VTSSError(f"stack_size must be at least 1, got {stack_size}")
        gpu = torch.cuda.is_available()
        self.resources = dict(resources or ({"cpu": 1, "gpu": 1} if gpu else {"cpu": 1}))
        self.max_concurrent = max_concurrent
        self.stack_size = stack_size
        self.snapshot = snapshot
        self.memory_budget_mb = memory_budget_mb
        self.stacker = stacker
        self.tune_runs = 0  # Tune runs started: one per run_staged with jobs
        self._staged: list[StagedJob] = []
        self._stacks: bool | None = None  # whether trials are stacks (checked once)
        self._last_split: int | None = None

    # ------------------------------------------------------- single-split call
    def score(self, dm, sizes: Mapping[int, int]) -> float:
        return next(iter(self.score_many(dm, [(0, dict(sizes))])))[1]

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        """One split's jobs as one Tune run; yield ``(candidate index, loss, seconds)``."""
        self.stage(dm, 0, jobs)
        for _, i, loss, secs in self.run_staged():
            yield i, loss, secs

    # ---------------------------------------------------------- two-phase call
    def stage(self, dm, split: int, jobs: list[Job]) -> None:
        """Put the split's rows and each job's training batches into the object store."""
        ray, _ = ray_session()
        self._stackable(dm)
        data = ray.put(StagedSplit.of(dm))
        for i, sizes in jobs:
            loader = self.train_loader(dm, sizes)  # a view of the pool's buffer: sent alone
            loader.x, loader.y = standalone(loader.x.cpu()), standalone(loader.y.cpu())
            job = StagedJob(split, i, dict(sizes), dm.active.name, data, ray.put(loader))
            self._staged.append(job)
        self._last_split = split

    def run_staged(self, verbose: bool = False) -> Iterator[StagedScored]:
        """Train every staged job in one Tune run; yield results as trials report."""
        jobs, self._staged = self._staged, []
        if not jobs:
            return
        _, tune = ray_session()
        plans = self.plans(jobs)
        if verbose:
            print(self._summary(jobs, plans), flush=True)
        self.tune_runs += 1
        with quiet_tune(verbose), tempfile.TemporaryDirectory(prefix="vtss_ray_") as storage:
            run = TuneRun(tune, lambda hooks: self._tuner(tune, plans, storage, hooks))
            reported = set()
            for t, result in run:  # as each trial reports
                reported.add(t)
                yield from self._reported(plans[t], json.loads(result["vtss"]))
            by_trial = {r.config["trial"]: r for r in run.grid}
            self._keep_states(plans, by_trial)
        for t, plan in enumerate(plans):
            if t not in reported:
                yield from self._failed(plan, trial_failure(by_trial.get(t)), verbose)

    def plans(self, jobs: list[StagedJob]) -> list[TrialPlan]:
        """The trials: stacks of one split's candidates, or one candidate each."""
        if not self._stacks:
            return [TrialPlan([j], False) for j in jobs]
        by_split: dict[int, list[StagedJob]] = {}
        for j in jobs:
            by_split.setdefault(j.split, []).append(j)
        share = max(1, self._slots() // len(by_split))  # trials at once per split
        out = []
        for group in by_split.values():
            width = self.stack_size or math.ceil(len(group) / share)
            out += [TrialPlan(group[k : k + width], True) for k in range(0, len(group), width)]
        return out

    # ----------------------------------------------------------------- helpers
    def _stackable(self, dm) -> bool:
        """Whether trials are stacks: checked once, on the first split, as ``parallel``
        checks it (its reason, when not, becomes ``fallback_reason``)."""
        if self._stacks is None:
            if self.stack_size == 1 or self.stacker is None:
                self._stacks = False
            else:
                probe = self.stacker(self.template, self.settings, self.seed, verbose=False)
                self._stacks = probe.prepare(dm)
                self.fallback_reason = probe.fallback_reason
        return self._stacks

    def _slots(self) -> int:
        """Trials the cluster can run at once with ``resources`` (and ``max_concurrent``)."""
        ray, _ = import_ray()
        total = ray.cluster_resources()
        fits = [
            total.get(RESOURCE_NAMES.get(k, k), 0.0) / v for k, v in self.resources.items() if v
        ]
        slots = int(min(fits)) if fits else 1
        if slots < 1:
            warnings.warn(
                f"VTSS ray: a trial asks for {self.resources}, more than the cluster has now "
                f"({total}); trials wait until it grows",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.max_concurrent:
            slots = min(slots, self.max_concurrent)
        return max(1, slots)

    def _summary(self, jobs: list[StagedJob], plans: list[TrialPlan]) -> str:
        if plans[0].stacked:
            width = max(len(p.jobs) for p in plans)
            how = f"stacks of up to {width} of one split's candidates"
        else:
            how = "one candidate each" + (
                f" ({self.fallback_reason})" if self.fallback_reason else ""
            )
        return (
            f"VTSS ray: {len(jobs)} fits as {len(plans)} trials of one Tune run ({how}); "
            f"{self.resources} per trial"
        )

    def _tuner(self, tune, plans: list[TrialPlan], storage: str, hooks: list):
        trainable = tune.with_parameters(
            run_trial,
            template=clone_module(self.template).cpu(),
            settings=self.settings,
            seed=self.seed,
            plans=plans,
            options={
                "snapshot": self.snapshot,
                "memory_budget_mb": self.memory_budget_mb,
                "stacker": self.stacker,
                "keep_states": self.keep_states,
            },
        )
        reports, stopper = hooks
        return tune.Tuner(
            tune.with_resources(trainable, self.resources),
            param_space={"trial": tune.grid_search(list(range(len(plans))))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=self.max_concurrent, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name="vtss",
                storage_path=storage,
                verbose=0,
                callbacks=[reports],
                stop=stopper,
            ),
        )

    def _reported(self, plan: TrialPlan, payload: dict) -> Iterator[StagedScored]:
        """The jobs of a trial that reported, with their statuses and comparator."""
        if payload.get("fallback") and self.fallback_reason is None:
            self.fallback_reason = f"inside a Ray trial: {payload['fallback']}"
        members = payload["members"]
        for j in plan.jobs:
            loss, secs, status = members[str(j.index)]
            if status is not None:
                self.statuses[j.index] = status
            if not any(j.sizes.values()) and payload.get("comparator") is not None:
                self.comparators[j.name] = payload["comparator"]
            yield j.split, j.index, float(loss), float(secs)

    def _failed(self, plan: TrialPlan, failure: str, verbose: bool) -> Iterator[StagedScored]:
        """The jobs of a trial that gave no report: NaN, the trial's error as status."""
        if verbose:
            where = ", ".join(f"{j.name} #{j.index}" for j in plan.jobs)
            print(f"VTSS ray: the trial of {where} {failure}", flush=True)
        for j in plan.jobs:
            self.statuses[j.index] = failure
            yield j.split, j.index, math.nan, 0.0

    def _keep_states(self, plans: list[TrialPlan], by_trial: dict) -> None:
        """The weights trials of the last staged split checkpointed (``keep_states``)."""
        if not self.keep_states:
            return
        for t, plan in enumerate(plans):
            r = by_trial.get(t)
            if plan.jobs[0].split != self._last_split or r is None or r.checkpoint is None:
                continue
            with r.checkpoint.as_directory() as d:
                states = torch.load(Path(d) / STATE_FILE, weights_only=True)
            for j in plan.jobs:
                if j.index in states:
                    self.keep(j.sizes, states[j.index])
