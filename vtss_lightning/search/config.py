"""SearchConfig: every setting of a VTSS search, validated once, in one place.

:class:`~vtss_lightning.search.callback.VTSSCallback`,
:class:`~vtss_lightning.search.tuner.VTSSTuner`, the engine, the strategies and the
progress fingerprint all read the same frozen object, so a setting is checked once
and cannot drift between them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from vtss_lightning.errors import VTSSError

#: Ways of training the candidates (see :mod:`vtss_lightning.search.strategies`).
STRATEGY_NAMES = (
    "auto", "retrain", "finetune", "parallel", "halving", "parallel_halving", "ray",
)  # fmt: skip
#: Rules that pick the winner (see :mod:`vtss_lightning.search.selection`).
SELECTION_RULES = ("min", "one_se", "smooth", "paired_se")
GRIDS = ("default", "tg")
SNAPSHOTS = ("best", "last")
#: Which rows the final model trains on (see :mod:`vtss_lightning.search.final_rows`).
FINAL_ROWS = ("auto", "all", "train")
#: Tests of local symmetry and head losses of ``grid="tg"`` (see :mod:`.tg.symmetry`,
#: :mod:`.tg.head_fit`; kept here so a config is checked without importing scipy).
TG_TESTS = ("calibrated", "chi2")
TG_HEAD_LOSSES = ("log", "squared", "squared_pm")

#: What ``ray_options`` may set (see :class:`~vtss_lightning.search.strategies.ray.RayScorer`).
RAY_OPTIONS = ("resources", "max_concurrent", "stack_size")

#: Settings that do not change any candidate's score (left out of the fingerprint;
#: Ray's trials replay ``retrain`` or ``parallel`` per candidate whatever their layout).
NOT_SCORING = ("verbose", "progress", "progress_path", "refit", "final_rows", "ray_options")


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search; see :class:`VTSSCallback` for what each one does."""

    ratios: tuple[float, ...] | None = None
    sizes: tuple[dict[str, int], ...] | None = None
    grid: str = "default"
    strategy: str = "auto"
    folds: int | str | None = "auto"
    repeats: int | None = None
    finetune_fraction: float = 0.3
    selection: str = "min"
    verbose: bool = True
    seed: int = 0
    progress: bool = True
    progress_path: str | None = None
    halving_eta: float = 3.0
    refit: bool = True
    snapshot: str = "last"
    candidate_callbacks: tuple[str, ...] | None = None
    extend_grid: bool = True
    max_ratio: float = 4.0
    final_rows: str = "auto"
    tg_test: str = "calibrated"
    tg_join_weak: bool = True
    tg_head_loss: str | None = None
    ray_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.ratios is not None:
            object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(dict(s) for s in self.sizes))
        object.__setattr__(self, "halving_eta", float(self.halving_eta))
        object.__setattr__(self, "refit", bool(self.refit))
        object.__setattr__(self, "tg_join_weak", bool(self.tg_join_weak))
        if self.candidate_callbacks is not None:
            names = tuple(str(n) for n in self.candidate_callbacks)
            object.__setattr__(self, "candidate_callbacks", names)
        if self.ray_options is not None:
            object.__setattr__(self, "ray_options", dict(self.ray_options))
        for check in (_check_names, _check_grid, _check_validation, _check_strategy_settings):
            check(self)

    @property
    def reuses_winner(self) -> bool:
        """Whether the winner's weights may become the final model (hold-out, no refit;
        meaningful once ``folds`` is resolved, see :mod:`.validation`)."""
        return not self.refit and self.folds is None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratios"] = None if self.ratios is None else list(self.ratios)
        out["sizes"] = None if self.sizes is None else [dict(s) for s in self.sizes]
        names = self.candidate_callbacks
        out["candidate_callbacks"] = None if names is None else list(names)
        return out

    def scoring_settings(self) -> dict[str, Any]:
        """The settings that decide the candidates' scores (the progress fingerprint)."""
        out = self.to_dict()
        for name in NOT_SCORING:
            out.pop(name)
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _one_of(name: str, value: Any, allowed: tuple[str, ...], what: str | None = None) -> None:
    if value not in allowed:
        raise VTSSError(f"unknown {what or name} {value!r}; choose one of {', '.join(allowed)}")


