"""Paper experiment 6: synthetic versus non-synthetic remedies with an MLP.

d = 10 heavy-tailed mixed marginals, n0 = 800, n1 = 100 (plus a balanced test set of
5,000 rows per class). Our law (the paper gives only the marginal families): columns
1-4 Student t (2.2 df), 5-7 Gaussian with 10% outliers (sd × 6), 8-10 log-normal
(σ = 0.75); the minority shifts the t and Gaussian columns by +0.75 and the log-normal
log-means by +0.5. Model: ``TabularClassifier(hidden_dims=[64, 32], optimizer="adamw",
lr=2e-3, weight_decay=1e-3)``, 120 epochs, batch 256, features standardised on the
training rows. All methods train on the same 80% hold-out split and are scored by
balanced test log loss:

raw ERM; ``class_weight="balanced"``; tuned cost-sensitive weight
(``tune_class_weight``, w ∈ {1, 2, 4, 8, 16} chosen by balanced validation loss);
random oversampling to balance (``RandomOversampler`` at γ = 1); SMOTE at γ = 1;
TG-VTSS + SMOTE and TG-VTSS + jitter (``JitterGenerator(scale=0.5)``):
``VTSSCallback(grid="tg")`` on the hold-out; plain VTSS with the default grid for
both generators.

Usage::

    .venv/bin/python benchmarks/paper/exp6_remedies.py --reps 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
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
    single_thread,
    today,
    trainer,
    write_section,
)

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.baselines import tune_class_weight  # noqa: E402
from vtss_lightning.generators import (  # noqa: E402
    JitterGenerator,
    RandomOversampler,
    SMOTEGenerator,
)
from vtss_lightning.models import TabularClassifier  # noqa: E402
from vtss_lightning.search.objective import balanced_loss  # noqa: E402
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings  # noqa: E402

EPOCHS = 120
PUBLISHED = {
    "raw ERM": 1.211,
    "class reweighting (balanced)": 1.102,
    "tuned cost-sensitive": 1.003,
    "random oversampling (γ = 1)": None,
    "SMOTE (γ = 1)": None,
    "TG-VTSS + SMOTE": 1.079,
    "TG-VTSS + jitter": 0.933,
    "VTSS + SMOTE": None,
    "VTSS + jitter": None,
}
GENERATORS = {"SMOTE": lambda: SMOTEGenerator(5), "jitter": lambda: JitterGenerator(scale=0.5)}
WEIGHTS = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Written after the committed run (2 reps); revisit after a new run.
NOTE = (
    "Differences (beyond 2 SE): our MLP overfits this law much more than the paper's "
    "(raw ERM 1.6 vs 1.2; duplicating or interpolating minority rows at full balance "
    "makes it worse still, 3.0–3.2), so absolute levels differ; the data law and the "
    "MLP's stopping rule are not published. The ordering the paper reports holds for "
    "the jitter generator: (TG-)VTSS + jitter is the best remedy (0.78–0.88 vs 1.5–1."
    "7 for the non-synthetic ones), as is published TG-VTSS + jitter (0.933). It does"
    " not hold for SMOTE: plain VTSS + SMOTE selects γ = 0 (SMOTE hurts here), but TG"
    "-VTSS's generator-quality score rated SMOTE realistic (GQS 1–4), and the realist"
    "ic grid (0.8–1.2 × balance and the theory target) does not contain 0, so TG-VTSS"
    " cannot fall back to no augmentation and lands at 2.19. That is a property of th"
    "e TG grid as Ma & Zhang (arXiv 2601.16120) specify it; the plain grid (which inc"
    "ludes 0) is the safer default."
)
GRID = [0.0, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0]


def simulate(n0: int, n1: int, rng) -> tuple[np.ndarray, np.ndarray]:
    def draw(n, shift):
        t = rng.standard_t(2.2, (n, 4)) + shift
        g = rng.standard_normal((n, 3))
        g = np.where(rng.random((n, 3)) < 0.1, 6 * g, g) + shift
        ln = np.exp(0.75 * rng.standard_normal((n, 3)) + (0.5 if shift else 0.0))
        return np.concatenate([t, g, ln], axis=1)

    x = np.concatenate([draw(n0, 0.0), draw(n1, 0.75)])
    return x, np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])


def mlp(**kw) -> TabularClassifier:
    return TabularClassifier(
        hidden_dims=[64, 32], optimizer="adamw", lr=2e-3, weight_decay=1e-3, **kw
    )


def datamodule(arrays, seed, generator):
    x, y, xt, yt = arrays
    return TabularDataModule.from_arrays(x, y, xt, yt, seed=seed, generator=generator)


def fit_eval(dm, model, sizes, seed):
    """Train ``model`` on the hold-out training rows + ``sizes`` synthetic rows."""
    pl.seed_everything(seed, verbose=False)
    dm.setup()
    model.configure_from_data(dm)
    if sizes:
        dm.prepare_pool(sizes)
    scorer = RetrainScorer(
        model, TrainerSettings.from_kwargs({"max_epochs": EPOCHS, "accelerator": "cpu"}), seed
    )
    fitted = scorer.fit(model, dm, sizes)
    return scorer.evaluate(fitted, dm), balanced_loss(fitted, dm.x_test, dm.y_test, 2)


def vtss(arrays, seed, generator, grid="default"):
    pl.seed_everything(seed, verbose=False)
    dm = datamodule(arrays, seed, generator)
    cap = InitCapture()
    ratios = GRID if grid == "default" else None
    cb = VTSSCallback(ratios=ratios, grid=grid, verbose=False, seed=seed)
    tr = trainer([cap, cb], max_epochs=EPOCHS)
    tr.fit(mlp(), datamodule=dm)
    if grid == "tg":
        tg = cb.result.diagnostics["tg"]
        return (
            float(cb.result.selected_ratio),
            float(cb.result.test_metrics["balanced_log_loss"]),
            tg,
        )
    _, val, test, _ = holdout_curve(dm, cap.template, tr, GRID, seed)
    return (
        float(cb.result.selected_ratio),
        float(cb.result.test_metrics["balanced_log_loss"]),
        val,
        test,
    )


def run_rep(seed: int) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 6]))
    x, y = simulate(800, 100, rng)
    xt, yt = simulate(5000, 5000, rng)
    arrays = (x, y, xt, yt)
    out = {}
    out["raw ERM"] = fit_eval(datamodule(arrays, seed, None), mlp(), {}, seed)[1]
    out["class reweighting (balanced)"] = fit_eval(
        datamodule(arrays, seed, None), mlp(class_weight="balanced"), {}, seed
    )[1]
    tuned = tune_class_weight(
        lambda w: mlp(class_weight=w),
        datamodule(arrays, seed, None),
        WEIGHTS,
        {"max_epochs": EPOCHS, "accelerator": "cpu"},
        seed=seed,
    )
    out["tuned cost-sensitive"] = fit_eval(
        datamodule(arrays, seed, None), mlp(class_weight=tuned.best_weight), {}, seed
    )[1]
    out["_w"] = tuned.best_weight
    dm = datamodule(arrays, seed, RandomOversampler())
    dm.setup()
    gap = dm.class_gaps()[1]
    out["random oversampling (γ = 1)"] = fit_eval(dm, mlp(), {1: gap}, seed)[1]
    out["SMOTE (γ = 1)"] = fit_eval(
        datamodule(arrays, seed, SMOTEGenerator(5)), mlp(), {1: gap}, seed
    )[1]
    for gname, make in GENERATORS.items():
        sel, test, tg = vtss(arrays, seed, make(), grid="tg")
        out["TG-VTSS + " + gname] = test
        out["_sel TG-VTSS + " + gname] = sel
        out["_tg TG-VTSS + " + gname] = (
            f"{tg['generator_quality'] or tg['regime']}, GQS {tg['gqs'] or float('nan'):.1f}"
        )
        sel, test, vcurve, tcurve = vtss(arrays, seed, make())
        out["VTSS + " + gname] = test
        out["_sel VTSS + " + gname] = sel
        out["_curve VTSS + " + gname] = tcurve
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quiet()
    single_thread(args.threads)
    start = time.perf_counter()
    reps = []
    for r in range(args.reps):
        reps.append(run_rep(args.seed + r))
        print(
            f"rep {r + 1}/{args.reps}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in reps[-1].items() if not k.startswith("_"))
            + f" ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    wall = time.perf_counter() - start
    png = RESULTS / "paper_exp6_curve.png"
    plot_curves(
        png,
        f"Paper exp. 6 (MLP, heavy tails): test curves, {args.reps} reps, ± 1 SE",
        GRID,
        [
            (g, np.asarray([r["_curve " + g] for r in reps]))
            for g in ("VTSS + SMOTE", "VTSS + jitter")
        ],
        "balanced test log loss",
        published=[
            (None, PUBLISHED["tuned cost-sensitive"], "published tuned cost-sensitive"),
            (None, PUBLISHED["TG-VTSS + jitter"], "published TG-VTSS + jitter"),
        ],
        selected=[r["_sel " + g] for r in reps for g in ("VTSS + SMOTE", "VTSS + jitter")],
    )
    rows = []
    for k, p in PUBLISHED.items():
        extra = ""
        if k == "tuned cost-sensitive":
            ws = ", ".join(f"{r['_w']:g}" for r in reps)
            extra = f" (w chosen: {ws})"
        if "VTSS" in k:
            sels = ", ".join(f"{r['_sel ' + k]:g}" for r in reps)
            extra = f" (γ̂: {sels})"
        if k.startswith("TG-VTSS"):
            extra += " [grid: " + "; ".join(r["_tg " + k] for r in reps) + "]"
        rows.append(
            f"| {k} | {p if p is not None else '—'} | "
            f"{fmt(*mean_se([r[k] for r in reps]), digits=3)}{extra} |"
        )
    shown = [
        ".venv/bin/python",
        "benchmarks/paper/exp6_remedies.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    lines = [
        "## Experiment 6: synthetic vs non-synthetic remedies (MLP)",
        "",
        (__doc__ or "").split("\n\n", 1)[1].split("Usage::")[0].strip().replace("\n", " "),
        "",
        f"- Command: `{shlex.join(shown)}`",
        f"- Machine: {machine()}",
        f"- Date: {today()}; wall {wall:.0f} s",
        f"- Repetitions: {args.reps} (seeds {args.seed}–{args.seed + args.reps - 1})",
        "",
        "| method | published | ours: balanced test log loss |",
        "|---|---|---|",
        *rows,
        "",
        "The data law is ours (the paper names only the marginal families), so absolute "
        "levels are not comparable to the published ones; the ordering of the remedies is "
        "the point. Published TG-VTSS + ADASYN (1.120) is not run: ADASYN weights each "
        "minority row by how many majority rows surround it, and our generators see one "
        "class's training rows only (by design, so no generator can leak another class).",
        "",
        NOTE,
        "",
        f"![exp6 curves]({png.name})",
        "",
    ]
    write_section("exp6", "\n".join(lines))
    print(f"wrote {RESULTS / 'paper.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
