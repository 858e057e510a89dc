"""VTSSTuner: the same search outside ``fit``, returning the result object."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vtss_lightning._random import global_rng_kept
from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.final_rows import callback_monitors
from vtss_lightning.search.report import VTSSResult
from vtss_lightning.search.run import run_search, use_selected_size
from vtss_lightning.search.strategies import TrainerSettings
from vtss_lightning.search.strategies.inner_fit import candidate_callbacks

if TYPE_CHECKING:  # either Lightning package at run time (vtss_lightning._lightning)
    import pytorch_lightning as pl


class VTSSTuner:
    """Search the synthetic size without an outer ``fit``, like Lightning's ``Tuner``.

    ``VTSSTuner({"max_epochs": 30}).search(model, dm)`` trains every candidate with
    those trainer settings, leaves ``dm`` set to the chosen sizes and ``model`` at its
    initial weights, and returns the :class:`VTSSResult`. A following
    ``trainer.fit(model, datamodule=dm)`` trains the final model. After K-fold
    selection ``dm`` then trains on all development rows and serves no validation
    rows (``final_rows="auto"``), unless ``trainer_kwargs["callbacks"]`` holds a
    callback that monitors a metric (then the hold-out's training rows, as the
    callback does); pass ``final_rows="train"`` when the final fit's callbacks
    monitor validation metrics and you did not give them here.

    Parameters
    ----------
    trainer_kwargs
        Settings of each candidate's Trainer: ``accelerator``, ``devices``,
        ``precision``, the budget (``max_epochs``, ``max_steps``, ``min_epochs``,
        ``min_steps``, and ``max_time``, which bounds *each* candidate fit like the
        final fit), gradient clipping, accumulation, and ``callbacks``: those that
        shape training (EarlyStopping, schedulers, your own; see
        ``candidate_callbacks``) reach every candidate fit as fresh copies, as in
        :class:`VTSSCallback`.
    **search_kwargs
        Any :class:`VTSSCallback` argument (``ratios``, ``strategy``, ``folds``, ...):
        the fields of :class:`~vtss_lightning.search.config.SearchConfig`.
    """

    def __init__(self, trainer_kwargs: dict[str, Any] | None = None, **search_kwargs: Any) -> None:
        self.settings = TrainerSettings.from_kwargs(trainer_kwargs)
        self.config = SearchConfig(**search_kwargs)
        callbacks = list((trainer_kwargs or {}).get("callbacks") or [])
        self.settings.callbacks = candidate_callbacks(callbacks, self.config.candidate_callbacks)
        self._monitors = callback_monitors(callbacks)  # they keep the final fit's val rows

    def search(
        self,
        model: pl.LightningModule,
        datamodule,
        progress_path: str | Path | None = None,
        progress_bar: bool | None = None,
    ) -> VTSSResult:
        """Run the search; with ``progress_path`` a killed search resumes where it stopped.

        Every finished fit is appended to that file; calling ``search`` again with the
        same model, data and settings skips them. The file is kept afterwards (delete
        it to search afresh); a file that belongs to another search is left alone and
        this one writes ``<stem>-<search tag><suffix>`` beside it.
        ``progress_bar`` draws a live bar over the fits (default: on a terminal).
        """
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.to_device(self.settings.device())
        if hasattr(model, "configure_from_data"):
            model.configure_from_data(datamodule)
        path = progress_path or self.config.progress_path
        bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        with global_rng_kept():  # a following trainer.fit draws what it would without it
            result = run_search(
                self.config,
                datamodule,
                model,
                self.settings,
                path,
                bar=bar,
                monitors=self._monitors,
            )
        use_selected_size(datamodule, result)
        return result
