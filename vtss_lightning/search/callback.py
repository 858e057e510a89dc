"""VTSSCallback: search the synthetic size inside ``trainer.fit``, then train once."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.engine import SearchEngine
from vtss_lightning.search.objective import test_metrics
from vtss_lightning.search.progress import PROGRESS_NAME, ProgressStore, search_fingerprint
from vtss_lightning.search.report import VTSSResult
from vtss_lightning.search.sample_grid import write_sample_grid
from vtss_lightning.search.selection import check_rule
from vtss_lightning.search.strategies import (
    STRATEGIES,
    RetrainScorer,
    TrainerSettings,
    clone_module,
    make_scorer,
)

REQUIRED_DATA_API = ("class_gaps", "prepare_pool", "set_synthetic_sizes", "make_train_loader")


class VTSSCallback(Callback):
    """Pick the synthetic size with the lowest balanced validation loss, in ``fit``.

    At ``on_fit_start`` every candidate is trained in a fresh inner Trainer (same
    initial weights, same pool, the outer trainer's device, precision and epoch/step
    budget; no outer loggers, checkpoints or callbacks; RNG isolated). The outer fit
    then trains the final model at the chosen size from the untouched initial weights.
    At ``on_fit_end`` the report (``vtss_report.json``, ``vtss_curve.png``) is written
    into the trainer's log dir, with test metrics when the DataModule has test data.
    A fit resumed from a checkpoint restores the search result instead of searching.

    Parameters
    ----------
    ratios
        Shares of each minority class's gap to try; default
        ``(0, .5, .75, .9, 1, 1.1, 1.25, 1.5, 2)``.
    sizes
        Absolute candidates instead: a list of ``{class_label: rows}`` dicts.
    grid
        ``"default"`` uses ``ratios``/``sizes`` (or the default grid); ``"tg"`` runs the
        theory-guided diagnostics (TG-VTSS, binary tasks) on a pilot trained on the
        real rows and searches the grid they choose; the report's ``diagnostics.tg``
        explains why.
    strategy
        ``"retrain"`` (exact: every candidate trained from scratch), ``"parallel"``
        (all candidates trained at once as one stacked model, each with its own
        data and retrain's budget, scored at its best epoch; modules that cannot be
        stacked fall back to retrain with the reason), ``"halving"`` /
        ``"parallel_halving"`` (successive halving with optimizer steps as the
        resource; hold-out only), ``"ray"`` (each candidate a Ray Tune trial, for
        several GPUs or nodes) or ``"finetune"`` (cheaper: one fit on real rows, each
        candidate fine-tuned from it for ``finetune_fraction`` of the budget; may
        understate large sizes).
    folds, repeats
        Stratified (repeated) K-fold selection over train+val rows instead of the
        hold-out, e.g. ``folds=5, repeats=5`` as in the paper.
    finetune_fraction
        Share of the epoch/step budget each fine-tune gets.
    halving_eta
        Halving factor of ``"halving"`` strategies: each rung keeps the best 1/eta.
    snapshot
        Stacked strategies (``"parallel"``, ``"parallel_halving"``): ``"last"``
        (default) scores and keeps each candidate at its final step, exactly like
        ``"retrain"``; ``"best"`` at its best epoch by balanced validation loss (early
        stopping per candidate; it selects differently from retrain, see
        ``benchmarks/results/search_cost.md``).
    refit
        ``False`` (default): when the search trained the winner with the final
        settings on the hold-out (every strategy but ``finetune``/``ray``, without
        ``folds``), its weights become the final model and the outer fit trains no
        further; ``True``: the outer fit trains the final model from the initial
        weights as usual (and writes its own checkpoints and training logs).
    selection
        ``"min"`` (the paper: lowest mean loss), ``"one_se"`` (within one standard
        error of the best, closest to full balance; needs ``folds``) or ``"smooth"``
        (minimum of the curve averaged with its neighbours).
    verbose
        One progress line per candidate; ``False`` is quiet.
    seed
        Seed of every candidate fit.
    progress, progress_path
        Append each finished fit to a progress file (default
        ``<default_root_dir>/vtss_progress.jsonl``) so that rerunning a command killed
        mid-search skips the finished candidates; the file is removed once the
        report is written. ``progress=False`` keeps nothing on disk.
    """

    def __init__(
        self,
        ratios: list[float] | None = None,
        sizes: list[dict[str, int]] | None = None,
        grid: Literal["default", "tg"] = "default",
        strategy: Literal[
            "retrain", "finetune", "parallel", "halving", "parallel_halving", "ray"
        ] = "retrain",
        folds: int | None = None,
        repeats: int = 1,
        finetune_fraction: float = 0.3,
        selection: Literal["min", "one_se", "smooth"] = "min",
        verbose: bool = True,
        seed: int = 0,
        progress: bool = True,
        progress_path: str | None = None,
        halving_eta: float = 3.0,
        refit: bool = False,
        snapshot: Literal["best", "last"] = "last",
    ) -> None:
        if strategy not in STRATEGIES:
            raise VTSSError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if folds is not None and folds < 2:
            raise VTSSError(f"folds must be >= 2 (or None for the hold-out), got {folds}")
        self.ratios, self.sizes = ratios, sizes
        self.strategy, self.folds, self.repeats = strategy, folds, repeats
        self.finetune_fraction, self.verbose, self.seed = finetune_fraction, verbose, seed
        self.selection = check_rule(selection, folds)
        if grid not in ("default", "tg"):
            raise VTSSError(f"grid must be 'default' or 'tg', got {grid!r}")
        if grid == "tg" and (ratios is not None or sizes is not None):
            raise VTSSError('grid="tg" chooses its own candidates; drop ratios= and sizes=')
        self.grid = grid
        self.progress, self.progress_path = progress, progress_path
        if "halving" in strategy and folds is not None:
            raise VTSSError("halving strategies use the hold-out; drop folds= or use 'parallel'")
        if halving_eta <= 1:
            raise VTSSError(f"halving_eta must be > 1, got {halving_eta}")
        self.halving_eta, self.refit = float(halving_eta), bool(refit)
        if snapshot not in ("best", "last"):
            raise VTSSError(f"snapshot must be 'best' or 'last', got {snapshot!r}")
        self.snapshot = snapshot
        self.result: VTSSResult | None = None
        self._fit_started: float | None = None
        self._reused = False  # the winner's weights are the final model (no refit)

    @property
    def state_key(self) -> str:
        return "VTSSCallback"

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = _vtss_datamodule(trainer)
        dm.to_device(trainer.strategy.root_device)  # pool and batches live where training runs
        if self.result is None:
            settings = TrainerSettings.from_trainer(trainer)
            path = self._progress_file(trainer)
            self.result = run_search(self, dm, pl_module, settings, path, trainer.is_global_zero)
            self._reused = self._reuse_winner(trainer, pl_module)
        dm.set_synthetic_sizes(self.result.selected_index_sizes)
        self._log_curve(trainer)

    def _reuse_winner(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Load the winner's weights into the module instead of training it again."""
        state = self.result.final_state
        loop = trainer.fit_loop
        if self.refit or state is None or loop.min_epochs or loop.min_steps:
            return False
        pl_module.load_state_dict(state)
        self.result.timing["final_fit_seconds"] = 0.0
        self.result.diagnostics["final_model"] = (
            "the search's winning candidate (trained with these settings); no refit"
        )
        return True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()
        if self._reused:  # the loop then ends before its first step; train-end hooks still run
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.result is not None and self._fit_started is not None and not self._reused:
            self.result.timing["final_fit_seconds"] = time.perf_counter() - self._fit_started

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.result is None or not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        if dm.has_test:
            self.result.test_metrics = test_metrics(pl_module, dm.x_test, dm.y_test, dm.num_classes)
        grid = write_sample_grid(dm, report_dir(trainer))  # image data only
        if grid is not None:
            self.result.diagnostics["sample_grid"] = grid.name
        report, _ = self.result.write(report_dir(trainer))
        progress = self._progress_file(trainer)
        if progress is not None:
            progress.unlink(missing_ok=True)  # the report (and any checkpoint) now hold it
        if self.verbose:
            print(f"VTSS report written to {report}", flush=True)

    def _progress_file(self, trainer: pl.Trainer) -> Path | None:
        if not self.progress:
            return None
        return Path(self.progress_path or Path(trainer.default_root_dir) / PROGRESS_NAME)

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"result": None if self.result is None else self.result.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        data = state_dict.get("result")
        self.result = None if data is None else VTSSResult.from_dict(data)

    # -------------------------------------------------------------- logging
    def _log_curve(self, trainer: pl.Trainer) -> None:
        import matplotlib.pyplot as plt

        for logger in trainer.loggers:
            logger.log_metrics(
                {
                    "vtss/selected_ratio": float(self.result.selected_ratio or 0.0),
                    "vtss/selected_val_balanced_loss": float(
                        self.result.selected.val_balanced_loss or 0.0
                    ),
                },
                step=0,
            )
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("vtss/curve", self.result.plot(), global_step=0, close=True)
        plt.close("all")


