"""Paper experiment 1 (end-to-end, linear) with the project's own pieces.

Reproduces the published balanced-test-log-loss curve of Ma & Zhang (arXiv
2601.16120, experiment 1: d = 5, n0 = 4000, n1 = 200, SMOTE k = 5, unregularised logistic
regression, 20% stratified hold-out, ratio grid 0..2, balanced test set of 10,000
rows per class) and checks the acceptance criterion: the VTSS final model's balanced
test log loss is within 0.02 of the published curve minimum (about 0.36).

Each repetition ``r`` uses seed ``seed + r`` and

1. runs ``VTSSCallback`` inside an ordinary ``pl.Trainer.fit`` on
   ``TabularDataModule(dataset="paper_linear")`` with ``TabularClassifier()``
   (logistic regression, full-batch L-BFGS to convergence, no weight decay): the
   search, the final model and its test metrics come from ``callback.result``;
2. re-trains a real model at every candidate size on the same split and the same
   synthetic pool (a ``RetrainScorer`` that also scores the test rows, driven by the
   package's ``SearchEngine``) to get the test-loss curve that the paper plots.

Usage::

    .venv/bin/python benchmarks/paper/exp1_linear.py --reps 10 --seed 0

3. runs TG-VTSS (``VTSSCallback(grid="tg")``) on the same data: the Wald symmetry test,
   the generator-quality score, its grid and final model.

Writes a markdown report (``--out``, default ``results/paper_linear.md``), a PNG of the
curves beside it, and the experiment-1 section of ``results/paper.md``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    fmt,
    holdout_curve,
    machine,
    mean_se,
    quiet,
    single_thread,
    today,
    trainer,
    write_section,
)

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.data.builtin import simulate_paper_linear  # noqa: E402
from vtss_lightning.data.loaders import TensorBatches  # noqa: E402
from vtss_lightning.generators import SMOTEGenerator  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402
from vtss_lightning.search.objective import balanced_loss  # noqa: E402

#: Published figures (Ma & Zhang, arXiv 2601.16120, experiment 1).
PUBLISHED = {
    "none": 0.85,  # no augmentation
    "balance": 0.36,  # near full balance
    "minimum": 0.36,  # curve minimum (flat from ~3,500 to ~5,000 synthetic rows)
    "vtss": 0.362,  # VTSS mean over 100 repetitions
}
#: Acceptance criterion: |VTSS final balanced test log loss - 0.36| <= 0.02.
TARGET, TOLERANCE = 0.36, 0.02


@dataclass
class RepResult:
    seed: int
    gap: int
    train_counts: tuple[int, ...]  # real training rows per class (the 80% split)
    selected_ratio: float
    vtss_test: float
    ratios: list[float]
    val_curve: list[float]
    test_curve: list[float]
    val_mismatch: float  # max |callback val loss - re-trained val loss| over candidates
    val_mismatch_ratio: float  # the candidate where that maximum occurs
    final_vs_curve: float  # |callback final test loss - curve test loss at the chosen ratio|
    seconds_vtss: float
    seconds_curve: float
    tg: dict = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


def run_rep(seed: int, ratios: list[float]) -> RepResult:
    pl.seed_everything(seed, verbose=False)
    dm = TabularDataModule(
        dataset="paper_linear", scale=False, seed=seed, generator=SMOTEGenerator(k_neighbors=5)
    )
    callback = VTSSCallback(ratios=ratios, verbose=False, seed=seed)
    t0 = time.perf_counter()
    fitted = trainer([callback])
    fitted.fit(TabularClassifier(weight_decay=0.0), datamodule=dm)
    seconds_vtss = time.perf_counter() - t0
    result = callback.result
    assert result is not None and result.test_metrics is not None

    # Test-loss curve: a fresh model per candidate, same split, same pool (the pool
    # drawn during the callback's search already covers every candidate), same
    # trainer settings and seed as the callback's own candidate fits.
    t1 = time.perf_counter()
    template = TabularClassifier(weight_decay=0.0)
    template.configure_from_data(dm)
    cand_ratios, val_curve, test_curve, _ = holdout_curve(dm, template, fitted, ratios, seed)
    seconds_curve = time.perf_counter() - t1

    callback_val = {c.ratio: c.val_balanced_loss for c in result.candidates}
    diffs = [abs(callback_val[r] - v) for r, v in zip(cand_ratios, val_curve, strict=True)]
    worst = int(np.argmax(diffs))
    chosen = cand_ratios.index(float(result.selected_ratio))
    vtss_test = float(result.test_metrics["balanced_log_loss"])
    return RepResult(
        seed=seed,
        gap=int(dm.class_gaps()[1]),
        train_counts=tuple(dm.holdout.class_counts),
        selected_ratio=float(result.selected_ratio),
        vtss_test=vtss_test,
        ratios=cand_ratios,
        val_curve=val_curve,
        test_curve=test_curve,
        val_mismatch=diffs[worst],
        val_mismatch_ratio=cand_ratios[worst],
        final_vs_curve=abs(vtss_test - test_curve[chosen]),
        seconds_vtss=seconds_vtss,
        seconds_curve=seconds_curve,
        tg=run_tg(seed),
        extra={
            "search_seconds": float(result.timing.get("search_seconds", math.nan)),
            "final_fit_seconds": float(result.timing.get("final_fit_seconds", math.nan)),
            "balanced_accuracy": float(result.test_metrics.get("balanced_accuracy", math.nan)),
        },
    )


def run_tg(seed: int) -> dict:
    """TG-VTSS on the same data: diagnostics, its own grid, the final test loss."""
    pl.seed_everything(seed, verbose=False)
    dm = TabularDataModule(
        dataset="paper_linear", scale=False, seed=seed, generator=SMOTEGenerator(k_neighbors=5)
    )
    callback = VTSSCallback(grid="tg", verbose=False, seed=seed)
    trainer([callback]).fit(TabularClassifier(weight_decay=0.0), datamodule=dm)
    diag = callback.result.diagnostics["tg"]
    return {
        "selected": float(callback.result.selected_ratio),
        "test": float(callback.result.test_metrics["balanced_log_loss"]),
        "regime": diag["regime"],
        "quality": diag["generator_quality"],
        "t_sym": diag["t_sym"],
        "cutoff": diag["chi2_cutoff"],  # t_sym is the paper's Wald T: its chi2 cutoff
        "gqs": diag["gqs"],
    }


def population_floor(seed: int, per_class: int = 200_000, test_per_class: int = 1_000_000) -> float:
    """Balanced test log loss of the best linear logistic model (large balanced sample).

    Fitted with the project's ``TabularClassifier`` on ``per_class`` rows per class of
    the same simulation and scored on a fresh ``test_per_class`` rows per class: about
    the level no finite-sample linear fit can beat (Monte-Carlo noise below 1e-3).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 20_260_116]))
    x, y = simulate_paper_linear(per_class, per_class, rng)
    x_test, y_test = simulate_paper_linear(test_per_class, test_per_class, rng)
    model = TabularClassifier(weight_decay=0.0, n_features=x.shape[1], num_classes=2)
    x_t, y_t = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    loader = TensorBatches(x_t, y_t, batch_size=None, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        ).fit(model, train_dataloaders=loader)
    return balanced_loss(
        model, torch.as_tensor(x_test, dtype=torch.float32), torch.as_tensor(y_test), 2
    )


