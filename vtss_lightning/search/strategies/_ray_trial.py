"""Inside a ``strategy="ray"`` trial: what the driver staged for it, and the fit.

A trial sees no DataModule: :class:`StagedSplit` carries the parts the strategies
read (the split's real rows, its name and class counts, each candidate's training
batches), fetched from the object store inside the trial.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vtss_lightning.data.loaders import eval_batches
from vtss_lightning.data.row_layout import standalone
from vtss_lightning.search.strategies.base import BaseScorer, state_key
from vtss_lightning.search.strategies.settings import TrainerSettings

STATE_FILE = "vtss_state.pt"


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
        """The active split of ``dm`` copied to the CPU (its real rows alone: ``x_train``
        heads the pool's buffer, which pickling a view would send whole)."""
        s = dm.active
        tensors = (standalone(t.detach().cpu()) for t in (s.x_train, s.y_train, s.x_val, s.y_val))
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
