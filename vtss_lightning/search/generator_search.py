"""Which generator, and how many rows: the size search run once per listed generator.

A DataModule given ``generator=[...]`` is searched once per generator, on the same
validation splits (the folds are a function of the rows and the DataModule's seed,
not of the generator) with the same candidate grid and strategy, each generator
drawing its own pool. Every (generator, size) pair is then a candidate of the
report, labelled with its generator, and the curve shows one line per generator.

The selection rule picks a size *along each generator's curve* (its anchors, such as
``paired_se``'s full balance, and ``smooth``'s neighbours are defined on one curve);
the generator whose pick has the lowest balanced validation loss wins, ties going to
the smaller size and then to the generator listed first. A generator whose search
fails (a fit error, every candidate non-finite) is reported with the reason and the
others still compete; only when all fail is the first error raised.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from vtss_lightning.errors import error_line
from vtss_lightning.search.report import VTSSResult, generators_line
from vtss_lightning.search.selection import TIE_TOLERANCE


def search_generators(
    dm, search_one: Callable[[], VTSSResult], rule: str, verbose: bool = True
) -> VTSSResult:
    """Run ``search_one`` with each listed generator in use; the best pair's result.

    The DataModule is left on the winning generator, the other generators' fits and
    pools let go.
    """
    labels = dm.generator_labels
    results: list[VTSSResult | None] = []
    errors: list[Exception] = []
    for j, label in enumerate(labels):
        dm.use_generator(j)
        if verbose:
            print(f"VTSS generator {j + 1}/{len(labels)}: {label}", file=sys.stdout, flush=True)
        try:
            results.append(search_one())
        except Exception as err:  # one generator's failure must not hide the others'
            results.append(None)
            errors.append(err)
            if verbose:
                print(f"VTSS generator {label} failed: {error_line(err)}", flush=True)
    if all(r is None for r in results):
        raise errors[0]
    best = _best_generator(results)
    dm.use_generator(best, drop_others=True)
    merged = _merged(results, labels, errors, best, rule, [repr(g) for g in dm.generators])
    if verbose:
        summary = merged.summary().splitlines()
        print(summary[0], generators_line(merged.diagnostics["generators"]), sep="\n", flush=True)
    return merged


def _best_generator(results: list[VTSSResult | None]) -> int:
    """The position of the generator whose own pick has the lowest loss (ties: the
    smaller size, then the one listed first)."""
    picks = [
        (j, r.selected) for j, r in enumerate(results) if r is not None and _loss(r) is not None
    ]
    if not picks:  # every search ran but none has a finite loss; the first is reported
        return next(j for j, r in enumerate(results) if r is not None)
    low = min(c.val_balanced_loss for _, c in picks)
    tol = TIE_TOLERANCE * max(1.0, abs(low))
    tied = [(j, c) for j, c in picks if c.val_balanced_loss - low <= tol]
    return min(tied, key=lambda jc: (jc[1].total_size, jc[0]))[0]


def _merged(
    results: list[VTSSResult | None],
    labels: list[str],
    errors: list[Exception],
    best: int,
    rule: str,
    reprs: list[str],
) -> VTSSResult:
    """The winner's result, carrying every generator's candidates and a summary of each."""
    winner = results[best]
    assert winner is not None
    candidates = [
        replace(c, generator=labels[j])
        for j, r in enumerate(results)
        if r is not None
        for c in r.candidates
    ]
    failures = iter(errors)
    entries = [
        _entry(label, reprs[j], r, None if r is not None else next(failures))
        for j, (label, r) in enumerate(zip(labels, results, strict=True))
    ]
    ran = [r for r in results if r is not None]
    diagnostics = {
        **winner.diagnostics,
        "generators": entries,
        "generator_selection": (
            f"selection rule {rule!r} along each generator's curve; the generator whose "
            "pick has the lowest balanced validation loss wins"
        ),
    }
    timing = {
        **winner.timing,
        "search_seconds": sum(r.timing.get("search_seconds", 0.0) for r in ran),
        "peak_rss_mb": max(r.timing.get("peak_rss_mb", 0.0) for r in ran),
        "pool_mb": sum(r.timing.get("pool_mb", 0.0) for r in ran),  # the pools coexist
    }
    if any("fidelity_seconds" in r.timing for r in ran):
        timing["fidelity_seconds"] = sum(r.timing.get("fidelity_seconds", 0.0) for r in ran)
    merged = replace(
        winner,
        candidates=candidates,
        diagnostics=diagnostics,
        timing=timing,
        selected_generator=labels[best],
    )
    merged.final_state = winner.final_state
    return merged


def _entry(
    label: str, text: str, result: VTSSResult | None, error: Exception | None
) -> dict[str, Any]:
    """One generator's line of ``diagnostics["generators"]``."""
    if result is None:
        return {"generator": label, "repr": text, "status": f"failed: {error_line(error)}"}
    pick = result.selected
    tg = result.diagnostics.get("tg")
    entry = {
        "generator": label,
        "repr": text,
        "status": "ok" if pick.val_balanced_loss is not None else pick.status,
        "selected_ratio": result.selected_ratio,
        "selected_sizes": dict(result.selected_sizes),
        "val_balanced_loss": pick.val_balanced_loss,
        "fidelity": result.diagnostics.get("fidelity"),
        "search_seconds": result.timing.get("search_seconds"),
    }
    if tg is not None:  # TG-VTSS judged each generator's quality on its own
        entry["tg"] = {k: tg.get(k) for k in ("regime", "generator_quality", "gqs")}
    return entry


def _loss(result: VTSSResult) -> float | None:
    return result.selected.val_balanced_loss
