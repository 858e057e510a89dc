"""One search from settings to result: the driver shared by the callback and the tuner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.engine import SearchEngine
from vtss_lightning.search.fidelity import FidelityRecorder
from vtss_lightning.search.final_rows import ALL, describe_final_rows, plan_final_rows
from vtss_lightning.search.generator_search import search_generators
from vtss_lightning.search.progress import ProgressStore, search_fingerprint, start_search
from vtss_lightning.search.report import VTSSResult
from vtss_lightning.search.strategies import TrainerSettings, make_scorer
from vtss_lightning.search.validation import resolve_validation

if TYPE_CHECKING:  # either Lightning package at run time (vtss_lightning._lightning)
    import pytorch_lightning as pl


def use_selected_size(dm, result: VTSSResult) -> None:
    """Set ``dm`` to the rows the final model trains on (on every rank, after a resume).

    ``final_rows="train"``: the winner's sizes on the search's own pool, so the final
    fit sees exactly the rows the winning candidate had. ``"all"``: every development
    row, with preprocessing and generators fitted on them and the selected ratio of
    their gaps (``result.final_index_sizes``, :mod:`~vtss_lightning.search.final_rows`).
    """
    if result.selected_generator is not None:  # the winner of several listed generators
        dm.use_generator(result.selected_generator, drop_others=True)
    if result.final_rows != ALL:
        if result.pool_index_sizes:
            dm.prepare_pool(result.pool_index_sizes)
        dm.set_synthetic_sizes(result.selected_index_sizes)
        return
    dm.use_all_rows()
    dm.prepare_pool(result.final_index_sizes)
    dm.set_synthetic_sizes(result.final_index_sizes)


def run_search(
    config: SearchConfig,
    dm,
    module: pl.LightningModule,
    settings: TrainerSettings,
    progress_path: str | Path | None = None,
    write_progress: bool = True,
    bar: bool = False,
    monitors: Sequence[str] = (),
) -> VTSSResult:
    """Choose the grid, train and score every candidate, select, describe the run.

    With ``progress_path``, finished fits are kept in that file and a rerun with the
    same configuration and data skips them (:class:`ProgressStore`); ``write_progress``
    is ``False`` where another process owns the file; ``bar`` draws a live bar.
    ``monitors`` names what in the user's trainer watches a metric (it keeps the
    final fit on the hold-out under ``final_rows="auto"``, see :mod:`.final_rows`).
    """
    config, plan = resolve_validation(config, dm)  # folds="auto" -> the scheme the data need
    if progress_path is not None and write_progress:
        start_search(progress_path)

    def search_one() -> VTSSResult:
        return _search_one(config, plan, dm, module, settings, progress_path, write_progress, bar)

    if len(dm.generators) > 1:  # (generator, size) pairs on the same folds
        result = search_generators(dm, search_one, config.selection, config.verbose)
    else:
        result = search_one()
    final = plan_final_rows(config, plan, monitors, result.diagnostics.get("n_splits", 1))
    describe_final_rows(result, dm, final)
    if config.verbose and result.final_rows_line():
        print(result.final_rows_line(), flush=True)
    result.config["final_rows"] = final.rows
    if len(dm.generators) > 1:
        result.config["generators"] = [repr(g) for g in dm.generators]
    return result


def _search_one(config, plan, dm, module, settings, progress_path, write_progress, bar):
    """The size search with the DataModule's generator in use: TG diagnostics (with
    ``grid="tg"``), the engine over its grid, fidelity and the strategy's notes."""
    ratios, tg = config.ratios, None
    if config.grid == "tg":
        from vtss_lightning.search.tg import run_tg_diagnostics  # binary tasks only

        tg = run_tg_diagnostics(
            module, dm, settings, config.seed, config.verbose, test=config.tg_test,
            join_weak=config.tg_join_weak, head_loss=config.tg_head_loss,
        )  # fmt: skip
        ratios = tuple(tg.candidate_ratios)
    engine = SearchEngine(config, ratios=ratios, plan=plan)
    scorer = make_scorer(config, module, settings, keep_states=config.reuses_winner)
    store = None
    if progress_path is not None:
        key = search_fingerprint(config, dm, module, settings, ratios)
        store = ProgressStore(progress_path, key, write=write_progress, verbose=config.verbose)
        if hasattr(scorer, "journal"):  # halving records its schedule there, to replay it
            scorer.journal = store
    # each split's validation rows and pool head, taken as the engine enters the split
    fidelity = FidelityRecorder(config.seed, plan)  # keeps each split's rows as it is entered
    result = engine.run(dm, scorer, store, bar=bar, on_split=fidelity.record)
    fidelity.report_into(result, dm, config.verbose)  # diagnostics["fidelity"]: held-out C2ST
    if config.reuses_winner:
        result.final_state = scorer.trained_state(result.selected_index_sizes)
    if scorer.fallback_reason:
        note = (
            f"strategy {config.strategy!r} trained one candidate at a time: "
            f"{scorer.fallback_reason}"
        )
        result.diagnostics.setdefault("notes", []).append(note)
    if tg is not None:
        result.diagnostics["tg"] = tg.to_dict()
    result.config = _search_settings(config, ratios, dm, module, settings)
    return result


def _search_settings(config, ratios, dm, module, settings) -> dict:
    """The report's ``config``: what decided this search's scores."""
    return {
        **config.scoring_settings(),
        "ratios": None if ratios is None else list(ratios),
        "refit": config.refit,
        "generator": repr(dm.generator),
        "model": type(module).__name__,
        "trainer": {k: str(v) for k, v in settings.describe().items()},
    }
