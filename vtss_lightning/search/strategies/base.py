"""What every strategy shares: trainer settings, the one inner-fit recipe, the guarded loop.

A strategy turns ``(candidate index, per-class sizes)`` jobs into balanced validation
losses. :class:`BaseScorer` gives the contract a default for everything but
:meth:`~BaseScorer.score`: ``score_many`` runs the jobs one at a time, each timed and
guarded against running out of memory (:mod:`vtss_lightning.search.guard`), so a
strategy that only knows how to score one candidate is complete, and a strategy that
trains several at once overrides ``score_many`` and explains its NaNs in ``statuses``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import torch

from vtss_lightning import _lightning
from vtss_lightning._random import seeded
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.guard import CandidateFailed, score_guarded
from vtss_lightning.search.objective import balanced_loss

#: A LightningModule of either Lightning package (see :mod:`vtss_lightning._lightning`).
LightningModule = Any
#: One job of a search: the candidate's index in the grid and its per-class sizes.
Job = tuple[int, dict[int, int]]
#: What a strategy yields per finished job: index, balanced validation loss, seconds.
Scored = tuple[int, float, float]

#: Trainer arguments a candidate inherits from the outer run.
INHERITED = (
    "accelerator",
    "devices",
    "strategy",  # e.g. "ddp": each candidate's fit on several devices (VTSSTuner)
    "num_nodes",
    "precision",
    "max_epochs",
    "max_steps",
    "min_epochs",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "accumulate_grad_batches",
    "limit_train_batches",
    "deterministic",
    "benchmark",
)
#: What a candidate never inherits: it must not touch the outer run's logs or state.
ISOLATED = dict(
    logger=False,
    enable_checkpointing=False,
    callbacks=[],
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
)


@dataclass
class TrainerSettings:
    """Keyword arguments for the inner Trainer of every candidate.

    ``package`` is the Lightning package of the outer trainer (``lightning.pytorch``
    or ``pytorch_lightning``); the inner Trainer comes from the package of the module
    it trains when that is unambiguous, else from ``package``
    (:func:`vtss_lightning._lightning.package_for`).
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    package: ModuleType | None = field(default=None, compare=False, repr=False)
    #: Callbacks every candidate fit gets a fresh deep copy of (those that shape training).
    callbacks: list[Any] = field(default_factory=list, compare=False, repr=False)
    #: The outer run's validation schedule, used when ``callbacks`` need validation.
    validation: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_trainer(cls, trainer) -> TrainerSettings:
        """Copy the outer trainer's device, precision and budget (one device)."""
        device = trainer.strategy.root_device
        if device.type == "cuda":
            accel = {"accelerator": "cuda", "devices": [device.index or 0]}
        elif device.type == "mps":
            accel = {"accelerator": "mps", "devices": 1}
        else:
            accel = {"accelerator": "cpu", "devices": 1}
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        return cls(
            {
                **accel,
                "precision": trainer.precision,
                "max_epochs": max_epochs,
                "max_steps": trainer.max_steps,
                "gradient_clip_val": trainer.gradient_clip_val,
                "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "limit_train_batches": trainer.limit_train_batches,
            },
            package=_lightning.package_of(trainer),
            validation={
                "limit_val_batches": trainer.limit_val_batches,
                "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
                "val_check_interval": trainer.val_check_interval,
            },
        )

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> TrainerSettings:
        kwargs = dict(kwargs or {})
        kwargs.setdefault("max_epochs", 1000 if "max_steps" in kwargs else None)
        kwargs.setdefault("devices", 1)  # one device per candidate unless asked otherwise
        unknown = (
            set(kwargs)
            - set(INHERITED)
            - set(ISOLATED)
            - {"default_root_dir", "logger", "callbacks"}
        )
        if unknown:
            raise VTSSError(f"unsupported trainer argument(s) for the search: {sorted(unknown)}")
        _check_lightning_strategy(kwargs.get("strategy"))
        return cls({k: v for k, v in kwargs.items() if k in INHERITED})

    def describe(self) -> dict[str, Any]:
        """What of these settings decides a candidate's score (fingerprint, report)."""
        out: dict[str, Any] = dict(self.kwargs)
        if self.callbacks:
            out["callbacks"] = [getattr(c, "state_key", type(c).__name__) for c in self.callbacks]
            out["validation"] = dict(self.validation)
        return out

    def device(self) -> torch.device:
        """Where the candidates will train, resolved like Lightning's ``"auto"``."""
        accel = str(self.kwargs.get("accelerator") or "auto")
        if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
            devices = self.kwargs.get("devices")
            index = devices[0] if isinstance(devices, list | tuple) and devices else 0
            return torch.device("cuda", index)
        return torch.device("cpu")

    def budget(self, fraction: float = 1.0) -> dict[str, Any]:
        """Epoch/step limits scaled by ``fraction`` (at least one of each unit)."""
        out = {}
        for key in ("max_epochs", "max_steps"):
            value = self.kwargs.get(key)
            if value is not None and value > 0:
                out[key] = max(1, math.ceil(value * fraction))
        return out

    def build(self, fraction: float = 1.0, max_steps: int | None = None, module=None):
        """A fresh, isolated Trainer for ``module``; ``max_steps`` replaces the step limit."""
        kwargs = {**self.kwargs, **self.budget(fraction), **ISOLATED}
        if self.callbacks:  # shaping callbacks (EarlyStopping, ...) see validation as outside
            kwargs["callbacks"] = copy.deepcopy(self.callbacks)
            kwargs.update({"limit_val_batches": 1.0, **self.validation})
        if max_steps is not None:
            kwargs["max_steps"] = max_steps
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return _lightning.package_for(module, self.package).Trainer(**kwargs)


