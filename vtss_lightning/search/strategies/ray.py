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

import copy
import json
import logging
import math
import os
import queue
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vtss_lightning.data.loaders import eval_batches
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.strategies.base import (
    BaseScorer,
    Job,
    Scored,
    StagedScored,
    clone_module,
    state_key,
)
from vtss_lightning.search.strategies.settings import TrainerSettings

STATE_FILE = "vtss_state.pt"
#: The Tune run's environment (official Tune variables): the legacy console engine,
#: silent at ``verbose=0`` (the default engine prints its setup box and the results
#: folder whatever the verbosity), and no CSV/JSON/TensorBoard result files.
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
#: Loggers of the Tune run: silent unless the search is verbose, and then without
#: the INFO records that name the results folder (removed after the run).
TUNE_LOGGERS = ("ray.tune", "ray.train", "ray.air")
#: What complains only of the result files that :data:`TUNE_ENV` turns off.
RESULT_FILES_LOGGER = "ray.tune.analysis.experiment_analysis"
#: ``RayScorer(resources=...)`` keys as Ray's cluster resources name them.
RESOURCE_NAMES = {"cpu": "CPU", "gpu": "GPU"}


def import_ray():
    try:
        import ray
        from ray import tune
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise VTSSError(
            'strategy="ray" needs Ray Tune: pip install "vtss-lightning[ray]" (or "ray[tune]")'
        ) from err
    return ray, tune


def ray_session():
    """Ray (started locally, quietly, when no cluster is connected) and Tune."""
    ray, tune = import_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return ray, tune


# ------------------------------------------------------------------ staged data
@dataclass
class SplitRows:
    """The real rows of one split, as a trial's scorer reads them (``dm.active``)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    class_counts: list[int]


@dataclass
class StagedSplit:
    """What a trial sees of the DataModule of one split: the parts strategies read.

    Picklable and small (no pool, no generator); ``loaders`` holds the trial's own
    candidates' training sets, fetched inside the trial.
    """

    active: SplitRows
    num_classes: int
    class_names: list[str]
    batch_size: int
    loaders: dict[tuple, Any] = field(default_factory=dict)
    transform: None = None  # stacking was checked on the real DataModule

    @classmethod
    def of(cls, dm) -> StagedSplit:
        """The active split of ``dm`` copied to the CPU."""
        s = dm.active
        tensors = (t.detach().cpu() for t in (s.x_train, s.y_train, s.x_val, s.y_val))
        rows = SplitRows(s.name, *tensors, list(s.class_counts))
        return cls(rows, int(dm.num_classes), list(dm.class_names), int(dm.batch_size))

    def to(self, device: torch.device) -> StagedSplit:
        a = self.active
        a.x_train, a.y_train = a.x_train.to(device), a.y_train.to(device)
        a.x_val, a.y_val = a.x_val.to(device), a.y_val.to(device)
        return self

    def make_train_loader(self, sizes: Mapping[int, int], full_batch: bool = False):
        """A fresh copy of the candidate's staged batches (at a reduced batch size after
        an out-of-memory retry, as the DataModule would give)."""
        loader = copy.copy(self.loaders[state_key(sizes)])
        if not full_batch and self.batch_size < loader.batch_size:
            loader.batch_size = self.batch_size
        return loader

    def val_dataloader(self):
        return eval_batches(self.active.x_val, self.active.y_val)


@dataclass
class StagedJob:
    """One (split, candidate) job and where its data wait in the object store."""

    split: int
    index: int
    sizes: dict[int, int]
    name: str  # the split's name (the key of comparators)
    data: Any  # ObjectRef of the split's StagedSplit
    loader: Any  # ObjectRef of the candidate's training batches


@dataclass
class TrialPlan:
    """The jobs of one trial: a stack of one split's candidates, or one candidate."""

    jobs: list[StagedJob]
    stacked: bool


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
            loader = self.train_loader(dm, sizes)
            loader.x, loader.y = loader.x.cpu(), loader.y.cpu()
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
        with _quiet_tune(verbose), tempfile.TemporaryDirectory(prefix="vtss_ray_") as storage:
            run = TuneRun(tune, lambda hooks: self._tuner(tune, plans, storage, hooks))
            reported = set()
            for t, result in run:  # as each trial reports
                reported.add(t)
                yield from self._reported(plans[t], json.loads(result["vtss"]))
            by_trial = {r.config["trial"]: r for r in run.grid}
            self._keep_states(plans, by_trial)
        for t, plan in enumerate(plans):
            if t not in reported:
                yield from self._failed(plan, _trial_failure(by_trial.get(t)), verbose)

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