def _check_names(cfg: SearchConfig) -> None:
    _one_of("strategy", cfg.strategy, STRATEGY_NAMES)
    _one_of("selection", cfg.selection, SELECTION_RULES, "selection rule")
    if cfg.grid not in GRIDS:
        raise VTSSError(f"grid must be 'default' or 'tg', got {cfg.grid!r}")
    if cfg.snapshot not in SNAPSHOTS:
        raise VTSSError(f"snapshot must be 'best' or 'last', got {cfg.snapshot!r}")
    _one_of("final_rows", cfg.final_rows, FINAL_ROWS)
    if cfg.final_rows == "all" and not cfg.refit:
        raise VTSSError(
            "refit=False keeps the winner trained on the hold-out's training rows, "
            "final_rows='all' trains the final model on every development row: choose one"
        )


def _check_grid(cfg: SearchConfig) -> None:
    if cfg.grid == "tg" and (cfg.ratios is not None or cfg.sizes is not None):
        raise VTSSError('grid="tg" chooses its own candidates; drop ratios= and sizes=')
    if cfg.ratios is not None and cfg.sizes is not None:
        raise VTSSError("give ratios= or sizes=, not both")
    if cfg.ratios is not None:
        if not cfg.ratios:
            raise VTSSError("ratios= is empty; give at least one candidate")
        bad = [r for r in cfg.ratios if not math.isfinite(r) or r < 0]
        if bad:
            raise VTSSError(f"ratios must be finite and >= 0, got {bad}")
    if cfg.sizes is not None and not cfg.sizes:
        raise VTSSError("sizes= is empty; give at least one candidate")
    _one_of("tg_test", cfg.tg_test, TG_TESTS)
    if cfg.tg_head_loss is not None:
        _one_of("tg_head_loss", cfg.tg_head_loss, TG_HEAD_LOSSES)
    tg_set = cfg.tg_test != "calibrated" or not cfg.tg_join_weak or cfg.tg_head_loss
    if tg_set and cfg.grid != "tg":
        raise VTSSError('tg_test, tg_join_weak and tg_head_loss apply to grid="tg" only')


def _check_validation(cfg: SearchConfig) -> None:
    folds = cfg.folds
    if folds != "auto" and folds is not None and (isinstance(folds, str | bool) or folds < 2):
        raise VTSSError(
            f"folds must be 'auto', an integer >= 2, or None for the hold-out, got {folds!r}"
        )
    if cfg.repeats is not None and cfg.repeats < 1:
        raise VTSSError(f"repeats must be >= 1, got {cfg.repeats}")
    if cfg.selection == "one_se" and cfg.folds is None:
        raise VTSSError('selection="one_se" needs folds (e.g. folds=5, repeats=5)')


def _check_strategy_settings(cfg: SearchConfig) -> None:
    if "halving" in cfg.strategy and cfg.folds not in (None, "auto"):
        raise VTSSError("halving strategies use the hold-out; drop folds= or use 'parallel'")
    if cfg.halving_eta <= 1:
        raise VTSSError(f"halving_eta must be > 1, got {cfg.halving_eta}")
    if not (math.isfinite(cfg.max_ratio) and cfg.max_ratio > 0):
        raise VTSSError(f"max_ratio must be a finite number > 0, got {cfg.max_ratio}")
    if not 0 < cfg.finetune_fraction <= 1:
        raise VTSSError(f"finetune_fraction must be in (0, 1], got {cfg.finetune_fraction}")
    _check_ray_options(cfg)


def _check_ray_options(cfg: SearchConfig) -> None:
    options = cfg.ray_options
    if options is None:
        return
    if cfg.strategy != "ray":
        raise VTSSError(f"ray_options apply to strategy='ray' only, not {cfg.strategy!r}")
    unknown = sorted(set(options) - set(RAY_OPTIONS))
    if unknown:
        raise VTSSError(f"unknown ray_options {unknown}; choose from {', '.join(RAY_OPTIONS)}")
    for name in ("max_concurrent", "stack_size"):
        value = options.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise VTSSError(f"ray_options {name} must be an integer >= 1, got {value!r}")
    resources = options.get("resources")
    if resources is not None and (
        not isinstance(resources, dict)
        or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v < 0
            for v in resources.values()
        )
    ):
        raise VTSSError(
            f"ray_options resources must map resource names to amounts >= 0 "
            f"(e.g. {{'cpu': 1, 'gpu': 1}}), got {resources!r}"
        )