def run_search(
    cfg: VTSSCallback,
    dm,
    module: pl.LightningModule,
    settings: TrainerSettings,
    progress_path: str | Path | None = None,
    write_progress: bool = True,
) -> VTSSResult:
    """Run the engine with the callback's settings; shared with :class:`VTSSTuner`.

    With ``progress_path``, finished fits are kept in that file and a rerun with the
    same configuration and data skips them (:class:`ProgressStore`).
    """
    sizes = None if cfg.sizes is None else [_sizes_by_index(dm, s) for s in cfg.sizes]
    ratios, tg = cfg.ratios, None
    if cfg.grid == "tg":
        tg = _tg_diagnostics(cfg, dm, module, settings)
        ratios = tg.candidate_ratios
    engine = SearchEngine(ratios, sizes, cfg.folds, cfg.repeats, cfg.verbose, cfg.selection)
    reuse = not cfg.refit and cfg.folds is None
    scorer = make_scorer(
        cfg.strategy,
        module,
        settings,
        cfg.seed,
        cfg.finetune_fraction,
        cfg.halving_eta,
        keep_states=reuse,
        verbose=cfg.verbose,
        snapshot=cfg.snapshot,
    )
    store = None
    if progress_path is not None:
        key = search_fingerprint(cfg, dm, module, settings, ratios)
        store = ProgressStore(progress_path, key, write=write_progress, verbose=cfg.verbose)
    result = engine.run(dm, scorer, store)
    if reuse and hasattr(scorer, "trained_state"):
        result.final_state = scorer.trained_state(result.selected_index_sizes)
    if getattr(scorer, "fallback_reason", None):
        note = (
            f"strategy {cfg.strategy!r} trained one candidate at a time: {scorer.fallback_reason}"
        )
        result.diagnostics.setdefault("notes", []).append(note)
    if tg is not None:
        result.diagnostics["tg"] = tg.to_dict()
    result.config = {
        "strategy": cfg.strategy,
        "grid": cfg.grid,
        "ratios": ratios,
        "sizes": cfg.sizes,
        "folds": cfg.folds,
        "repeats": cfg.repeats,
        "selection": cfg.selection,
        "seed": cfg.seed,
        "halving_eta": cfg.halving_eta,
        "refit": cfg.refit,
        "snapshot": cfg.snapshot,
        "generator": repr(dm.generator),
        "model": type(module).__name__,
        "trainer": {k: str(v) for k, v in settings.kwargs.items()},
    }
    return result


