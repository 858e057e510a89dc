"""How a candidate is trained: fresh Lightning Trainers, isolated from the outer run."""

from __future__ import annotations

import copy
import logging
import math
import random
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.seed import isolate_rng

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.objective import balanced_loss

STRATEGIES = ("retrain", "finetune", "parallel", "halving", "parallel_halving", "ray")

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
    """Keyword arguments for the inner ``pl.Trainer`` of every candidate."""

    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trainer(cls, trainer: pl.Trainer) -> TrainerSettings:
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
            }
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

    def build(self, fraction: float = 1.0) -> pl.Trainer:
        kwargs = {**self.kwargs, **self.budget(fraction), **ISOLATED}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return pl.Trainer(**kwargs)


def _check_lightning_strategy(strategy: Any) -> None:
    """A Lightning strategy name must be registered (``"ddp"``, ``"ddp_spawn"``, ...)."""
    if strategy is None or not isinstance(strategy, str) or strategy == "auto":
        return
    from pytorch_lightning.strategies import StrategyRegistry

    if strategy not in StrategyRegistry:
        raise VTSSError(
            f"unsupported trainer argument(s) for the search: strategy={strategy!r} is not a "
            "Lightning strategy (e.g. 'ddp', 'ddp_spawn')"
        )


def clone_module(module: pl.LightningModule) -> pl.LightningModule:
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
        logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")
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


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Scorer(Protocol):
    """Trains one candidate and returns its balanced validation loss."""

    def begin_split(self, dm) -> None: ...

    def score(self, dm, sizes: Mapping[int, int]) -> float: ...


class RetrainScorer:
    """Every candidate: same initial weights, same settings, a fresh Trainer.

    The template module is cloned (never trained), so the outer model keeps its
    initial weights for the final fit. Each fit runs inside ``isolate_rng`` with the
    same seed, so candidates differ only in their training rows.
    """

    def __init__(
        self,
        template: pl.LightningModule,
        settings: TrainerSettings,
        seed: int = 0,
        keep_states: bool = False,
    ) -> None:
        self.template = template
        self.settings = settings
        self.seed = seed
        self.keep_states = keep_states  # keep trained weights so the winner can be reused
        self._states: dict[tuple, dict[str, torch.Tensor]] = {}

    def begin_split(self, dm) -> None:
        self._states.clear()  # weights are reusable only for the split they were trained on

    def trained_state(self, sizes: Mapping[int, int]) -> dict[str, torch.Tensor] | None:
        """Weights of the candidate trained at ``sizes`` on the last split, if kept."""
        return self._states.get(state_key(sizes))

    def fit(self, model: pl.LightningModule, dm, sizes: Mapping[int, int], fraction: float = 1.0):
        loader = dm.make_train_loader(sizes, full_batch=bool(getattr(model, "full_batch", False)))
        with isolate_rng(), quiet_lightning():
            seed_all(self.seed)
            self.settings.build(fraction).fit(model, train_dataloaders=loader)
        return model

    def evaluate(self, model: pl.LightningModule, dm) -> float:
        split = dm.active
        model.to(split.x_val.device)
        return balanced_loss(model, split.x_val, split.y_val, dm.num_classes)

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        model = self.fit(clone_module(self.template), dm, sizes)
        if self.keep_states:
            self._states[state_key(sizes)] = {
                k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            }
        return self.evaluate(model, dm)


def state_key(sizes: Mapping[int, int]) -> tuple:
    """Hashable candidate identity: its non-zero per-class sizes."""
    return tuple(sorted((int(k), int(v)) for k, v in sizes.items() if v))


class FinetuneScorer(RetrainScorer):
    """One model on real rows per split; each candidate fine-tunes a copy of it.

    Costs one full fit plus ``fraction`` of a fit per candidate instead of one full fit
    per candidate. The price: candidates share a starting point shaped by the real
    rows only, so a short fine-tune may understate the effect of large synthetic sizes,
    and warm starts generalise worse than fresh ones (Ash & Adams, 2020). Use it to
    screen, ``retrain`` to decide.
    """

    def __init__(self, template, settings, seed: int = 0, fraction: float = 0.3) -> None:
        super().__init__(template, settings, seed)
        if not 0 < fraction <= 1:
            raise VTSSError(f"finetune_fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self._base: pl.LightningModule | None = None

    def begin_split(self, dm) -> None:
        self._base = self.fit(clone_module(self.template), dm, {})

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        model = self.fit(clone_module(self._base), dm, sizes, fraction=self.fraction)
        return self.evaluate(model, dm)


def make_scorer(
    strategy: str,
    template,
    settings: TrainerSettings,
    seed: int,
    finetune_fraction: float,
    halving_eta: float = 3.0,
    keep_states: bool = False,
    verbose: bool = True,
    snapshot: str = "last",
):
    """The scorer of ``strategy``; ``keep_states`` keeps weights so the winner is reusable."""
    if strategy == "retrain":
        return RetrainScorer(template, settings, seed, keep_states=keep_states)
    if strategy == "finetune":
        return FinetuneScorer(template, settings, seed, finetune_fraction)
    if strategy == "parallel":
        from vtss_lightning.search.parallel import ParallelScorer

        return ParallelScorer(
            template, settings, seed, snapshot, keep_states=keep_states, verbose=verbose
        )
    if strategy in ("halving", "parallel_halving"):
        from vtss_lightning.search.halving import HalvingScorer

        parallel = strategy == "parallel_halving"
        return HalvingScorer(
            template,
            settings,
            seed,
            halving_eta,
            parallel,
            keep_states=keep_states,
            verbose=verbose,
            snapshot=snapshot,
        )
    if strategy == "ray":
        from vtss_lightning.search.ray_scorer import RayScorer

        return RayScorer(template, settings, seed)
    raise VTSSError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
