"""Selection rules: which candidate wins, given its validation losses.

``"min"`` is the paper's rule. With few minority validation rows a single minimum is
noisy, so steadier rules are offered: ``"one_se"`` (among candidates within one
standard error of the best, take the one closest to full balance; needs folds),
``"paired_se"`` (full balance unless a candidate beats it by more than one *paired*
standard error over the same folds and pool prefix) and ``"smooth"`` (minimise the
curve averaged over each candidate and its neighbours).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.config import SELECTION_RULES
from vtss_lightning.search.report import CandidateResult

#: Losses closer than this (relative) count as a tie, which goes to the smaller size.
TIE_TOLERANCE = 1e-9


def select(
    results: Sequence[CandidateResult],
    rule: str = "min",
    balance_total: int | None = None,
) -> CandidateResult:
    """The winning candidate under ``rule``; ties go to the smaller total size.

    Parameters
    ----------
    results
        Candidates in increasing size order, with mean losses and fold losses.
    rule
        One of :data:`SELECTION_RULES`.
    balance_total
        Synthetic rows at full balance (sum of gaps), for ``one_se`` with absolute
        sizes; ratio candidates use ``|ratio - 1|``.
    """
    ok = [c for c in results if c.val_balanced_loss is not None]
    if not ok:
        raise VTSSError(
            f"every candidate failed ({results[0].status.removeprefix('failed: ')}); lower "
            "the learning rate (non-finite loss) or the model/batch size (out of memory)"
        )
    if rule == "min":
        return _lowest(ok, [c.val_balanced_loss for c in ok])
    if rule == "smooth":
        return _lowest(ok, _smoothed([c.val_balanced_loss for c in ok]))
    if rule == "one_se":
        return _one_se(ok, balance_total)
    if rule == "paired_se":
        return _paired_se(ok, balance_total)
    raise VTSSError(f"unknown selection rule {rule!r}; choose one of {', '.join(SELECTION_RULES)}")


def _lowest(cands: Sequence[CandidateResult], losses: Sequence[float]) -> CandidateResult:
    best = min(losses)
    tol = TIE_TOLERANCE * max(1.0, abs(best))
    tied = [c for c, v in zip(cands, losses, strict=True) if v - best <= tol]
    return min(tied, key=lambda c: c.total_size)


def _smoothed(losses: Sequence[float]) -> list[float]:
    """Mean of each loss with its neighbours (window 3, shrinking at the ends)."""
    n = len(losses)
    return [
        sum(losses[max(0, i - 1) : i + 2]) / len(losses[max(0, i - 1) : i + 2]) for i in range(n)
    ]


def _balance_anchor(cands: Sequence[CandidateResult], balance_total: int | None):
    """The candidate at (or nearest to) full balance."""

    def distance(c: CandidateResult) -> float:
        if c.ratio is not None:
            return abs(c.ratio - 1.0)
        return abs(c.total_size - (balance_total or 0))

    return min(cands, key=lambda c: (distance(c), c.total_size))


def paired_differences(c: CandidateResult, anchor: CandidateResult) -> list[float]:
    """Loss differences to ``anchor`` split by split (same folds, same pool prefix)."""
    return [
        a - b
        for a, b in zip(c.fold_losses, anchor.fold_losses, strict=True)
        if a is not None and b is not None
    ]


def _paired_se(cands: Sequence[CandidateResult], balance_total: int | None) -> CandidateResult:
    """Full balance unless a candidate beats it by more than one paired standard error.

    Every candidate is compared with the full-balance candidate on the same splits
    (the same folds and the same pool prefix), so split-to-split noise that moves all
    candidates together cancels; among the candidates whose mean paired difference is
    below ``-SE``, the lowest mean loss wins. Without folds (one split) it is ``min``.
    """
    anchor = _balance_anchor(cands, balance_total)
    if len(anchor.fold_losses) < 2:
        return _lowest(cands, [c.val_balanced_loss for c in cands])
    better = []
    for c in cands:
        diffs = paired_differences(c, anchor)
        if c is anchor or len(diffs) < 2:
            continue
        mean = sum(diffs) / len(diffs)
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
        if mean < -se:
            better.append(c)
    if not better:
        return anchor
    return _lowest(better, [c.val_balanced_loss for c in better])


def _one_se(cands: Sequence[CandidateResult], balance_total: int | None) -> CandidateResult:
    best = _lowest(cands, [c.val_balanced_loss for c in cands])
    folds = [v for v in best.fold_losses if v is not None]
    if len(folds) < 2:
        raise VTSSError(
            'selection="one_se" needs fold losses: use folds= (e.g. folds=5, repeats=5)'
        )
    mean = sum(folds) / len(folds)
    se = math.sqrt(sum((v - mean) ** 2 for v in folds) / (len(folds) - 1) / len(folds))
    within = [c for c in cands if c.val_balanced_loss <= best.val_balanced_loss + se]

    def distance(c: CandidateResult) -> float:
        if c.ratio is not None:
            return abs(c.ratio - 1.0)
        return abs(c.total_size - (balance_total or 0))

    return min(within, key=lambda c: (distance(c), c.total_size))
