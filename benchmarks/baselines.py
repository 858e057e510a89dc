"""VTSS beside the usual imbalance remedies on the bundled real datasets.

For each built-in real dataset (``breast_cancer``, ``digits_ovr``, ``wine_ovr``: the
package's stratified development/test split, features standardised on training rows)
and each split seed, every method trains the same logistic regression
(``TabularClassifier(weight_decay=1e-3)``, L-BFGS) on the same 80% hold-out training
rows and is scored on the test rows:

* ``none``: plain ERM on the real rows;
* ``class weight (balanced)``: ``TabularClassifier(class_weight="balanced")``;
* ``tuned cost-sensitive``: ``tune_class_weight`` over w ∈ {1, 2, 4, 8, 16} with the
  same K-fold CV as VTSS;
* ``random oversampling (γ = 1)``: ``RandomOversampler`` at full balance;
* ``SMOTE (γ = 1)``: ``SMOTEGenerator(5)`` at full balance;
* ``VTSS + SMOTE``: ``VTSSCallback(folds=5)`` with the default grid;
* ``TG-VTSS + SMOTE``: ``VTSSCallback(grid="tg", folds=5)`` (the TG cell lists the
  grid the diagnostics chose per split).

(``--repeats 5`` gives the paper's 5×5 CV, at 5× the cost.)

All use the package's public API only (the baselines are options users have too).
Reported: balanced test log loss and balanced accuracy, mean ± SE over splits, and each
method's paired difference to ``VTSS + SMOTE``.

Usage::

    .venv/bin/python benchmarks/baselines.py --reps 4
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
from _common import (  # noqa: E402
    RESULTS,
    fmt,
    machine,
    mean_se,
    quiet,
    single_thread,
    today,
    trainer,
)

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.baselines import tune_class_weight  # noqa: E402
from vtss_lightning.generators import RandomOversampler, SMOTEGenerator  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402
from vtss_lightning.search.objective import test_metrics  # noqa: E402

DATASETS = ("breast_cancer", "digits_ovr", "wine_ovr")
WEIGHTS = (1.0, 2.0, 4.0, 8.0, 16.0)
REFERENCE = "VTSS + SMOTE"
#: Written after the committed run (see the tables); revisit after a new run.
READING = (
    "Reading (4 splits, so most differences are within 2 SE): VTSS + SMOTE beats no augmentat"
    "ion clearly on breast_cancer and digits_ovr (by 0.12 in balanced log loss) and SMOTE at "
    "full balance on both (by 0.037 ± 0.005 and 0.026 ± 0.011): its size (γ̂ = 2, the grid's "
    "edge) is larger than balance there. Against the non-synthetic remedies it is ahead on br"
    "east_cancer and level on digits_ovr and wine_ovr (where every remedy is within 0.003). T"
    "G-VTSS rated SMOTE realistic on almost every split and searched around the theory target"
    "; that paid on digits_ovr (γ̂ ≈ 3, −0.013 ± 0.008 against VTSS) and not on breast_cancer"
    ". Tuned cost-sensitive weighting is the strongest non-synthetic baseline on two of the "
    "three datasets, as in the paper."
)


def model(**kwargs) -> TabularClassifier:
    return TabularClassifier(weight_decay=1e-3, **kwargs)


def fit(name: str, seed: int, generator, callbacks=(), ratio: float = 0.0, **model_kwargs):
    """One outer fit on the hold-out training rows; returns (test metrics, callbacks)."""
    pl.seed_everything(seed, verbose=False)
    dm = TabularDataModule(
        dataset=name, seed=seed, generator=generator or SMOTEGenerator(5), synthetic_ratio=ratio
    )
    m = model(**model_kwargs)
    trainer(list(callbacks)).fit(m, datamodule=dm)
    return test_metrics(m, dm.x_test, dm.y_test, dm.num_classes)


def run_split(name: str, seed: int, folds: int, repeats: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    out["none"] = fit(name, seed, None)
    out["class weight (balanced)"] = fit(name, seed, None, class_weight="balanced")
    dm = TabularDataModule(dataset=name, seed=seed)
    tuned = tune_class_weight(
        lambda w: model(class_weight=w),
        dm,
        WEIGHTS,
        {"max_epochs": 1, "accelerator": "cpu"},
        folds=folds,
        repeats=repeats,
        seed=seed,
    )
    out["tuned cost-sensitive"] = {
        **fit(name, seed, None, class_weight=tuned.best_weight),
        "w": tuned.best_weight,
    }
    out["random oversampling (γ = 1)"] = fit(name, seed, RandomOversampler(), ratio=1.0)
    out["SMOTE (γ = 1)"] = fit(name, seed, SMOTEGenerator(5), ratio=1.0)
    for label, grid in ((REFERENCE, "default"), ("TG-VTSS + SMOTE", "tg")):
        cb = VTSSCallback(grid=grid, folds=folds, repeats=repeats, verbose=False, seed=seed)
        metrics = fit(name, seed, SMOTEGenerator(5), callbacks=[cb])
        extra = {"ratio": float(cb.result.selected_ratio)}
        if grid == "tg":
            tg = cb.result.diagnostics["tg"]
            extra["grid"] = tg["generator_quality"] or tg["regime"]
        out[label] = {**metrics, **extra}
    return out


def table(results: dict[str, list[dict]], metric: str, digits: int = 4) -> list[str]:
    methods = list(next(iter(results.values()))[0])
    lines = [
        "| method | " + " | ".join(DATASETS) + " |",
        "|---|" + "---|" * len(DATASETS),
    ]
    for meth in methods:
        cells = []
        for ds in DATASETS:
            reps = results[ds]
            vals = [r[meth][metric] for r in reps]
            cell = fmt(*mean_se(vals), digits=digits)
            if "ratio" in reps[0][meth]:
                cell += f" (γ̂ {np.mean([r[meth]['ratio'] for r in reps]):.2f})"
            if "w" in reps[0][meth]:
                chosen = ", ".join(f"{r[meth]['w']:g}" for r in reps)
                cell += f" (w {chosen})"
            if "grid" in reps[0][meth]:
                cell += " [" + ", ".join(r[meth]["grid"] for r in reps) + "]"
            cells.append(cell)
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    return lines


def paired(results: dict[str, list[dict]], metric: str) -> list[str]:
    methods = [m for m in next(iter(results.values()))[0] if m != REFERENCE]
    lines = [
        "| method − " + REFERENCE + " | " + " | ".join(DATASETS) + " |",
        "|---|" + "---|" * len(DATASETS),
    ]
    for meth in methods:
        cells = [
            fmt(*mean_se([r[meth][metric] - r[REFERENCE][metric] for r in results[ds]]))
            for ds in DATASETS
        ]
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quiet()
    single_thread(args.threads)
    start = time.perf_counter()
    results: dict[str, list[dict]] = {ds: [] for ds in DATASETS}
    for ds in DATASETS:
        for r in range(args.reps):
            results[ds].append(run_split(ds, args.seed + r, args.folds, args.repeats))
            print(
                f"{ds} split {r + 1}/{args.reps} ({time.perf_counter() - start:.0f} s)", flush=True
            )
    wall = time.perf_counter() - start
    shown = [
        ".venv/bin/python",
        "benchmarks/baselines.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    doc = (__doc__ or "").split("Usage::")[0].strip()
    lines = [
        "# Baselines beside VTSS on the bundled real datasets",
        "",
        doc.split("\n\n", 1)[1],
        "",
        f"- Command: `{shlex.join(shown)}`",
        f"- Machine: {machine()}",
        f"- Date: {today()}; wall {wall:.0f} s",
        f"- Splits per dataset: {args.reps} (seeds {args.seed}–{args.seed + args.reps - 1}); "
        f"VTSS validation {args.repeats}×{args.folds}-fold CV",
        "",
        "## Balanced test log loss (mean ± SE over splits; lower is better)",
        "",
        *table(results, "balanced_log_loss"),
        "",
        "Paired difference to VTSS + SMOTE (negative = the method beats VTSS):",
        "",
        *paired(results, "balanced_log_loss"),
        "",
        READING,
        "",
        "## Balanced accuracy (mean ± SE over splits; higher is better)",
        "",
        *table(results, "balanced_accuracy"),
        "",
    ]
    out = RESULTS / "baselines.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