def _tg_diagnostics(cfg: VTSSCallback, dm, module: pl.LightningModule, settings: TrainerSettings):
    """TG-VTSS: a pilot on the real training rows, then the diagnostics that pick the grid."""
    from vtss_lightning.search.diagnostics import tg_diagnostics

    pilot_trainer = RetrainScorer(module, settings, cfg.seed)
    pilot = pilot_trainer.fit(clone_module(module), dm, {})
    pilot.to(dm.active.x_train.device)
    diag = tg_diagnostics(pilot, dm, seed=cfg.seed)
    if cfg.verbose:
        print(diag.summary(), flush=True)
    return diag


def report_dir(trainer: pl.Trainer) -> Path:
    """The trainer's log dir (its logger's version folder, else ``default_root_dir``)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def _vtss_datamodule(trainer: pl.Trainer):
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not all(hasattr(dm, a) for a in REQUIRED_DATA_API):
        raise VTSSError(
            "VTSSCallback needs a SyntheticAugmentationDataModule (e.g. TabularDataModule) "
            "passed as trainer.fit(model, datamodule=...)"
        )
    return dm


def _sizes_by_index(dm, sizes: Mapping[str, int] | Sequence) -> dict[int, int]:
    names = dm.class_names
    out = {}
    for label, m in dict(sizes).items():
        if str(label) not in names:
            raise VTSSError(
                f"sizes name class {label!r}, which is not in the data ({', '.join(names)})"
            )
        out[names.index(str(label))] = int(m)
    return out
