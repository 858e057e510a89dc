"""The TG-VTSS candidate grid: few rows under symmetry, else around balance and ``n~*``.

The theory (Ma & Zhang, arXiv 2601.16120, "TG-VTSS") says where the best synthetic
size lies: near zero under local symmetry, near full balance and near
``n~* = gap / (1 - 2 rho)`` for a realistic generator, and anywhere up to twice the
gap for a biased one (where the estimate of ``n~*`` is not to be trusted), so the
grid spends its candidates there instead of on a fixed ratio grid.

When the evidence is weak (the symmetry test or the GQS within one standard error of
its threshold) the grid does not bet on one side: it joins both sides' candidates.
"""

from __future__ import annotations

import math

from vtss_lightning.search.tg.quality import BIASED
from vtss_lightning.search.tg.symmetry import SYMMETRIC

#: Grid under local symmetry: nothing or a little (shares of the gap).
SYMMETRIC_RATIOS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2)
#: Multipliers around full balance and around the theory target (realistic generator).
LOCAL_MULTIPLIERS: tuple[float, ...] = tuple(round(0.8 + 0.05 * i, 4) for i in range(9))
#: Wide grid for a biased generator: 0, 0.05, ..., 2.00.
WIDE_RATIOS: tuple[float, ...] = tuple(round(0.05 * i, 4) for i in range(41))


def theory_target(gap: int, rho: float) -> float:
    """``n~* = gap / (1 - 2 rho)`` in rows; ``inf`` when ``rho >= 1/2``, NaN for NaN ``rho``.

    At ``rho >= 1/2`` the generator's bias grows with the size as fast as it is
    averaged out, so no finite size cancels it.
    """
    if math.isnan(rho):
        return math.nan
    if rho < 0.5:
        return gap / (1 - 2 * rho)
    return math.inf


def tg_candidate_ratios(
    regime: str,
    generator_quality: str | None,
    target_share: float | None = None,
    weak_test: bool = False,
    weak_quality: bool = False,
) -> list[float]:
    """The TG grid (shares of the gap) for a regime, quality and ``n~*/gap``.

    Local symmetry: ``{0, .05, .10, .15, .20}``. Realistic generator:
    ``{0.80, ..., 1.20}`` around full balance, united with the same multipliers of
    ``target_share`` when it is finite and positive (0 is not added). Biased
    generator: ``{0, 0.05, ..., 2.00}``.

    Weak evidence joins both sides: ``weak_test`` (the symmetry test near its
    cutoff) unites the symmetric grid with the asymmetric one, whatever ``regime``
    says; ``weak_quality`` (the GQS near ``tau``) unites the realistic and the biased
    grids. A missing ``generator_quality`` under ``weak_test`` counts as biased.
    """
    if regime == SYMMETRIC and not weak_test:
        return list(SYMMETRIC_RATIOS)
    if generator_quality is None and weak_test:
        generator_quality = BIASED
    grid = _asymmetric_grid(generator_quality, target_share, weak_quality)
    if weak_test:
        grid |= set(SYMMETRIC_RATIOS)
    return sorted(grid)


def _asymmetric_grid(
    generator_quality: str | None, target_share: float | None, weak_quality: bool
) -> set[float]:
    local = set(LOCAL_MULTIPLIERS)
    if target_share is not None and math.isfinite(target_share) and target_share > 0:
        local |= {round(m * target_share, 4) for m in LOCAL_MULTIPLIERS}
    if weak_quality:
        return local | set(WIDE_RATIOS)
    if generator_quality == BIASED:
        return set(WIDE_RATIOS)
    return local
