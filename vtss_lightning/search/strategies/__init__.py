"""How candidates are trained: one module per strategy, one registry line each.

To add a strategy, write ``strategies/<name>.py`` with a :class:`~.base.BaseScorer`
subclass (override ``score`` for one candidate at a time, or ``score_many`` to train
several at once), add a factory to :data:`REGISTRY` below and the name to
:data:`vtss_lightning.search.config.STRATEGY_NAMES`. Strategies never import each
other; what one borrows from another (parallel halving's fallback rungs) is wired
here.
"""

from __future__ import annotations

from collections.abc import Callable

from vtss_lightning.search.config import STRATEGY_NAMES, SearchConfig
from vtss_lightning.search.strategies._members import StackedRungs
from vtss_lightning.search.strategies.base import BaseScorer, Scorer, full_budget, state_key
from vtss_lightning.search.strategies.halving import HalvingScorer
from vtss_lightning.search.strategies.inner_fit import clone_module, fit_candidate, quiet_lightning
from vtss_lightning.search.strategies.parallel import ParallelScorer
from vtss_lightning.search.strategies.retrain import FinetuneScorer, RetrainRungs, RetrainScorer
from vtss_lightning.search.strategies.settings import INHERITED, ISOLATED, TrainerSettings

#: ``factory(config, template, settings, keep_states) -> Scorer``
Factory = Callable[[SearchConfig, object, TrainerSettings, bool], Scorer]


def _retrain(cfg: SearchConfig, template, settings: TrainerSettings, keep: bool) -> Scorer:
    return RetrainScorer(template, settings, cfg.seed, keep_states=keep)


def _finetune(cfg: SearchConfig, template, settings: TrainerSettings, keep: bool) -> Scorer:
    return FinetuneScorer(template, settings, cfg.seed, cfg.finetune_fraction)


def _parallel(cfg: SearchConfig, template, settings: TrainerSettings, keep: bool) -> Scorer:
    return ParallelScorer(
        template,
        settings,
        cfg.seed,
        cfg.snapshot,
        keep_states=keep,
        verbose=cfg.verbose,
        name=cfg.strategy,
    )


def _halving(cfg: SearchConfig, template, settings: TrainerSettings, keep: bool) -> Scorer:
    return HalvingScorer(RetrainRungs(_retrain(cfg, template, settings, keep)), cfg.halving_eta)


def _parallel_halving(cfg: SearchConfig, template, settings, keep: bool) -> Scorer:
    stacked = StackedRungs(_parallel(cfg, template, settings, keep))
    fallback = RetrainRungs(_retrain(cfg, template, settings, keep))
    return HalvingScorer(stacked, cfg.halving_eta, fallback=fallback)


def _ray(cfg: SearchConfig, template, settings: TrainerSettings, keep: bool) -> Scorer:
    from vtss_lightning.search.strategies.ray import RayScorer  # Ray is an optional extra

    return RayScorer(
        template, settings, cfg.seed, keep_states=keep, snapshot=cfg.snapshot,
        stacker=ParallelScorer,  # trials train parallel's stacks (wired here, not imported)
        **(cfg.ray_options or {}),  # resources, max_concurrent, stack_size
    )  # fmt: skip


REGISTRY: dict[str, Factory] = {
    "auto": _parallel,  # stacked when the module qualifies, else retrain with the reason
    "retrain": _retrain,
    "finetune": _finetune,
    "parallel": _parallel,
    "halving": _halving,
    "parallel_halving": _parallel_halving,
    "ray": _ray,
}
assert tuple(REGISTRY) == STRATEGY_NAMES, "config.STRATEGY_NAMES and REGISTRY must agree"


def make_scorer(
    config: SearchConfig, template, settings: TrainerSettings, keep_states: bool = False
) -> Scorer:
    """The scorer of ``config.strategy``; ``keep_states`` keeps weights so the winner is reusable."""
    return REGISTRY[config.strategy](config, template, settings, keep_states)


__all__ = [
    "INHERITED",
    "ISOLATED",
    "REGISTRY",
    "BaseScorer",
    "FinetuneScorer",
    "HalvingScorer",
    "ParallelScorer",
    "RetrainScorer",
    "Scorer",
    "TrainerSettings",
    "clone_module",
    "fit_candidate",
    "full_budget",
    "make_scorer",
    "quiet_lightning",
    "state_key",
]
