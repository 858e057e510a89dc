"""What a candidate's Lightning fit sees of the user's run: its callbacks and its data.

A candidate must be trained the way the final model will be, so callbacks that
*shape training* (EarlyStopping, StochasticWeightAveraging, gradient-accumulation or
fine-tuning schedulers, the user's own) are deep-copied into every candidate fit,
while callbacks that *write* (checkpoints, loggers' monitors, progress bars, model
summaries, timers, prediction writers, this package's own callback) stay with the
outer run. And ``self.trainer.datamodule`` works inside every candidate fit, as in
the user's own fit: :class:`CandidateDataModule` presents the user's DataModule with
the candidate's training rows.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from vtss_lightning import _lightning
from vtss_lightning._random import seeded
from vtss_lightning.search.ranks import local_metrics
from vtss_lightning.search.strategies.settings import TrainerSettings

#: A LightningModule of either Lightning package (see :mod:`vtss_lightning._lightning`).
LightningModule = Any

#: Callback classes (by Lightning path) that write or report and never join a candidate.
WRITER_CALLBACKS = (
    "callbacks.ModelCheckpoint",
    "callbacks.OnExceptionCheckpoint",
    "callbacks.ProgressBar",
    "callbacks.ModelSummary",
    "callbacks.LearningRateMonitor",
    "callbacks.DeviceStatsMonitor",
    "callbacks.Timer",
    "callbacks.BasePredictionWriter",
    "callbacks.ThroughputMonitor",
    "cli.SaveConfigCallback",
)


@functools.cache
def _writer_classes() -> tuple[type, ...]:
    out = []
    for package in _lightning.PACKAGES:
        for dotted in WRITER_CALLBACKS:
            try:
                out.append(_lightning.class_from(package, dotted))
            except (AttributeError, ImportError):  # a class this Lightning version lacks
                continue
    return tuple(out)


def shapes_training(callback: Any) -> bool:
    """Whether a callback changes how a model trains (and so belongs in candidate fits)."""
    if getattr(callback, "runs_vtss_search", False):  # VTSSCallback: the outer search itself
        return False
    return not isinstance(callback, _writer_classes())


def candidate_callbacks(callbacks: Sequence[Any], names: Sequence[str] | None) -> list[Any]:
    """Deep copies of the callbacks every candidate fit gets.

    ``names=None`` applies the rule of :func:`shapes_training`; a list of class names
    takes exactly the outer callbacks of those classes (``[]``: none).
    """
    if names is None:
        chosen = [c for c in callbacks if shapes_training(c)]
    else:
        wanted = set(names)
        chosen = [c for c in callbacks if type(c).__name__ in wanted]
    return [copy.deepcopy(c) for c in chosen]


class CandidateDataModule(_lightning.dual_base("LightningDataModule")):
    """The user's DataModule as one candidate sees it: its training rows, the split's
    validation rows, and every other attribute of the real DataModule.

    Lightning's own hooks (``prepare_data``, ``setup``) are no-ops here: the real
    DataModule was set up once, before the search.
    """

    def __init__(self, dm: Any, train_loader: Any, sizes: dict[int, int]) -> None:
        super().__init__()
        self._dm, self._train_loader = dm, train_loader
        self.synthetic_sizes = dict(sizes)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_dm", "_train_loader"):
            raise AttributeError(name)
        return getattr(self._dm, name)

    def train_dataloader(self) -> Any:
        return self._train_loader

    def val_dataloader(self) -> Any:
        return self._dm.val_dataloader()


def clone_module(module: LightningModule) -> LightningModule:
    """Deep copy of a LightningModule without its trainer (and the trainer's data)."""
    trainer = module._trainer
    module._trainer = None
    try:
        return copy.deepcopy(module)
    finally:
        module._trainer = trainer


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence the per-Trainer banners and warnings of inner fits."""
    loggers = [
        logging.getLogger(n)
        for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*val_dataloader.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*isn't part of the.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*treespec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fit_candidate(
    model: LightningModule,
    loader,
    settings: TrainerSettings,
    seed: int,
    fraction: float = 1.0,
    max_steps: int | None = None,
    dm=None,
    sizes: Mapping[int, int] | None = None,
) -> LightningModule:
    """The one inner-fit recipe: a fresh isolated Trainer, quiet, RNG seeded and restored.

    Every strategy, the TG pilot and the class-weight baseline train through here, so
    a candidate is the same fit whichever of them runs it. Under several devices it
    runs on rank 0 alone, its torchmetrics unsynced (:func:`.ranks.local_metrics`).
    With the user's ``dm`` the module sees it as ``self.trainer.datamodule`` (with the
    candidate's ``sizes``).
    """
    with seeded(seed), quiet_lightning(), local_metrics(model):
        trainer = settings.build(fraction, max_steps, module=model)
        if dm is None:
            trainer.fit(model, train_dataloaders=loader)
        else:
            trainer.fit(model, datamodule=CandidateDataModule(dm, loader, dict(sizes or {})))
    return model