def plot(reps: list[RepResult], path: Path) -> None:
    """Mean test and validation curves (± 1 SE), a zoom near the minimum, selected ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ratios = np.asarray(reps[0].ratios)
    n = len(reps)
    curves = []
    for key, label, color in (
        ("test_curve", "test (10,000/class)", "C0"),
        ("val_curve", "validation (hold-out)", "C1"),
    ):
        arr = np.asarray([getattr(r, key) for r in reps])
        m = arr.mean(0)
        se = arr.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(m)
        curves.append((m, se, label, color))
    vt, vt_se = mean_se([r.vtss_test for r in reps])
    sel_mean = float(np.mean([r.selected_ratio for r in reps]))

    fig, (ax, zx, hx) = plt.subplots(
        1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1.6, 1.6, 1]}
    )
    for a in (ax, zx):
        for m, se, label, color in curves:
            a.plot(ratios, m, color=color, label=f"mean {label}")
            a.fill_between(ratios, m - se, m + se, color=color, alpha=0.25, lw=0)
        a.axhline(PUBLISHED["minimum"], color="k", ls="--", lw=1, label="published minimum ≈ 0.36")
        a.axhspan(
            TARGET - TOLERANCE,
            TARGET + TOLERANCE,
            color="k",
            alpha=0.06,
            label="acceptance 0.36 ± 0.02",
        )
        a.errorbar(
            [sel_mean],
            [vt],
            yerr=[0 if math.isnan(vt_se) else vt_se],
            fmt="o",
            color="C3",
            label=f"VTSS final model: mean {vt:.3f} at mean γ {sel_mean:.2f}",
        )
        a.set_xlabel("synthetic ratio γ = ñ / (n0 − n1)  (gap of the 80% training split)")
        a.grid(alpha=0.3)
    ax.plot([0], [PUBLISHED["none"]], "kx", ms=8, label="published, no augmentation ≈ 0.85")
    ax.set_ylabel("balanced log loss")
    ax.set_ylim(0.3, max(0.95, float(curves[0][0].max()) + 0.05))
    ax.set_title(f"Paper exp. 1 (linear, SMOTE): mean of {n} reps, ± 1 SE")
    ax.legend(fontsize=7.5)
    zoom = ratios >= 0.5
    lo = min(float((m - se)[zoom].min()) for m, se, *_ in curves)
    hi = max(float((m + se)[zoom].max()) for m, se, *_ in curves)
    zx.set_xlim(0.5, ratios[-1] + 0.02)
    zx.set_ylim(min(lo, TARGET - TOLERANCE) - 0.005, hi + 0.005)
    zx.set_title("zoom: γ ≥ 0.5")

    step = float(ratios[1] - ratios[0]) if len(ratios) > 1 else 0.05
    edges = np.append(ratios - step / 2, ratios[-1] + step / 2)
    hx.hist([r.selected_ratio for r in reps], bins=edges, color="C3", alpha=0.8)
    hx.set_xlim(edges[0], edges[-1])
    hx.yaxis.set_major_locator(MaxNLocator(integer=True))
    hx.set_xlabel("selected ratio γ")
    hx.set_ylabel("repetitions")
    hx.set_title("VTSS selected ratio")
    hx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    args, argv: list[str], reps: list[RepResult], floor: float, png: Path, wall: float
) -> str:
    ratios = np.asarray(reps[0].ratios)
    test = np.asarray([r.test_curve for r in reps])
    i0 = int(np.argmin(np.abs(ratios - 0.0)))
    i1 = int(np.argmin(np.abs(ratios - 1.0)))
    mean_curve = test.mean(0)
    imin = int(np.argmin(mean_curve))
    se_curve = (
        test.std(0, ddof=1) / math.sqrt(len(reps))
        if len(reps) > 1
        else np.full_like(mean_curve, np.nan)
    )
    vtss_m, vtss_se = mean_se([r.vtss_test for r in reps])
    sel = [r.selected_ratio for r in reps]
    sel_m, sel_se = mean_se(sel)
    oracle_m, oracle_se = mean_se(test.min(1))
    flat = ratios[mean_curve <= mean_curve[imin] + 0.002]
    verdict = "PASS" if abs(vtss_m - TARGET) <= TOLERANCE else "MISS"
    per_rep = [r.seconds_vtss + r.seconds_curve for r in reps]
    gaps = sorted({r.gap for r in reps})
    worst = max(reps, key=lambda r: r.val_mismatch)
    mismatch, mismatch_at = worst.val_mismatch, worst.val_mismatch_ratio
    final_gap = max(r.final_vs_curve for r in reps)

    pub = PUBLISHED
    tg_text = tg_summary(reps)
    gap_text = ", ".join(map(str, gaps))
    counts = " + ".join(f"{c:,}" for c in reps[0].train_counts)
    t_vtss = np.mean([r.seconds_vtss for r in reps])
    t_curve = np.mean([r.seconds_curve for r in reps])
    curve_min = (
        f"{fmt(mean_curve[imin], se_curve[imin])} at γ = {ratios[imin]:g} "
        f"(within 0.002 of it: γ ∈ [{flat.min():g}, {flat.max():g}])"
    )
    selected = f"{sel_m:.3f} ± {sel_se:.3f} (range {min(sel):g}–{max(sel):g})"
    lines = [
        "# Paper experiment 1 (linear design): VTSS with SMOTE + logistic regression",
        "",
        "Reproduction of experiment 1 of Ma & Zhang (arXiv 2601.16120) with the package's "
        "own pieces: "
        '`TabularDataModule(dataset="paper_linear", scale=False)` (n0 = 4000, n1 = 200, d = 5; '
        "20% stratified hold-out; balanced test set of 10,000 rows per class), "
        "`SMOTEGenerator(k_neighbors=5)`, `TabularClassifier()` (logistic regression, full-batch "
        "L-BFGS to convergence, no weight decay ≈ the paper's C = 1e6) and `VTSSCallback` in a "
        "`pl.Trainer(max_epochs=1)`. The test-loss curve re-trains a real model at every "
        "candidate size on the same split and synthetic pool (a `RetrainScorer` subclass driven "
        "by `SearchEngine`).",
        "",
        "## Run",
        "",
        f"- Command: `{shlex.join(argv)}`",
        f"- Machine: {machine()}",
        f"- Date: {today()}",
        f"- Repetitions: {len(reps)} (seeds {reps[0].seed}–{reps[-1].seed}); ratio grid "
        f"0 … {ratios[-1]:g} step {args.grid_step:g} ({len(ratios)} candidates); gap on the 80% "
        f"training split: {gap_text} rows (full balance = that many SMOTE rows)",
        f"- Wall time: {wall:.1f} s in all; per rep {np.mean(per_rep):.1f} s mean (VTSS fit incl. "
        f"search + final model {t_vtss:.1f} s, test-curve re-training {t_curve:.1f} s); "
        f"reference floor {args.floor_seconds:.1f} s. The machine is shared with other jobs, "
        "so timings are noisy.",
        "",
        "## Balanced test log loss: published vs ours",
        "",
        f"Ours: mean ± Monte-Carlo standard error over {len(reps)} repetitions. "
        "Published: 100 repetitions.",
        "",
        "| quantity | published | ours |",
        "|---|---|---|",
        f"| no augmentation (γ = 0) | ≈ {pub['none']} | {fmt(mean_curve[i0], se_curve[i0])} |",
        f"| full balance (γ = 1) | ≈ {pub['balance']} | {fmt(mean_curve[i1], se_curve[i1])} |",
        f"| curve minimum (min over γ of the mean test curve) | ≈ {pub['minimum']} "
        f"(flat ≈ 3,500–5,000 rows) | {curve_min} |",
        f"| **VTSS final model** | **≈ {pub['vtss']}** | **{fmt(vtss_m, vtss_se)}** |",
        f"| VTSS selected ratio γ | — | {selected} |",
        f'| TG-VTSS final model (`grid="tg"`) | — | {fmt(*mean_se([r.tg["test"] for r in reps]))} '
        f"(γ̂ {np.mean([r.tg['selected'] for r in reps]):.2f}) |",
        f"| TG diagnostics | — | {tg_text} |",
        "| per-rep oracle (min over γ of each rep's test curve), for reference | — | "
        f"{fmt(oracle_m, oracle_se)} |",
        "| best linear model, population (fit 200,000/class, test 1,000,000/class), "
        f"for reference | — | {floor:.4f} |",
        "",
        f"**Acceptance (|VTSS − 0.36| ≤ 0.02): {verdict}** — "
        f"|{vtss_m:.4f} − 0.36| = {abs(vtss_m - TARGET):.4f}.",
        "",
        f"![curves]({png.name})",
        "",
        "## Per repetition",
        "",
        "| seed | selected γ | VTSS test | test γ=0 | test γ=1 | min test (γ) | TG: T (cutoff), GQS, γ̂, test | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reps:
        j = int(np.argmin(r.test_curve))
        lines.append(
            f"| {r.seed} | {r.selected_ratio:g} | {r.vtss_test:.4f} | {r.test_curve[i0]:.4f} | "
            f"{r.test_curve[i1]:.4f} | {r.test_curve[j]:.4f} ({r.ratios[j]:g}) | "
            f"{r.tg['t_sym']:.0f} ({r.tg['cutoff']:.1f}), {r.tg['gqs']:.1f}, {r.tg['selected']:g}, "
            f"{r.tg['test']:.4f} | "
            f"{r.seconds_vtss + r.seconds_curve:.1f} |"
        )
    lines += [
        "",
        "## Notes",
        "",
        "- Sizes: the search, the curve and the final model all train on the DataModule's 80% "
        f"training split ({counts} real rows of class 0 + 1); γ is relative to that split's gap "
        f"({gap_text}), so γ = 1 means that many SMOTE rows. The published curve's x-axis is in "
        "rows of the full 4,000 / 200 design (gap 3,800): ≈ 3,500–5,000 rows is γ ≈ 0.92–1.32 "
        "there.",
        "- The final model is the outer `trainer.fit` at the chosen size, on the 80% split "
        "(it is not refitted on train + validation rows).",
        "- Consistency checks: the re-trained curve's validation losses match the callback's "
        f"candidates to within {mismatch:.1e} (largest at γ = {mismatch_at:g}; the two fits start "
        "from different initial weights and float32 L-BFGS stops within about 5e-4 of "
        "scikit-learn's C = 1e6 coefficients); "
        "the callback's final model and the curve's model at the chosen γ differ in test loss "
        f"by at most {final_gap:.1e}.",
        f"- Minority generator: SMOTE fitted on the {reps[0].train_counts[1]} training minority "
        "rows only; one pool per repetition, candidate γ uses its first round(γ·gap) rows.",
        "",
    ]
    return "\n".join(lines)


def tg_summary(reps: list[RepResult]) -> str:
    regimes = [r.tg["regime"] for r in reps]
    gqs = [r.tg["gqs"] for r in reps if r.tg["gqs"] is not None]
    gqs_text = f"{min(gqs):.1f}–{max(gqs):.1f}" if gqs else "—"
    return (
        f"{regimes.count('local asymmetry')}/{len(reps)} local asymmetry "
        f"(T {min(r.tg['t_sym'] for r in reps):.0f}–{max(r.tg['t_sym'] for r in reps):.0f} vs "
        f"χ² cutoff {reps[0].tg['cutoff']:.1f}); GQS {gqs_text} (finite in "
        f"{sum(math.isfinite(g) for g in gqs)}/{len(reps)}); grids: "
        + ", ".join(sorted({str(r.tg["quality"]) for r in reps}))
    )


def paper_section(reps: list[RepResult], shown: list[str], out: Path, png: Path) -> str:
    """The experiment-1 summary in ``results/paper.md`` (details in ``out``)."""
    ratios = np.asarray(reps[0].ratios)
    test = np.asarray([r.test_curve for r in reps])
    m = test.mean(0)
    se = test.std(0, ddof=1) / math.sqrt(len(reps)) if len(reps) > 1 else np.full_like(m, np.nan)
    i0, i1, imin = (
        int(np.argmin(np.abs(ratios))),
        int(np.argmin(np.abs(ratios - 1))),
        int(np.argmin(m)),
    )
    pub = PUBLISHED
    return "\n".join(
        [
            "## Experiment 1: end-to-end, linear (SMOTE + logistic regression)",
            "",
            f"Full report: [`{out.name}`]({out.name}) (per-repetition table, consistency "
            "checks, population floor).",
            "",
            f"- Command: `{shlex.join(shown)}`",
            f"- Machine: {machine()}",
            f"- Date: {today()}; repetitions: {len(reps)} (seeds {reps[0].seed}–{reps[-1].seed})",
            "",
            "| quantity | published (100 reps) | ours |",
            "|---|---|---|",
            f"| no augmentation (γ = 0) | ≈ {pub['none']} | {fmt(m[i0], se[i0])} |",
            f"| full balance (γ = 1) | ≈ {pub['balance']} | {fmt(m[i1], se[i1])} |",
            f"| curve minimum | ≈ {pub['minimum']} | {fmt(m[imin], se[imin])} at γ = {ratios[imin]:g} |",
            f"| VTSS final model (hold-out) | ≈ {pub['vtss']} | "
            f"{fmt(*mean_se([r.vtss_test for r in reps]))} (γ̂ "
            f"{np.mean([r.selected_ratio for r in reps]):.2f}) |",
            f"| TG-VTSS final model | — | {fmt(*mean_se([r.tg['test'] for r in reps]))} (γ̂ "
            f"{np.mean([r.tg['selected'] for r in reps]):.2f}) |",
            f"| TG diagnostics | local asymmetry, finite GQS (issue) | {tg_summary(reps)} |",
            "",
            "The final model trains on the 80% split, not all rows, and the population floor "
            "of a linear model here is about 0.357, so a few thousandths above the published "
            "level is expected finite-sample cost.",
            "",
            f"![exp1 curves]({png.name})",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reps", type=int, default=10, help="repetitions (seeds seed .. seed+reps-1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument(
        "--grid-step", type=float, default=0.05, help="step of the ratio grid 0 .. 2"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_linear.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: these 5-feature fits gain nothing from more; "
        "on a busy 2-core machine two threads made a repetition about 8x slower)",
    )
    args = parser.parse_args(argv)
    if args.reps < 1 or not 0 < args.grid_step <= 2:
        parser.error("--reps must be >= 1 and --grid-step in (0, 2]")
    quiet()
    single_thread(args.threads)

    n_steps = int(round(2.0 / args.grid_step))
    ratios = sorted({round(min(2.0, i * args.grid_step), 10) for i in range(n_steps + 1)} | {2.0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_name(args.out.stem + "_curve.png")

    start = time.perf_counter()
    reps: list[RepResult] = []
    for r in range(args.reps):
        rep = run_rep(args.seed + r, ratios)
        reps.append(rep)
        print(
            f"rep {r + 1}/{args.reps} seed {rep.seed}: selected γ {rep.selected_ratio:g}, "
            f"VTSS test {rep.vtss_test:.4f}, test γ=0 {rep.test_curve[0]:.4f}, "
            f"min test {min(rep.test_curve):.4f} "
            f"({rep.seconds_vtss:.1f} s + {rep.seconds_curve:.1f} s)",
            flush=True,
        )
    t = time.perf_counter()
    floor = population_floor(args.seed)
    args.floor_seconds = time.perf_counter() - t
    wall = time.perf_counter() - start

    plot(reps, png)
    shown = [
        ".venv/bin/python",
        "benchmarks/paper/exp1_linear.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    args.out.write_text(write_report(args, shown, reps, floor, png, wall))
    write_section("exp1", paper_section(reps, shown, args.out, png))
    vtss_m, vtss_se = mean_se([r.vtss_test for r in reps])
    verdict = "PASS" if abs(vtss_m - TARGET) <= TOLERANCE else "MISS"
    print(
        f"VTSS final balanced test log loss {fmt(vtss_m, vtss_se)} -> {verdict}; "
        f"wrote {args.out} and {png}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
