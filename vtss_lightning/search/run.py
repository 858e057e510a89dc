"""One search from settings to result: the driver shared by the callback and the tuner."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.engine import SearchEngine
from vtss_lightning.search.progress import ProgressStore, search_fingerprint
from vtss_lightning.search.report import VTSSResult
from vtss_lightning.search.strategies import TrainerSettings, make_scorer
from vtss_lightning.search.validation import resolve_validation

if TYPE_CHECKING:  # either Lightning package at run time (vtss_lightning._lightning)
    import pytorch_lightning as pl


def use_selected_size(dm, result: VTSSResult) -> None:
    """Set ``dm`` to the winner's sizes on the search's own pool, so the final fit sees
    exactly the rows the winning candidate had (on every rank, and after a resume)."""
    if result.pool_index_sizes:
        dm.prepare_pool(result.pool_index_sizes)
    dm.set_synthetic_sizes(result.selected_index_sizes)


def run_search(
    config: SearchConfig,
    dm,
    module: pl.LightningModule,
    settings: TrainerSettings,
    progress_path: str | Path | None = None,
    write_progress: bool = True,
    bar: bool = False,
) -> VTSSResult:
    """Choose the grid, train and score every candidate, select, describe the run.

    With ``progress_path``, finished fits are kept in that file and a rerun with the
    same configuration and data skips them (:class:`ProgressStore`); ``write_progress``
    is ``False`` where another process owns the file; ``bar`` draws a live bar.
    """
    config, plan = resolve_validation(config, dm)  # folds="auto" -> the scheme the data need
    ratios, tg = config.ratios, None
    if config.grid == "tg":
        from vtss_lightning.search.tg import run_tg_diagnostics  # binary tasks only

        tg = run_tg_diagnostics(module, dm, settings, config.seed, config.verbose)
        ratios = tuple(tg.candidate_ratios)
    engine = SearchEngine(config, ratios=ratios, plan=plan)
    scorer = make_scorer(config, module, settings, keep_states=config.reuses_winner)
    store = None
    if progress_path is not None:
        key = search_fingerprint(config, dm, module, settings, ratios)
        store = ProgressStore(progress_path, key, write=write_progress, verbose=config.verbose)
    result = engine.run(dm, scorer, store, bar=bar)
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
    result.config = {
        **config.scoring_settings(),
        "ratios": None if ratios is None else list(ratios),
        "refit": config.refit,
        "generator": repr(dm.generator),
        "model": type(module).__name__,
        "trainer": {k: str(v) for k, v in settings.describe().items()},
    }
    return result
