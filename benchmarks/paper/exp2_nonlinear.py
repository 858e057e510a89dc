"""Paper experiment 2 (end-to-end, non-linear): jitter generator + logistic regression
on 100 random Fourier features, 5-fold selection of the synthetic size.

Each repetition ``r`` (seed ``seed + r``):

1. ``VTSSCallback(ratios=0..2 step 0.1, folds=5)`` inside an ordinary ``pl.Trainer.fit``
   on ``TabularDataModule(dataset="paper_nonlinear", scale=False,
   generator=JitterGenerator(scale=1.0))`` with ``TabularClassifier(random_features=100,
   rff_lengthscale=2.0, weight_decay=3e-4)`` (L-BFGS to convergence): selected ratio and
   the final model's balanced test log loss (10,000 test rows per class);
2. the test-loss curve: the same initial model (same random features) re-trained at
   every ratio on the hold-out training split and the same kind of pool, scored on the
   test rows;
3. TG-VTSS: the same fit with ``VTSSCallback(grid="tg", folds=5)`` (pilot on the real
   training rows, diagnostics in the last layer = the random-feature head, its own
   grid): selected ratio, grid kind and final balanced test log loss.

Usage::

    .venv/bin/python benchmarks/paper/exp2_nonlinear.py --reps 3
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    InitCapture,
    fmt,
    holdout_curve,
    machine,
    mean_se,
    plot_curves,
    quiet,
    ratio_grid,
    single_thread,
    today,
    trainer,
    write_section,
)

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.generators import JitterGenerator  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402

#: Ma & Zhang, arXiv 2601.16120, experiment 2 (100 repetitions; γ relative to the
#: 4000/200 design's gap).
PUBLISHED = {
    "none": 0.158,
    "balance": 0.1285,
    "minimum": 0.1218,
    "argmin": 0.53,
    "vtss": 0.1219,
    "selected": 0.55,
}


@dataclass
class Rep:
    seed: int
    gap: int
    selected: float
    vtss_test: float
    ratios: list[float]
    val: list[float]
    test: list[float]
    seconds: float
    tg_selected: float
    tg_test: float
    tg_diag: dict


def run_rep(seed: int, ratios, args) -> Rep:
    pl.seed_everything(seed, verbose=False)
    dm = TabularDataModule(
        dataset="paper_nonlinear", scale=False, seed=seed, generator=JitterGenerator(scale=1.0)
    )
    model = TabularClassifier(
        random_features=100, rff_lengthscale=args.lengthscale, weight_decay=args.weight_decay
    )
    capture = InitCapture()
    callback = VTSSCallback(ratios=ratios, folds=args.folds, verbose=False, seed=seed)
    t0 = time.perf_counter()
    tr = trainer([capture, callback])
    tr.fit(model, datamodule=dm)
    result = callback.result
    assert result is not None and result.test_metrics is not None
    cr, val, test, _ = holdout_curve(dm, capture.template, tr, ratios, seed)
    tg = run_tg(seed, args)
    return Rep(
        seed=seed,
        gap=int(dm.class_gaps()[1]),
        selected=float(result.selected_ratio),
        vtss_test=float(result.test_metrics["balanced_log_loss"]),
        ratios=cr,
        val=val,
        test=test,
        seconds=time.perf_counter() - t0,
        tg_selected=float(tg.selected_ratio),
        tg_test=float(tg.test_metrics["balanced_log_loss"]),
        tg_diag=tg.diagnostics["tg"],
    )


def run_tg(seed: int, args):
    """The same fit with TG-VTSS choosing its own grid."""
    pl.seed_everything(seed, verbose=False)
    dm = TabularDataModule(
        dataset="paper_nonlinear", scale=False, seed=seed, generator=JitterGenerator(scale=1.0)
    )
    model = TabularClassifier(
        random_features=100, rff_lengthscale=args.lengthscale, weight_decay=args.weight_decay
    )
    callback = VTSSCallback(grid="tg", folds=args.folds, verbose=False, seed=seed)
    trainer([callback]).fit(model, datamodule=dm)
    return callback.result


def report(args, argv, reps: list[Rep], png: Path, wall: float) -> str:
    ratios = np.asarray(reps[0].ratios)
    test = np.asarray([r.test for r in reps])
    m = test.mean(0)
    se = test.std(0, ddof=1) / math.sqrt(len(reps)) if len(reps) > 1 else np.full_like(m, np.nan)
    i0, i1 = int(np.argmin(np.abs(ratios))), int(np.argmin(np.abs(ratios - 1)))
    imin = int(np.argmin(m))
    vt, vt_se = mean_se([r.vtss_test for r in reps])
    sel = [r.selected for r in reps]
    sm, sse = mean_se(sel)
    diff = np.asarray([r.vtss_test - r.test[i1] for r in reps])
    dm_, dse = mean_se(diff)
    below = sum(s < 1 for s in sel)
    tg_sel = [r.tg_selected for r in reps]
    tgm, tgse = mean_se([r.tg_test for r in reps])
    tg_diff = mean_se([r.tg_test - r.test[i1] for r in reps])
    qual = [r.tg_diag["generator_quality"] or r.tg_diag["regime"] for r in reps]
    gap = reps[0].gap
    # The published γ is relative to the full design's gap (3,800); ours to the 80%
    # training split's gap (3,040): the same number of rows is γ·3800/3040 here.
    conv = 3800 / gap
    p = PUBLISHED
    done = "MET" if (sm < 1 and dm_ < 0) else "NOT MET"
    tg_done = "MET" if (np.mean(tg_sel) < 1 and tg_diff[0] < 0) else "NOT MET"
    lines = [
        "## Experiment 2: end-to-end, non-linear (jitter + logistic regression on RFF)",
        "",
        '`TabularDataModule(dataset="paper_nonlinear", scale=False, '
        "generator=JitterGenerator(scale=1.0))` (n0 = 4000, n1 = 200, d = 5; 80/20 hold-out "
        "for the final model, balanced test set 10,000 per class), "
        f"`TabularClassifier(random_features=100, rff_lengthscale={args.lengthscale:g}, "
        f"weight_decay={args.weight_decay:g})` (L-BFGS to convergence), "
        f"`VTSSCallback(ratios=0…2 step {args.grid_step:g}, folds={args.folds})` in "
        "`pl.Trainer(max_epochs=1)`. The curve re-trains the same initial model (same random "
        "features) at every γ on the hold-out training split.",
        "",
        f"- Command: `{shlex.join(argv)}`",
        f"- Machine: {machine()}",
        f"- Date: {today()}; wall {wall:.0f} s ({np.mean([r.seconds for r in reps]):.0f} s/rep)",
        f"- Repetitions: {len(reps)} (seeds {reps[0].seed}–{reps[-1].seed}); gap of the 80% "
        f"training split {gap} rows (γ = 1); published γ are relative to 3,800.",
        "",
        "| quantity | published (100 reps) | ours |",
        "|---|---|---|",
        f"| no augmentation (γ = 0) | {p['none']} | {fmt(m[i0], se[i0])} |",
        f"| full balance (γ = 1) | {p['balance']} | {fmt(m[i1], se[i1])} |",
        f"| curve minimum | ≈ {p['minimum']} at γ ≈ {p['argmin']} (≈ 2,000 rows) | "
        f"{fmt(m[imin], se[imin])} at γ = {ratios[imin]:g} ({round(ratios[imin] * gap):,} rows "
        f"= γ {ratios[imin] / conv:.2f} of 3,800) |",
        f"| **TG-VTSS final model** | **{p['vtss']}** | **{fmt(tgm, tgse)}** |",
        f"| TG-VTSS selected γ | {p['selected']} (0.35–0.85) | {np.mean(tg_sel):.3f} "
        f"(range {min(tg_sel):g}–{max(tg_sel):g}; {sum(s < 1 for s in tg_sel)}/{len(tg_sel)} "
        "below 1) |",
        f"| TG-VTSS − full balance, same rep | — | {fmt(*tg_diff)} |",
        f"| TG diagnostics | — | regime: {', '.join(sorted(set(r.tg_diag['regime'] for r in reps)))}; "
        f"grid: {', '.join(f'{q} ×{qual.count(q)}' for q in sorted(set(qual)))}; GQS median "
        f"{np.median([r.tg_diag['gqs'] or np.nan for r in reps]):.1f}; ρ̂ median "
        f"{np.median([r.tg_diag['rho'] or np.nan for r in reps]):.2f} |",
        f"| plain VTSS final model (γ 0…2 step {args.grid_step:g}) | — | {fmt(vt, vt_se)} |",
        f"| plain VTSS selected γ | — | {sm:.3f} ± {sse:.3f} "
        f"(range {min(sel):g}–{max(sel):g}; {below}/{len(sel)} below 1) |",
        f"| plain VTSS − full balance, same rep | — | {fmt(dm_, dse)} |",
        "",
        "**Done-when (selects below full balance on average and beats it):** "
        f"TG-VTSS **{tg_done}** (TG-VTSS − full balance {fmt(*tg_diff)}"
        f"{'' if abs(tg_diff[0]) > 2 * tg_diff[1] else ', within 2 SE'}); plain VTSS "
        f"**{done}** ({fmt(dm_, dse)}{'' if abs(dm_) > 2 * dse else ', within 2 SE'}).",
        "",
        f"![exp2 curves]({png.name})",
        "",
        "Per repetition: "
        + "; ".join(
            f"seed {r.seed}: γ̂ {r.selected:g}, VTSS {r.vtss_test:.4f}, TG γ̂ {r.tg_selected:g}, "
            f"TG {r.tg_test:.4f}, γ=0 {r.test[i0]:.4f}, γ=1 {r.test[i1]:.4f}"
            for r in reps
        ),
        "",
        "Setup choices and differences:",
        "",
        f"- RBF length-scale ℓ = {args.lengthscale:g} (`W ~ N(0, 1/ℓ²)`): about the ring's "
        "radius (2.2) and the spread of the unit-variance majority, so the kernel is smooth "
        "on the scale of the class boundary; shorter ℓ with only 100 random features makes "
        "the fit close to separable on the 160 training minority rows (a single-seed probe, "
        "seed 0, hold-out, wd 0: ℓ = 0.7 gave 0.35 / 0.26 / 0.31 at γ = 0 / 0.5 / 1; ℓ = 1: "
        "0.18 / 0.13 / 0.18; ℓ = 2: 2.75 / 0.12 / 0.12). The paper does not state ℓ "
        "(scikit-learn's `RBFSampler` default γ = 1 would be ℓ = 0.71).",
        f"- L2 weight decay {args.weight_decay:g} on the mean loss ≈ scikit-learn's default "
        "C = 1 at γ = 0 (1/C/n with n ≈ 3,360); the paper's regularisation is not stated. "
        "Without it the γ = 0 fit is near-separable and its test loss explodes (probe above), "
        "so the γ = 0 figure is the one most sensitive to this choice. scikit-learn's penalty "
        "shrinks relative to the loss as synthetic rows are added; ours is fixed per row.",
        "- Selection uses 5-fold CV over all 4,200 development rows (sizes rescaled per fold); "
        "the final model and the curve train on the 80% hold-out split (gap 3,040), as the "
        "package's callback does; the paper refits on all rows.",
        "- The curve's pool is drawn at the largest candidate (2× gap), the final model's at "
        "the chosen size: same generator and seed, different rows, so the final model and "
        "the curve at γ̂ differ slightly.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-step", type=float, default=0.1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--lengthscale", type=float, default=2.0)
    parser.add_argument("--weight-decay", type=float, default=3e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quiet()
    single_thread(args.threads)
    ratios = ratio_grid(2.0, args.grid_step)
    png = RESULTS / "paper_exp2_curve.png"
    start = time.perf_counter()
    reps = []
    for r in range(args.reps):
        rep = run_rep(args.seed + r, ratios, args)
        reps.append(rep)
        print(
            f"rep {r + 1}/{args.reps} seed {rep.seed}: γ̂ {rep.selected:g}, VTSS "
            f"{rep.vtss_test:.4f}, test γ=0 {rep.test[0]:.4f}, min {min(rep.test):.4f} "
            f"({rep.seconds:.0f} s)",
            flush=True,
        )
    wall = time.perf_counter() - start
    test = np.asarray([r.test for r in reps])
    vt, vt_se = mean_se([r.vtss_test for r in reps])
    sm = float(np.mean([r.selected for r in reps]))
    plot_curves(
        png,
        f"Paper exp. 2 (non-linear, jitter, RFF logistic): {len(reps)} reps, ± 1 SE",
        reps[0].ratios,
        [("test (10,000/class)", test), ("hold-out validation", [r.val for r in reps])],
        "balanced log loss",
        published=[
            (0.0, PUBLISHED["none"], "published, γ = 0"),
            (1.0, PUBLISHED["balance"], "published, full balance"),
            (PUBLISHED["argmin"], PUBLISHED["minimum"], "published minimum (γ ≈ 0.53)"),
        ],
        selected=[r.selected for r in reps],
        vtss=(sm, vt, vt_se, f"VTSS final: {vt:.4f} at mean γ̂ {sm:.2f}"),
        xlabel="γ = ñ / gap (our final fits: gap 3,040 of the 80% split)",
    )
    shown = [
        ".venv/bin/python",
        "benchmarks/paper/exp2_nonlinear.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    write_section("exp2", report(args, shown, reps, png, wall))
    print(f"VTSS {fmt(vt, vt_se)}, selected γ mean {sm:.3f}; wrote {png.parent / 'paper.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
