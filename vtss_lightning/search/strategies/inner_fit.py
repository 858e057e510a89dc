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
from collections.abc import Sequence
from typing import Any

from vtss_lightning import _lightning

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
    from vtss_lightning.search.callback import VTSSCallback  # the outer search itself

    return not isinstance(callback, (*_writer_classes(), VTSSCallback))


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
