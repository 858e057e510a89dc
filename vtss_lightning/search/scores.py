"""Where a search's (split, candidate) scores live while it runs, and how they are fed.

A persistent :class:`ScoreStore` (``progress.ProgressStore``) is what makes a killed
search resumable; :class:`MemoryStore` keeps scores for one run only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

from vtss_lightning.search.grid import Candidate
from vtss_lightning.search.strategies.base import Scorer, StagedScorer


class Scores:
    """Losses and seconds of every (candidate, split), filled as fits finish."""

    def __init__(self, candidates: list[Candidate], n_splits: int) -> None:
        self.candidates = candidates
        self.losses = [[math.nan] * n_splits for _ in candidates]
        self.seconds = [0.0] * len(candidates)
        self.notes: dict[int, str] = {}  # why a candidate failed or was trained differently
        self.pool_mb = 0.0
        self.extensions: list[float] = []  # ratios added because the largest size won
        self.comparators: dict[int, float] = {}  # logit-adjusted no-synthetic loss by split

    def add(self, candidate: Candidate) -> int:
        """Append a candidate (e.g. a grid extension); its index."""
        self.candidates.append(candidate)
        self.losses.append([math.nan] * len(self.losses[0]))
        self.seconds.append(0.0)
        return len(self.candidates) - 1

    def restore(self, store: ScoreStore) -> list[list[int]]:
        """Take the store's finished fits; the candidates still to fit, per split."""
        todo = []
        for s in range(len(self.losses[0])):
            pending = [i for i in range(len(self.candidates)) if not self.take(store, s, i)]
            comparator = store.comparator(s)
            if comparator is not None:
                self.comparators[s] = comparator
            todo.append(pending)
        return todo

    def take(self, store: ScoreStore, s: int, i: int) -> bool:
        """Copy the store's score of candidate ``i`` on split ``s`` and the status kept
        with it (e.g. where halving pruned it); False if it has none."""
        done = store.get(s, i)
        if done is not None:
            self.losses[i][s] = done[0]
            self.seconds[i] += done[1]
            note = store.note(s, i) if hasattr(store, "note") else None
            if note is not None:
                self.notes[i] = note
        return done is not None

    def put(self, s: int, i: int, loss: float, seconds: float) -> float:
        loss = loss if math.isfinite(loss) else math.nan
        self.losses[i][s] = loss
        self.seconds[i] += seconds
        return loss


class ScoreStore(Protocol):
    """Where finished (split, candidate) scores live; a persistent one enables resume.

    A store may also keep what a strategy needs besides the scores for a resumed
    search to report and schedule as the uninterrupted one (:class:`MemoryStore`'s
    ``note``/``put_note``, ``record``/``entries``): :meth:`Scores.take` restores a
    ``note`` when the store has one.
    """

    def get(self, split: int, candidate: int) -> tuple[float, float] | None: ...

    def put(
        self, split: int, candidate: int, loss: float, seconds: float, comparator=None
    ) -> None:
        """``comparator``: the split's logit-adjusted no-synthetic loss, kept with the
        no-synthetic fit that produced it so a resumed search reports it too."""

    def comparator(self, split: int) -> float | None: ...


class MemoryStore:
    """Scores kept for the duration of one search.

    Besides the scores: ``notes``, the status of a (split, candidate) (why its loss is
    NaN, e.g. pruned by successive halving, or how it was trained), and ``entries``,
    a strategy's own records in order (halving's schedule and rung losses); the
    engine never reads these, :meth:`Scores.take` restores the notes.
    """

    def __init__(self) -> None:
        self.scores: dict[tuple[int, int], tuple[float, float]] = {}
        self.comparators: dict[int, float] = {}
        self.notes: dict[tuple[int, int], str] = {}
        self.entries: list[dict] = []

    def note(self, split: int, candidate: int) -> str | None:
        return self.notes.get((split, candidate))

    def put_note(self, split: int, candidate: int, note: str) -> None:
        """Keep a candidate's status (before its score: a score never lacks it)."""
        self.notes[(split, candidate)] = note

    def record(self, entry: dict) -> None:
        """Keep one record of a strategy's own (JSON-able)."""
        self.entries.append(entry)

    def comparator(self, split: int) -> float | None:
        return self.comparators.get(split)

    def get(self, split: int, candidate: int) -> tuple[float, float] | None:
        return self.scores.get((split, candidate))

    def put(
        self, split: int, candidate: int, loss: float, seconds: float, comparator=None
    ) -> None:
        self.scores[(split, candidate)] = (loss, seconds)
        if comparator is not None:
            self.comparators[split] = comparator


def scores_across_splits(scorer: Scorer) -> bool:
    """Whether the scorer takes every split's jobs at once (:class:`.base.StagedScorer`)."""
    return bool(getattr(scorer, "scores_across_splits", False))


def score_jobs(
    scorer: Scorer, dm, jobs: list[tuple[int, dict[int, int]]], notes: dict | None = None
) -> Iterator[tuple[int, float, float]]:
    """Yield ``(candidate index, loss, seconds)`` for each job, as each finishes.

    The scorer's ``score_many`` decides how (one at a time, guarded against running
    out of memory, or several at once); the status it records for a job (why its loss
    is NaN, or how it was trained differently) is copied into ``notes``.
    """
    for item in scorer.score_many(dm, jobs):
        status = scorer.statuses.get(item[0])
        if status is not None and notes is not None:
            notes[item[0]] = status
        yield item


def score_staged(
    scorer: StagedScorer, verbose: bool = False, notes: dict | None = None
) -> Iterator[tuple[int, int, float, float]]:
    """Yield ``(split, candidate index, loss, seconds)`` of the staged jobs as each finishes.

    The cross-split counterpart of :func:`score_jobs` (the jobs were handed over with
    ``scorer.stage``); statuses are copied into ``notes`` the same way.
    """
    for item in scorer.run_staged(verbose):
        status = scorer.statuses.get(item[1])
        if status is not None and notes is not None:
            notes[item[1]] = status
        yield item
