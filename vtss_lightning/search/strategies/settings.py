"""The inner Trainer of every candidate: what it inherits from the outer run, and what not.

A candidate trains on the outer trainer's device, precision and budget, and with
the callbacks that shape training (:mod:`.inner_fit`), but never touches the outer
run's loggers, checkpoints or progress bars.

Every budget of the outer trainer reaches each candidate's Trainer unchanged:
``max_epochs``, ``max_steps``, ``min_epochs``, ``min_steps`` and ``max_time``.
``max_time`` is a budget *per fit*, not for the whole search: the user set it for
the final fit, and every candidate is trained the way the final model will be, so
each candidate gets the same wall-clock budget (the search as a whole may take
about ``max_time`` times the number of fits). The validation schedule
(``val_check_interval``, ``check_val_every_n_epoch``) reaches candidates whose
callbacks need validation (EarlyStopping, ...); without such callbacks a candidate
does not validate, and the schedule cannot change its training. The stacked
strategies count optimizer steps and so cannot honour ``max_time``: they fall back
to ``retrain`` with that reason (:func:`._members.settings_blocker`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import ModuleType
from typing import Any

import torch

from vtss_lightning import _lightning
from vtss_lightning.errors import VTSSError

#: Trainer arguments a candidate inherits from the outer run.
INHERITED = (
    "accelerator",
    "devices",
    "strategy",  # e.g. "ddp": each candidate's fit on several devices (VTSSTuner)
    "num_nodes",
    "precision",
    "max_epochs",
    "max_steps",
    "max_time",  # per candidate fit, like the final fit (see the module docstring)
    "min_epochs",
    "min_steps",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "accumulate_grad_batches",
    "limit_train_batches",
    "deterministic",
    "benchmark",
)
#: The outer run's validation schedule: reaches candidates whose callbacks validate.
VALIDATION = ("check_val_every_n_epoch", "val_check_interval")
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
        _check_budget(max_epochs, trainer.max_steps)
        return cls(
            {
                **accel,
                "precision": trainer.precision,
                "max_epochs": max_epochs,
                "max_steps": trainer.max_steps,
                **_optional_limits(trainer),
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
            - set(VALIDATION)
            - set(ISOLATED)
            - {"default_root_dir", "logger", "callbacks"}
        )
        if unknown:
            raise VTSSError(f"unsupported trainer argument(s) for the search: {sorted(unknown)}")
        _check_lightning_strategy(kwargs.get("strategy"))
        _check_budget(kwargs.get("max_epochs"), kwargs.get("max_steps"))
        if kwargs.get("max_time") is not None:
            kwargs["max_time"] = parse_max_time(kwargs["max_time"])
        return cls(
            {k: v for k, v in kwargs.items() if k in INHERITED},
            validation={k: kwargs[k] for k in VALIDATION if k in kwargs},
        )

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
        """Epoch/step/time limits scaled by ``fraction`` (at least one of each unit)."""
        out: dict[str, Any] = {}
        for key in ("max_epochs", "max_steps"):
            value = self.kwargs.get(key)
            if value is not None and value > 0:
                out[key] = max(1, math.ceil(value * fraction))
        if self.kwargs.get("max_time") is not None:
            out["max_time"] = self.kwargs["max_time"] * fraction
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


def _optional_limits(trainer) -> dict[str, Any]:
    """The outer trainer's ``max_time`` and ``min_*`` limits, where set (else nothing).

    Lightning keeps ``max_time`` only as the :class:`Timer` callback it adds; a Timer
    the user added with a ``duration`` is the same budget.
    """
    out: dict[str, Any] = {}
    timers = [
        c
        for c in trainer.callbacks
        if type(c).__name__ == "Timer" and getattr(c, "_duration", None) is not None
    ]
    if timers:
        out["max_time"] = timedelta(seconds=min(float(t._duration) for t in timers))
    if trainer.min_steps is not None:
        out["min_steps"] = trainer.min_steps
    if trainer.min_epochs:  # Lightning's default is 0 (1 once min_steps is set)
        out["min_epochs"] = trainer.min_epochs
    return out


def parse_max_time(value: Any) -> timedelta:
    """``max_time`` as Lightning accepts it (``"DD:HH:MM:SS"``, a ``timedelta`` or a
    dict of ``timedelta`` fields), as a positive ``timedelta``; else a ``VTSSError``."""
    try:
        if isinstance(value, timedelta):
            out = value
        elif isinstance(value, str):
            days, hours, minutes, seconds = (float(p) for p in value.strip().split(":"))
            out = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        elif isinstance(value, Mapping):
            out = timedelta(**value)
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise VTSSError(
            f"max_time={value!r} is not a duration; give 'DD:HH:MM:SS' (e.g. '00:00:10:00'), "
            "a datetime.timedelta or a dict such as {'minutes': 10}"
        ) from None
    if out.total_seconds() <= 0:
        raise VTSSError(
            f"max_time={value!r} trains nothing, so every candidate would score the same "
            "untrained model; give a positive duration"
        )
    return out


def _check_budget(max_epochs: int | None, max_steps: int | None) -> None:
    """A zero budget trains nothing: every candidate would score its initial weights."""
    for name, value in (("max_epochs", max_epochs), ("max_steps", max_steps)):
        if value == 0:
            raise VTSSError(
                f"{name}=0 trains nothing, so every candidate would score the same untrained "
                f"model; give {name} >= 1 (or -1 for no limit)"
            )


def _check_lightning_strategy(strategy: Any) -> None:
    """A Lightning strategy name must be registered (``"ddp"``, ``"ddp_spawn"``, ...)."""
    if strategy is None or not isinstance(strategy, str) or strategy == "auto":
        return
    if strategy not in _lightning.strategy_registry():
        raise VTSSError(
            f"unsupported trainer argument(s) for the search: strategy={strategy!r} is not a "
            "Lightning strategy (e.g. 'ddp', 'ddp_spawn')"
        )
