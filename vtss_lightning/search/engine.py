"""The VTSS search loop, independent of how candidates are trained."""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any, NamedTuple

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.display import SearchDisplay
from vtss_lightning.search.findings import comparators_summary, curve_notes
from vtss_lightning.search.grid import Candidate, build_candidates, max_sizes
from vtss_lightning.search.guard import device_peak_mb, pool_megabytes
from vtss_lightning.search.report import CandidateResult, VTSSResult
from vtss_lightning.search.scores import (
    MemoryStore,
    Scores,
    ScoreStore,
    score_jobs,
    score_staged,
    scores_across_splits,
)
from vtss_lightning.search.selection import select
from vtss_lightning.search.strategies.base import Scorer
from vtss_lightning.search.validation import ValidationPlan, plan_validation


class SearchEngine:
    """Try every candidate size on every split and pick the lowest balanced loss.

    Parameters
    ----------
    config
        The search's settings (grid, validation scheme, selection rule, verbosity).
        For quick use the same settings may be given as keywords instead, e.g.
        ``SearchEngine([0, 1, 2], folds=3)`` (``ratios`` first); this low-level form
        validates on the hold-out unless ``folds`` is given (``"auto"`` included).
    ratios
        Candidate ratios replacing ``config.ratios`` (the TG-VTSS grid).
    plan
        The validation scheme already chosen for ``folds="auto"`` (else chosen here).
    **settings
        :class:`SearchConfig` fields, when ``config`` is not a :class:`SearchConfig`.
    """

    def __init__(
        self,
        config: SearchConfig | Sequence[float] | None = None,
        ratios: Sequence[float] | None = None,
        plan: ValidationPlan | None = None,
        **settings: Any,
    ) -> None:
        if not isinstance(config, SearchConfig):
            settings.setdefault("folds", None)
            config = SearchConfig(ratios=config if ratios is None else ratios, **settings)
        elif settings:
            raise VTSSError(f"give settings in the SearchConfig, not as {sorted(settings)}")
        self.config = config
        self.ratios = config.ratios if ratios is None else tuple(ratios)
        self.selection, self.verbose = config.selection, config.verbose
        self.plan: ValidationPlan | None = plan
        self._given_plan = plan
        self._on_split: Callable[[Any], None] | None = None

    @property
    def folds(self) -> int | None:
        return None if self.plan is None else self.plan.folds

    @property
    def repeats(self) -> int:
        return 1 if self.plan is None else self.plan.repeats

    def _index_sizes(self, dm) -> list[dict[int, int]] | None:
        """``config.sizes`` (keyed by class name as the user wrote it) by class index."""
        if self.config.sizes is None:
            return None
        return [sizes_by_index(dm, s) for s in self.config.sizes]

    def run(
        self,
        dm,
        scorer: Scorer,
        store: ScoreStore | None = None,
        bar: bool = False,
        on_split: Callable[[Any], None] | None = None,
    ) -> VTSSResult:
        """Score every candidate on every split; ``store`` keeps finished scores.

        A store that already holds some (split, candidate) scores, e.g. from an
        interrupted run, makes the engine skip those fits. ``bar`` draws a live bar
        over the fits (with ``verbose``). ``on_split(dm)`` runs in every split the
        engine enters, once its pool is drawn (the fidelity test keeps its rows there).
        """
        start = time.perf_counter()
        self._on_split = on_split
        self.plan = self._given_plan or plan_validation(self.config, dm)
        if self.verbose and self.plan.reason != "as configured":
            self._say(f"VTSS validation: {self.plan.name} ({self.plan.reason})")
        store = MemoryStore() if store is None else store
        holdout_gaps = dm.class_gaps()
        if not any(g > 0 for g in holdout_gaps.values()):
            return self._balanced_result(dm, start)
        candidates = build_candidates(holdout_gaps, self.ratios, self._index_sizes(dm))
        splits = [None] if self.folds is None else list(dm.fold_indices(self.folds, self.repeats))
        grid = Scores(candidates, len(splits))
        todo = grid.restore(store)
        display = SearchDisplay(sum(len(p) for p in todo), self.verbose, bar)
        try:
            self._score(dm, scorer, store, grid, splits, dict(enumerate(todo)), display)
            self._follow_the_curve(dm, scorer, store, grid, splits, holdout_gaps, display)
        finally:
            display.close()
        return self._result(dm, grid, holdout_gaps, len(splits), start)

    def _follow_the_curve(self, dm, scorer, store, grid, splits, gaps, display) -> None:
        """While the largest candidate wins, add one at twice its ratio (up to the cap).

        A grid that stops where the curve is still falling would report its edge as the
        best size; the pool is nested, so the added candidate's rows extend the others'.
        """
        cap = self.config.max_ratio
        extendable = self.ratios is None  # the default grid; explicit ones are searched as given
        while self.config.extend_grid and extendable:
            results = self._candidate_results(dm, grid, gaps)
            chosen = select(results, self.selection, sum(g for g in gaps.values() if g > 0))
            last = grid.candidates[-1]
            if chosen is not results[-1] or last.ratio is None or last.ratio >= cap:
                return
            ratio = min(cap, 2 * last.ratio) if last.ratio > 0 else 1.0
            i = grid.add(Candidate(ratio, {k: ratio for k, g in gaps.items() if g > 0}))
            grid.extensions.append(ratio)
            display.line(
                f"VTSS: the largest size won; extending the grid to ratio {ratio:g} (cap {cap:g})"
            )
            # every split that the progress file does not already hold
            todo = {s: [i] for s in range(len(splits)) if not grid.take(store, s, i)}
            self._score(dm, scorer, store, grid, splits, todo, display)

    def _score(
        self, dm, scorer, store, grid, splits, todo: Mapping[int, list[int]], display
    ) -> None:
        """Score the pending candidates of each split (``todo``: split -> indices).

        A scorer that declares ``scores_across_splits`` gets every split's jobs before
        it trains any (:meth:`_score_across`), so it can schedule them together;
        any other scorer sees one split at a time.
        """
        todo = {s: pending for s, pending in todo.items() if pending}
        if todo and scores_across_splits(scorer):
            self._score_across(dm, scorer, store, grid, splits, todo, display)
            return
        for s, pending in todo.items():
            self._score_split(dm, scorer, store, grid, s, splits[s], pending, display)

    def _score_split(self, dm, scorer, store, grid, s, split, pending, display) -> None:
        """Train and score the pending candidates of split ``s`` (``None``: the hold-out)."""
        with self._entered(dm, scorer, grid, split, display) as gaps:
            where = _Where(split, dm.active.name, gaps)
            jobs = [(i, grid.candidates[i].sizes(gaps)) for i in pending]
            for i, loss, secs in score_jobs(scorer, dm, jobs, grid.notes):  # as each finishes
                self._record(dm, scorer, store, grid, s, i, loss, secs, where, display)
        self._split_done(grid, s, split, display)

    def _score_across(self, dm, scorer, store, grid, splits, todo, display) -> None:
        """Two phases: stage every split's jobs, then record them as the scorer finishes.

        Each split is entered as for :meth:`_score_split` (its pool prepared, the
        scorer's ``begin_split``) and handed to ``scorer.stage``, which copies what
        its jobs need; ``scorer.run_staged`` then trains them all, in any order,
        while the DataModule is back on the hold-out.
        """
        where, left = {}, {}
        for s, pending in todo.items():
            with self._entered(dm, scorer, grid, splits[s], display) as gaps:
                where[s] = _Where(splits[s], dm.active.name, gaps)
                scorer.stage(dm, s, [(i, grid.candidates[i].sizes(gaps)) for i in pending])
            left[s] = len(pending)
        for s, i, loss, secs in score_staged(scorer, self.verbose, grid.notes):
            self._record(dm, scorer, store, grid, s, i, loss, secs, where[s], display)
            left[s] -= 1
            if left[s] == 0:  # the split's last job
                self._split_done(grid, s, splits[s], display)

    @contextmanager
    def _entered(self, dm, scorer, grid: Scores, split, display) -> Iterator[dict[int, int]]:
        """Inside split ``split`` (``None``: the hold-out), its pool ready; its gaps."""
        with nullcontext() if split is None else dm.use_split(*split):
            gaps = dm.class_gaps()
            _report_generator_fits(dm, display)
            grid.pool_mb = max(
                grid.pool_mb, pool_megabytes(dm.prepare_pool(max_sizes(grid.candidates, gaps)))
            )
            if self._on_split is not None:
                self._on_split(dm)
            scorer.begin_split(dm)
            yield gaps

    def _record(self, dm, scorer, store, grid, s, i, loss, secs, where, display) -> None:
        """Keep one finished (split, candidate) score: grid, status, store, display."""
        candidates = grid.candidates
        loss = grid.put(s, i, loss, secs)
        comparator = scorer.comparators.pop(where.name, None)
        if comparator is not None:  # the no-synthetic fit's logit adjustment
            grid.comparators[s] = comparator
        _keep_status(store, s, i, grid.notes.get(i))  # e.g. an OOM retry's note
        store.put(s, i, loss, secs, comparator)
        display.fit_done(loss, "" if where.split is None else where.split[0])
        if where.split is None:
            display.line(
                self._progress_line(dm, i, len(candidates), candidates[i], where.gaps, loss, secs)
            )

    @staticmethod
    def _split_done(grid: Scores, s: int, split, display) -> None:
        """The line closing a validation fold: which ratio it prefers."""
        if split is None:
            return
        candidates = grid.candidates
        row = [grid.losses[i][s] for i in range(len(candidates))]
        best = min(range(len(candidates)), key=lambda i: _nan_last(row[i]))
        display.line(f"VTSS {split[0]}: best ratio here {_ratio_text(candidates[best])}")

    def _result(self, dm, grid: Scores, holdout_gaps, n_splits: int, start: float) -> VTSSResult:
        """Selection over the mean losses, and the report's description of the search."""
        candidates = grid.candidates
        results = self._candidate_results(dm, grid, holdout_gaps)
        if self.verbose and self.folds is not None:
            for i, (cand, res) in enumerate(zip(candidates, results, strict=True)):
                mean = math.nan if res.val_balanced_loss is None else res.val_balanced_loss
                self._say(
                    self._progress_line(
                        dm, i, len(candidates), cand, holdout_gaps, mean, res.seconds
                    )
                )
        balance_total = sum(g for g in holdout_gaps.values() if g > 0)
        chosen = select(results, self.selection, balance_total)
        chosen_cand = candidates[results.index(chosen)]
        result = VTSSResult(
            candidates=results,
            selected_ratio=chosen.ratio,
            selected_sizes=dict(chosen.sizes),
            selected_index_sizes=chosen_cand.sizes(holdout_gaps),
            pool_index_sizes=max_sizes(candidates, holdout_gaps),
            diagnostics={
                **self._diagnostics(dm, holdout_gaps, n_splits),
                **self._spread(results, grid.losses, balance_total),
                **curve_notes(results, grid.extensions),
                **comparators_summary(grid.comparators, n_splits, chosen),
            },
            timing={
                "search_seconds": time.perf_counter() - start,
                "peak_rss_mb": _peak_rss_mb(),
                "pool_mb": grid.pool_mb,
                **device_peak_mb(),
            },
        )
        if self.verbose:
            self._say(result.summary())
        return result

    # ---------------------------------------------------------------- helpers
    def _candidate_results(self, dm, grid: Scores, gaps) -> list[CandidateResult]:
        return [
            self._candidate_result(dm, cand, gaps, row, secs, grid.notes.get(i))
            for i, (cand, row, secs) in enumerate(
                zip(grid.candidates, grid.losses, grid.seconds, strict=True)
            )
        ]

    def _candidate_result(
        self, dm, cand: Candidate, gaps, row: list[float], secs: float, note: str | None = None
    ) -> CandidateResult:
        failed = any(math.isnan(v) for v in row)
        status = "failed: non-finite validation loss" if failed else "ok"
        if note is not None and (failed or not note.startswith("failed")):
            status = note
        return CandidateResult(
            ratio=cand.ratio,
            sizes=_named(dm, cand.sizes(gaps)),
            val_balanced_loss=None if failed else sum(row) / len(row),
            fold_losses=[None if math.isnan(v) else v for v in row] if len(row) > 1 else [],
            seconds=secs,
            status=status,
        )

    def _spread(self, results, losses, balance_total) -> dict[str, Any]:
        """The rule applied to each repetition of repeated K-fold: how stable is it?"""
        if self.folds is None or self.repeats < 2:
            return {"selection": self.selection}
        picks = []
        for r in range(self.repeats):
            cols = range(r * self.folds, (r + 1) * self.folds)
            per_repeat = [
                replace(
                    res,
                    val_balanced_loss=None
                    if any(math.isnan(row[c]) for c in cols)
                    else sum(row[c] for c in cols) / self.folds,
                    fold_losses=[row[c] for c in cols],
                )
                for res, row in zip(results, losses, strict=True)
            ]
            pick = select(per_repeat, self.selection, balance_total)
            picks.append(pick.ratio if pick.ratio is not None else pick.total_size)
        mean = sum(picks) / len(picks)
        sd = math.sqrt(sum((p - mean) ** 2 for p in picks) / (len(picks) - 1))
        return {"selection": self.selection, "selection_by_repeat": picks, "selection_sd": sd}

    def _diagnostics(self, dm, gaps: Mapping[int, int], n_splits: int) -> dict[str, Any]:
        counts = dm.holdout.class_counts
        return {
            "class_counts_train": {name: counts[k] for k, name in enumerate(dm.class_names)},
            "gaps": _named(dm, {k: g for k, g in gaps.items() if g > 0}),
            "validation": self.plan.name,
            "validation_reason": self.plan.reason,
            "n_splits": n_splits,
            "notes": list(dm.notes),
        }

    def _balanced_result(self, dm, start: float) -> VTSSResult:
        note = "classes are already balanced (gap 0): no synthetic rows are needed"
        if self.verbose:
            self._say(f"VTSS: {note}")
        empty = CandidateResult(
            ratio=0.0, sizes={}, val_balanced_loss=None, status="skipped: no gap"
        )
        diagnostics = self._diagnostics(dm, {}, 0)
        diagnostics["notes"].append(note)
        return VTSSResult(
            [empty],
            0.0,
            {},
            {},
            diagnostics=diagnostics,
            timing={"search_seconds": time.perf_counter() - start},
        )

    def _progress_line(self, dm, i, n, cand, gaps, loss, secs) -> str:
        sizes = ", ".join(f"{k}: {v}" for k, v in _named(dm, cand.sizes(gaps)).items())
        mean = "" if self.folds is None else " (mean over folds)"
        return (
            f"VTSS [{i + 1}/{n}] ratio {_ratio_text(cand)}  sizes {{{sizes}}}  "
            f"val balanced loss {loss:.4f}{mean}  ({secs:.1f} s)"
        )

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stdout, flush=True)


