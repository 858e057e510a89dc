"""Candidate synthetic sizes: ratios of each class's gap, or absolute sizes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vtss_lightning._random import round_half_up
from vtss_lightning.errors import VTSSError

#: Default grid: none, full balance, departures up to 2x, denser near 1 (K = 9).
DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)


@dataclass(frozen=True)
class Candidate:
    """One synthetic size to try, defined relative to the main split's gaps.

    ``fractions[k]`` is the share of class ``k``'s gap to fill; on another split (a
    fold) the sizes become ``round(fractions[k] * gap_k)`` for that split's gaps,
    which is how the paper rescales sizes per fold.
    """

    ratio: float | None
    fractions: Mapping[int, float]

    def sizes(self, gaps: Mapping[int, int]) -> dict[int, int]:
        return {
            k: round_half_up(f * gaps.get(k, 0))
            for k, f in self.fractions.items()
            if gaps.get(k, 0) > 0
        }


def build_candidates(
    gaps: Mapping[int, int],
    ratios: Sequence[float] | None = None,
    sizes: Sequence[Mapping[int, int]] | None = None,
) -> list[Candidate]:
    """Candidates from a ratio grid or from absolute per-class sizes (not both).

    Sorted by total size so that ties in the loss resolve to the smaller size.
    """
    minority = {k: g for k, g in gaps.items() if g > 0}
    if ratios is not None and sizes is not None:
        raise VTSSError("give ratios= or sizes=, not both")
    if sizes is not None:
        if not sizes:
            raise VTSSError("sizes= is empty; give at least one candidate")
        out = []
        for cand in sizes:
            unknown = set(cand) - set(minority)
            if unknown:
                raise VTSSError(
                    f"sizes name class indices {sorted(unknown)} that are not minority classes"
                )
            if any(int(m) < 0 for m in cand.values()):
                raise VTSSError(f"candidate sizes must be >= 0, got {dict(cand)}")
            out.append(Candidate(None, {k: int(cand.get(k, 0)) / g for k, g in minority.items()}))
        return _dedupe(out, minority)
    grid = DEFAULT_RATIOS if ratios is None else tuple(float(r) for r in ratios)
    if not grid:
        raise VTSSError("ratios= is empty; give at least one candidate")
    bad = [r for r in grid if not np.isfinite(r) or r < 0]
    if bad:
        raise VTSSError(f"ratios must be finite and >= 0, got {bad}")
    return _dedupe([Candidate(r, {k: r for k in minority}) for r in sorted(set(grid))], minority)


def _dedupe(cands: list[Candidate], gaps: Mapping[int, int]) -> list[Candidate]:
    seen: set[tuple] = set()
    out = []
    for c in sorted(cands, key=lambda c: (sum(c.sizes(gaps).values()), c.ratio or 0.0)):
        key = tuple(sorted(c.sizes(gaps).items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def max_sizes(candidates: Sequence[Candidate], gaps: Mapping[int, int]) -> dict[int, int]:
    """Largest size per class over the candidates: the pool's draw size."""
    out: dict[int, int] = {}
    for c in candidates:
        for k, m in c.sizes(gaps).items():
            out[k] = max(out.get(k, 0), m)
    return out
