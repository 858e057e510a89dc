"""``strategy="ray"``: each candidate a Ray Tune trial, for several GPUs or nodes.

The driver (the process running the search) prepares the pool as usual; every
candidate's training set (real rows + its pool prefix, already encoded) and the
real validation rows travel to the trial through Ray's object store, and the trial
runs exactly the ``retrain`` fit (fresh Lightning ``Trainer``, same seed, same batch
order) on whatever device Ray gave it. Losses come back as trial metrics and go into
the same :class:`VTSSResult`; with ``keep_states`` each trial also returns its weights
as a Tune checkpoint so the winner can become the final model.

Ray is optional (``pip install "vtss-lightning[ray]"``). Without a running Ray the
first search starts a local instance; to use a cluster, start it (``ray start
--head`` on one node, ``ray start --address=<head>:6379`` on the others) and set
``RAY_ADDRESS`` or call ``ray.init(address=...)`` before the search.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.objective import balanced_loss
from vtss_lightning.search.strategies.base import BaseScorer, Job, Scored
from vtss_lightning.search.strategies.inner_fit import clone_module, fit_candidate
from vtss_lightning.search.strategies.settings import TrainerSettings

STATE_FILE = "vtss_state.pt"


def import_ray():
    try:
        import ray
        from ray import tune
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise VTSSError(
            'strategy="ray" needs Ray Tune: pip install "vtss-lightning[ray]" (or "ray[tune]")'
        ) from err
    return ray, tune


class RayScorer(BaseScorer):
    """Score candidates as parallel Ray Tune trials, each a ``retrain`` fit.

    Parameters
    ----------
    template, settings, seed, keep_states
        As :class:`~vtss_lightning.search.strategies.base.BaseScorer`.
    resources
        Ray resources of one trial, default ``{"cpu": 1, "gpu": 1}`` when the driver
        sees a GPU, else ``{"cpu": 1}``.
    max_concurrent
        Trials at once (default: as many as the cluster's resources allow).
    """

    def __init__(
        self,
        template,
        settings: TrainerSettings,
        seed: int = 0,
        keep_states: bool = False,
        resources: Mapping[str, float] | None = None,
        max_concurrent: int | None = None,
    ) -> None:
        super().__init__(template, settings, seed, keep_states=keep_states)
        gpu = torch.cuda.is_available()
        self.resources = dict(resources or ({"cpu": 1, "gpu": 1} if gpu else {"cpu": 1}))
        self.max_concurrent = max_concurrent

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        return next(iter(self.score_many(dm, [(0, dict(sizes))])))[1]

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        """Run one trial per job; yield ``(candidate index, loss, seconds)``."""
        ray, tune = import_ray()
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        loaders = {}
        for i, sizes in jobs:
            loader = self.train_loader(dm, sizes)
            loader.x, loader.y = loader.x.cpu(), loader.y.cpu()
            loaders[i] = loader
        split = dm.active
        val = (split.x_val.cpu(), split.y_val.cpu(), dm.num_classes)
        trainable = tune.with_parameters(
            run_trial,
            template=clone_module(self.template).cpu(),
            settings=self.settings,
            seed=self.seed,
            loaders=loaders,
            val=val,
            keep_state=self.keep_states,
        )
        with tempfile.TemporaryDirectory(prefix="vtss_ray_") as storage:
            tuner = tune.Tuner(
                tune.with_resources(trainable, self.resources),
                param_space={"candidate": tune.grid_search([i for i, _ in jobs])},
                tune_config=tune.TuneConfig(max_concurrent_trials=self.max_concurrent),
                run_config=tune.RunConfig(name="vtss", storage_path=storage, verbose=0),
            )
            results = tuner.fit()
            by_index = {r.config["candidate"]: r for r in results}
            for i, sizes in jobs:
                r = by_index.get(i)
                failure = _trial_failure(r)
                if failure is not None:
                    self.statuses[i] = failure
                    yield i, math.nan, 0.0
                    continue
                if self.keep_states and r.checkpoint is not None:
                    with r.checkpoint.as_directory() as d:
                        state = torch.load(Path(d) / STATE_FILE, weights_only=True)
                    self.keep(sizes, state)
                yield i, float(r.metrics["loss"]), float(r.metrics["seconds"])


def run_trial(config, template, settings, seed, loaders, val, keep_state) -> None:
    """One Ray Tune trial: the ``retrain`` fit of one candidate on the trial's device."""
    from ray import tune

    t0 = time.perf_counter()
    gpu = torch.cuda.is_available()  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU(s)
    kwargs = dict(settings.kwargs)
    kwargs["accelerator"] = "gpu" if gpu else "cpu"
    if not gpu or not isinstance(kwargs.get("devices"), int):
        kwargs["devices"] = 1
    local = TrainerSettings(kwargs)
    device = local.device()
    loader = loaders[config["candidate"]]
    loader.x, loader.y = loader.x.to(device), loader.y.to(device)
    model = fit_candidate(clone_module(template), loader, local, seed)
    x_val, y_val, num_classes = val
    model.to(device)
    loss = balanced_loss(model, x_val.to(device), y_val.to(device), num_classes)
    metrics = {"loss": loss, "seconds": time.perf_counter() - t0}
    if not keep_state:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, Path(d) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _trial_failure(result) -> str | None:
    """The status of a trial that returned no loss (``None`` when it did)."""
    if result is None:
        return "failed: the Ray trial did not run"
    if result.error is not None:
        lines = str(result.error).strip().splitlines() or [type(result.error).__name__]
        return f"failed: Ray trial error: {lines[-1][:300]}"
    if "loss" not in (result.metrics or {}):
        return "failed: the Ray trial reported no loss"
    return None