def _check_lightning_strategy(strategy: Any) -> None:
    """A Lightning strategy name must be registered (``"ddp"``, ``"ddp_spawn"``, ...)."""
    if strategy is None or not isinstance(strategy, str) or strategy == "auto":
        return
    if strategy not in _lightning.strategy_registry():
        raise VTSSError(
            f"unsupported trainer argument(s) for the search: strategy={strategy!r} is not a "
            "Lightning strategy (e.g. 'ddp', 'ddp_spawn')"
        )


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


def is_full_batch(module: torch.nn.Module) -> bool:
    """Whether the module trains on all rows at once (e.g. L-BFGS logistic regression)."""
    return bool(getattr(module, "full_batch", False))


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
    a candidate is the same fit whichever of them runs it. With the user's ``dm`` the
    module sees it as ``self.trainer.datamodule`` (with the candidate's ``sizes``).
    """
    from vtss_lightning.search.strategies.inner_fit import CandidateDataModule

    with seeded(seed), quiet_lightning():
        trainer = settings.build(fraction, max_steps, module=model)
        if dm is None:
            trainer.fit(model, train_dataloaders=loader)
        else:
            trainer.fit(model, datamodule=CandidateDataModule(dm, loader, dict(sizes or {})))
    return model


def full_budget(loader, settings: TrainerSettings) -> int:
    """Optimizer steps of a Lightning fit over ``loader`` with the trainer's limits."""
    per_epoch = len(loader)
    epochs = settings.kwargs.get("max_epochs")
    steps = settings.kwargs.get("max_steps")
    steps = steps if steps is not None and steps > 0 else math.inf
    if epochs is None or epochs < 0:
        epochs = math.inf if steps < math.inf else 1000  # Lightning's default
    return int(min(epochs * per_epoch, steps))


def state_key(sizes: Mapping[int, int]) -> tuple:
    """Hashable candidate identity: its non-zero per-class sizes."""
    return tuple(sorted((int(k), int(v)) for k, v in sizes.items() if v))


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the module's state, safe to keep after training moves on."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Scorer(Protocol):
    """What the engine and the Lightning adapters need from a strategy."""

    #: Why a candidate's loss is NaN (or how it was trained differently), by index.
    statuses: dict[int, str]
    #: Set when the strategy trained one candidate at a time instead of its own way.
    fallback_reason: str | None

    def begin_split(self, dm) -> None: ...

    def score(self, dm, sizes: Mapping[int, int]) -> float: ...

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]: ...

    def trained_state(self, sizes: Mapping[int, int]) -> dict[str, torch.Tensor] | None: ...


class BaseScorer:
    """Shared state and defaults of every strategy.

    Parameters
    ----------
    template
        The user's module at its initial weights; cloned for every fit, never trained.
    settings
        The inner Trainer's settings (device, precision, budget).
    seed
        Seed of every candidate fit: candidates differ only in their training rows.
    keep_states
        Keep each candidate's trained weights so the winner can become the final model.
    """

    def __init__(
        self,
        template: LightningModule,
        settings: TrainerSettings,
        seed: int = 0,
        keep_states: bool = False,
    ) -> None:
        self.template = template
        self.settings = settings
        self.seed = seed
        self.keep_states = keep_states
        self.statuses: dict[int, str] = {}
        self.fallback_reason: str | None = None
        self._states: dict[tuple, dict[str, torch.Tensor]] = {}

    @property
    def full_batch(self) -> bool:
        return is_full_batch(self.template)

    def begin_split(self, dm) -> None:
        """Forget the previous split's weights: they are reusable only where trained."""
        self._states.clear()

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        """The retrain recipe: a clone of the template trained afresh, then scored."""
        model = self.fit(clone_module(self.template), dm, sizes)
        if self.keep_states:
            self.keep(sizes, cpu_state(model))
        return self.evaluate(model, dm)

    def score_many(self, dm, jobs: list[Job]) -> Iterator[Scored]:
        """Each job in turn, timed, retried smaller after running out of memory.

        A candidate that fails even at the smallest batch is scored NaN with the
        reason in :attr:`statuses`; other errors propagate.
        """
        for i, sizes in jobs:
            t0 = time.perf_counter()
            try:
                loss, note = score_guarded(self, dm, sizes)
            except CandidateFailed as exc:
                loss, note = math.nan, str(exc)
            if note is not None:
                self.statuses[i] = note
            yield i, loss, time.perf_counter() - t0

    def trained_state(self, sizes: Mapping[int, int]) -> dict[str, torch.Tensor] | None:
        """Weights of the candidate trained at ``sizes`` on the last split, if kept."""
        return self._states.get(state_key(sizes))

    def keep(self, sizes: Mapping[int, int], state: dict[str, torch.Tensor]) -> None:
        """Remember a candidate's weights when the winner may be reused."""
        if self.keep_states:
            self._states[state_key(sizes)] = state

    def train_loader(self, dm, sizes: Mapping[int, int]):
        """The candidate's training batches: real rows plus its pool prefix."""
        return dm.make_train_loader(sizes, full_batch=self.full_batch)

    def fit(
        self,
        model: LightningModule,
        dm,
        sizes: Mapping[int, int],
        fraction: float = 1.0,
        max_steps: int | None = None,
    ) -> LightningModule:
        """Train ``model`` on the candidate's rows with the inner-fit recipe."""
        loader = dm.make_train_loader(sizes, full_batch=is_full_batch(model))
        return fit_candidate(
            model, loader, self.settings, self.seed, fraction, max_steps, dm=dm, sizes=sizes
        )

    def evaluate(self, model: LightningModule, dm) -> float:
        """Balanced loss of ``model`` on the active split's validation rows."""
        split = dm.active
        model.to(split.x_val.device)
        return balanced_loss(model, split.x_val, split.y_val, dm.num_classes)