class _Where(NamedTuple):
    """Where a job was trained: its split (``None``: the hold-out), the split's name
    (the key of the scorer's comparators) and its class gaps."""

    split: Any
    name: str
    gaps: dict[int, int]


def _keep_status(store: ScoreStore, s: int, i: int, note: str | None) -> None:
    """Store a candidate's status with its score, so a resumed search reports it too."""
    if note is not None and hasattr(store, "put_note") and store.note(s, i) != note:
        store.put_note(s, i, note)


def _report_generator_fits(dm, display: SearchDisplay) -> None:
    """Have the DataModule's pool builder announce each generator it fits."""
    dm.pool_builder.on_generator_fitted = display.generator_fitted


def sizes_by_index(dm, sizes: Mapping[Any, int]) -> dict[int, int]:
    """Per-class sizes keyed by class name (as the user wrote it) -> by class index."""
    names = dm.class_names
    out = {}
    for label, m in dict(sizes).items():
        if str(label) not in names:
            raise VTSSError(
                f"sizes name class {label!r}, which is not in the data ({', '.join(names)})"
            )
        out[names.index(str(label))] = int(m)
    return out


def _named(dm, sizes: Mapping[int, int]) -> dict[str, int]:
    names = dm.class_names
    return {names[k]: int(v) for k, v in sorted(sizes.items())}


def _ratio_text(cand: Candidate) -> str:
    return "custom" if cand.ratio is None else f"{cand.ratio:g}"


def _nan_last(v: float) -> float:
    return math.inf if math.isnan(v) else v


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
