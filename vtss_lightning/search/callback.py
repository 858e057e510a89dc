"""VTSSCallback: search the synthetic size inside ``trainer.fit``, then train once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vtss_lightning import _lightning
from vtss_lightning._random import global_rng_kept
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.final_rows import validation_monitors
from vtss_lightning.search.loggers import log_search
from vtss_lightning.search.objective import minority_class, test_metrics
from vtss_lightning.search.progress import PROGRESS_NAME, remove_progress
from vtss_lightning.search.ranks import on_rank_zero
from vtss_lightning.search.report import VTSSResult
from vtss_lightning.search.run import run_search, use_selected_size
from vtss_lightning.search.sample_grid import write_sample_grid
from vtss_lightning.search.strategies import TrainerSettings
from vtss_lightning.search.strategies.inner_fit import candidate_callbacks

if TYPE_CHECKING:  # either Lightning package at run time (vtss_lightning._lightning)
    import pytorch_lightning as pl

REQUIRED_DATA_API = ("class_gaps", "prepare_pool", "set_synthetic_sizes", "make_train_loader")


class VTSSCallback(_lightning.dual_base("Callback")):
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
        ``"auto"`` (default): ``"parallel"`` when the module can be stacked (the
        package's models, and yours when vmap can run them), else ``"retrain"`` with
        the reason printed; on real tables it selects what retrain selects (78/78
        KEEL runs) in 0.34-0.46x its time (``benchmarks/results/joint_solve.md``).
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
        ``"auto"`` (default): the data decide — the 20% hold-out when every class has
        at least 100 validation rows there, else stratified 5-fold over train+val
        rows, repeated (up to 5x) until the smallest class is validated about 100
        times (:mod:`vtss_lightning.search.validation`; the report's
        ``diagnostics.validation`` and ``validation_reason`` say which ran and why).
        An integer: that many folds (``repeats`` times, default 1), e.g. ``folds=5,
        repeats=5`` as in the paper; ``None``: the hold-out.
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
        ``True`` (default): the outer fit trains the final model at the chosen size
        from the initial weights, exactly as it would without this callback, so the
        trainer's checkpoints, early stopping, loggers, ``trainer.test`` and
        ``trainer.predict`` work as usual (cost: one more fit). ``False``: when the
        search trained the winner with the final settings on the hold-out (every
        strategy but ``finetune``/``ray``, without ``folds``), its weights become the
        final model and the outer fit takes no step (cheapest; the trainer's own
        checkpoints and validation metrics then hold nothing of the final model).
    final_rows
        Rows of the final fit. ``"auto"`` (default): after K-fold selection all
        development rows (train + validation, preprocessing and generators fitted
        again on them, the selected ratio of their gaps), as the paper refits, with
        the trainer's validation loop off (those rows are training rows now); the
        hold-out's training rows when a callback or LR scheduler of the trainer
        monitors a metric (it needs validation rows) or after hold-out selection.
        ``"all"`` / ``"train"`` force either. The report's
        ``diagnostics.final_rows`` says which and why.
    tg_test, tg_join_weak, tg_head_loss
        ``grid="tg"`` only. ``tg_test``: ``"calibrated"`` (default: a Box-type test
        with an F reference that holds its level on small minorities,
        ``benchmarks/results/tg_calibration.md``) or ``"chi2"`` (the paper's Wald test,
        oversized below a few thousand minority rows). ``tg_join_weak`` (default
        ``True``): when the test or the generator-quality score is within one standard
        error of its threshold, search both regimes' candidates and say why
        (``False``: the paper's one-sided grid). ``tg_head_loss``: the loss the last
        layer is refitted with, ``None`` (read from the pilot), ``"log"``,
        ``"squared"`` (0/1 targets) or ``"squared_pm"`` (+-1 targets, the paper's
        squared-loss designs).
    ray_options
        ``strategy="ray"`` only: ``resources`` of each trial (default one CPU, plus one
        GPU when there is one, e.g. ``{"cpu": 4, "gpu": 1}``), ``max_concurrent``
        trials at once, and ``stack_size``, the most candidates one trial trains as a
        stack (stackable modules; ``1``: one candidate per trial, retrain's losses).
    extend_grid, max_ratio
        With the default grid, when the largest candidate wins, add one at twice its
        ratio and search on, up to ``max_ratio`` times each class's gap (a grid that
        stops where the curve still falls would report its edge as the best size);
        ``diagnostics.grid_extended_to`` lists the added ratios, and
        ``diagnostics.curve`` says when the curve is flat. Explicit ``ratios=`` are
        searched as given.
    candidate_callbacks
        Which of the trainer's callbacks every candidate fit gets a fresh copy of.
        ``None`` (default): those that shape training (EarlyStopping,
        StochasticWeightAveraging, schedulers, your own), not those that write
        (checkpoints, progress bars, summaries, monitors, timers); a list of class
        names: exactly those (``[]``: none).
    selection
        ``"min"`` (the paper: lowest mean loss), ``"one_se"`` (within one standard
        error of the best, closest to full balance; needs ``folds``) or ``"smooth"``
        (minimum of the curve averaged with its neighbours).
    verbose
        One progress line per candidate; ``False`` is quiet.
    seed
        Seed of every candidate fit.
    progress, progress_path
        Append each finished fit to a progress file of this search (default
        ``<default_root_dir>/vtss_progress-<search tag>.jsonl``, the tag a hash of
        everything that decides the scores) so that rerunning a command killed
        mid-search skips the finished candidates; another search in the same folder
        uses its own file. The file is removed once the report is written.
        ``progress=False`` keeps nothing on disk.
    """

    def __init__(
        self,
        ratios: list[float] | None = None,
        sizes: list[dict[str, int]] | None = None,
        grid: Literal["default", "tg"] = "default",
        strategy: Literal[
            "auto", "retrain", "finetune", "parallel", "halving", "parallel_halving", "ray"
        ] = "auto",
        folds: int | Literal["auto"] | None = "auto",
        repeats: int | None = None,
        finetune_fraction: float = 0.3,
        selection: Literal["min", "one_se", "smooth", "paired_se"] = "min",
        verbose: bool = True,
        seed: int = 0,
        progress: bool = True,
        progress_path: str | None = None,
        halving_eta: float = 3.0,
        refit: bool = True,
        snapshot: Literal["best", "last"] = "last",
        candidate_callbacks: list[str] | None = None,
        extend_grid: bool = True,
        max_ratio: float = 4.0,
        final_rows: Literal["auto", "all", "train"] = "auto",
        tg_test: Literal["calibrated", "chi2"] = "calibrated",
        tg_join_weak: bool = True,
        tg_head_loss: Literal["log", "squared", "squared_pm"] | None = None,
        ray_options: dict[str, Any] | None = None,
    ) -> None:
        self.config = SearchConfig(
            ratios=ratios,
            sizes=sizes,
            grid=grid,
            strategy=strategy,
            folds=folds,
            repeats=repeats,
            finetune_fraction=finetune_fraction,
            selection=selection,
            verbose=verbose,
            seed=seed,
            progress=progress,
            progress_path=progress_path,
            halving_eta=halving_eta,
            refit=refit,
            snapshot=snapshot,
            candidate_callbacks=candidate_callbacks,
            extend_grid=extend_grid,
            max_ratio=max_ratio,
            final_rows=final_rows,
            tg_test=tg_test,
            tg_join_weak=tg_join_weak,
            tg_head_loss=tg_head_loss,
            ray_options=ray_options,
        )
        self.result: VTSSResult | None = None
        self._fit_started: float | None = None
        self._reused = False  # the winner's weights are the final model (no refit)

    #: Marks the outer search's callback, which candidate fits never get a copy of.
    runs_vtss_search = True

    @property
    def state_key(self) -> str:
        return "VTSSCallback"

    def __getattr__(self, name: str) -> Any:
        """Read-only access to the search settings, e.g. ``callback.strategy``."""
        if name != "config" and name in SearchConfig.field_names():
            return getattr(self.config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = _vtss_datamodule(trainer)
        dm.to_device(trainer.strategy.root_device)  # pool and batches live where training runs
        if self.result is None:  # a fit resumed from a checkpoint has its result already
            with global_rng_kept():  # the final fit draws what it would without the search
                self.result = self._search(trainer, pl_module, dm)
            self._reused = self._reuse_winner(trainer, pl_module)
            log_search(self.result, trainer.loggers)
        use_selected_size(dm, self.result)
        if dm.trains_on_all_rows:  # the validation rows are training rows now
            trainer.limit_val_batches = 0
            trainer.num_sanity_val_steps = 0
        if self._reused:  # no step will be taken: no sanity check, no empty bars
            trainer.num_sanity_val_steps = 0
            if trainer.progress_bar_callback is not None:
                trainer.progress_bar_callback.disable()

    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dm) -> VTSSResult:
        """The search, on rank 0 only under several devices, its result sent to every rank."""
        settings = TrainerSettings.from_trainer(trainer)
        settings.callbacks = candidate_callbacks(trainer.callbacks, self.config.candidate_callbacks)

        def search() -> VTSSResult:
            bar = trainer.progress_bar_callback is not None  # the trainer's enable_progress_bar
            path = self._progress_file(trainer)
            monitors = validation_monitors(trainer)
            result = run_search(
                self.config, dm, pl_module, settings, path, bar=bar, monitors=monitors
            )
            if trainer.world_size > 1 and result.final_state is not None:
                result.final_state = {k: v.cpu() for k, v in result.final_state.items()}
            return result

        return on_rank_zero(trainer, search)

    def _reuse_winner(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Load the winner's weights into the module instead of training it again."""
        state = self.result.final_state
        loop = trainer.fit_loop
        if self.config.refit or state is None or loop.min_epochs or loop.min_steps:
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
        if self.result is None:
            return
        folder = report_dir(trainer)  # on every rank: log_dir is a collective under DDP
        # written by rank 0; no rank leaves fit before the report exists (or its error)
        on_rank_zero(trainer, lambda: self._write_report(trainer, pl_module, folder))

    def _write_report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, folder: Path
    ) -> None:
        dm = trainer.datamodule
        if dm.has_test:
            positive = minority_class(dm.holdout.class_counts)  # binary AUPRC/AUROC's class
            metrics = test_metrics(
                pl_module, dm.x_test, dm.y_test, dm.num_classes, positive=positive
            )
            if dm.num_classes == 2:
                metrics["positive_class"] = dm.class_names[positive]
            self.result.test_metrics = metrics
        grid = write_sample_grid(dm, folder)  # image data only
        if grid is not None:
            self.result.diagnostics["sample_grid"] = grid.name
        report, _ = self.result.write(folder)
        progress = self._progress_file(trainer)
        if progress is not None:
            remove_progress(progress)  # this search's own file: the report now holds it
        if self.config.verbose:
            print(f"VTSS report written to {report}", flush=True)

    def _progress_file(self, trainer: pl.Trainer) -> Path | None:
        """The progress path as given to the search (``{search}`` in the default name
        becomes the search's tag; :func:`~vtss_lightning.search.progress.progress_file_for`
        names the file actually used)."""
        cfg = self.config
        if not cfg.progress:
            return None
        return Path(cfg.progress_path or Path(trainer.default_root_dir) / PROGRESS_NAME)

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        result = None if self.result is None else self.result.to_dict()
        return {"result": result, "reused_winner": self._reused}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the search (a resumed fit does not search again) and whether the
        final model was the reused winner (then the resumed fit does not train it)."""
        data = state_dict.get("result")
        self.result = None if data is None else VTSSResult.from_dict(data)
        self._reused = bool(state_dict.get("reused_winner", False))


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