# ------------------------------------------------------------------ Tune run
class TuneRun:
    """``tuner.fit()`` in a thread, each trial's report handed on as it arrives.

    Iterating starts the run and yields ``(trial, report)``; afterwards ``grid`` is
    Tune's result grid. Leaving the loop early (an error or interrupt in the search)
    stops the remaining trials through a Tune stopper.
    """

    def __init__(self, tune, build) -> None:
        self.reports: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.tuner = build(_tune_hooks(tune, self.reports, self.stop))
        self.grid = None
        self._error: BaseException | None = None

    def _fit(self) -> None:
        try:
            self.grid = self.tuner.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the search's thread
            self._error = err
        finally:
            self.reports.put(None)

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        thread = threading.Thread(target=self._fit, name="vtss-ray-tune", daemon=True)
        thread.start()
        try:
            while (item := self.reports.get()) is not None:
                yield item
        finally:
            self.stop.set()  # a no-op once every trial has ended
            thread.join()
        if self._error is not None:
            raise self._error


def _tune_hooks(tune, reports: queue.Queue, stop: threading.Event) -> list:
    """A Tune callback passing each trial's report on, and a stopper watching ``stop``.

    Tune pickles its run configuration; the queue and event stay out of that copy.
    """

    class Reports(tune.Callback):
        def __init__(self, out: queue.Queue) -> None:
            self.out = out

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.out.put((trial.config["trial"], result))

        def __getstate__(self) -> dict:
            return {}

    class StopAll(tune.Stopper):
        def __init__(self, event: threading.Event) -> None:
            self.event = event

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.event.is_set()

        def __getstate__(self) -> dict:
            return {}

    return [Reports(reports), StopAll(stop)]


@contextmanager
def _quiet_tune(verbose: bool) -> Iterator[None]:
    """Tune's environment (:data:`TUNE_ENV`) and its loggers' levels for the run."""
    saved = {k: os.environ.get(k) for k in TUNE_ENV}
    os.environ.update(TUNE_ENV)
    levels = {n: logging.CRITICAL for n in TUNE_LOGGERS}
    if verbose:  # Tune's warnings (e.g. a cluster too small for a trial) and errors
        levels = {n: logging.WARNING for n in TUNE_LOGGERS} | {RESULT_FILES_LOGGER: logging.ERROR}
    loggers = {logging.getLogger(n): level for n, level in levels.items()}
    before = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, level in before.items():
            lg.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _trial_failure(result) -> str:
    """The status of the jobs of a trial that gave no report."""
    if result is None:
        return "failed: the Ray trial did not run"
    if result.error is not None:
        lines = str(result.error).strip().splitlines() or [type(result.error).__name__]
        return f"failed: Ray trial error: {lines[-1][:300]}"
    return "failed: the Ray trial reported no loss"


# -------------------------------------------------------------- inside a trial
def run_trial(config, template, settings, seed, plans, options) -> None:
    """One Ray Tune trial: a stack of one split's candidates, or one candidate's fit."""
    import ray
    from ray import tune

    plan = plans[config["trial"]]
    local = _trial_settings(settings)
    split = ray.get(plan.jobs[0].data).to(local.device())
    for j in plan.jobs:
        split.loaders[state_key(j.sizes)] = ray.get(j.loader)
    scorer = _trial_scorer(template, local, seed, plan.stacked, options)
    jobs = [(j.index, j.sizes) for j in plan.jobs]
    members = {
        str(i): [loss, secs, scorer.statuses.get(i)]
        for i, loss, secs in scorer.score_many(split, jobs)
    }
    payload = {
        "members": members,
        "comparator": scorer.comparators.get(split.active.name),
        "fallback": scorer.fallback_reason,
    }
    states = {}
    if options["keep_states"]:
        states = {i: scorer.trained_state(sizes) for i, sizes in jobs}
        states = {i: s for i, s in states.items() if s is not None}
    _report(tune, {"vtss": json.dumps(payload)}, states)


def _trial_settings(settings: TrainerSettings) -> TrainerSettings:
    """The search's settings on the trial's device (Ray sets ``CUDA_VISIBLE_DEVICES``)."""
    gpu = torch.cuda.is_available()
    kwargs = dict(settings.kwargs)
    kwargs["accelerator"] = "gpu" if gpu else "cpu"
    if not gpu or not isinstance(kwargs.get("devices"), int):
        kwargs["devices"] = 1
    return replace(settings, kwargs=kwargs)


def _trial_scorer(template, settings, seed: int, stacked: bool, options: dict) -> BaseScorer:
    """``parallel``'s scorer for a stack, else the ``retrain`` recipe (guarded)."""
    if not stacked:
        return BaseScorer(template, settings, seed, keep_states=options["keep_states"])
    return options["stacker"](
        template,
        settings,
        seed,
        options["snapshot"],
        options["memory_budget_mb"],
        keep_states=options["keep_states"],
        verbose=False,
    )


def _report(tune, metrics: dict, states: dict) -> None:
    """Report the trial's results, its kept weights as a checkpoint."""
    if not states:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(states, Path(d) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
