"""Paper experiment 5 (local symmetry): realistic generators only hurt.

Design (Ma & Zhang, arXiv 2601.16120, exp. 5): X = ∓μ + ξ (class 0 at −μ, class 1 at
+μ), d = 20, ‖μ‖ = 1 (μ = 1/√d · ones), n0 = 2,000, n1 = 100; ξ symmetric with identity covariance:
uniform cube [−√3, √3]^d, Rademacher ±1, uniform on the sphere of radius √d. Model:
linear, no intercept, ±1-coded squared loss (see ``pm_squared_classifier``). The
balanced risk is analytic, R(θ) = (1 − θᵀμ)² + ‖θ‖² (±1 units), optimum θ* = μ/2,
R* = ½, and each class's own gradient vanishes at θ* (local symmetry).

Per repetition, noise law and generator (oracle = the true minority law, SMOTE k = 5,
Gaussian fit with shrinkage 0.1), on the same data:

* curve: fit on all 2,100 real rows + the first round(γ·1,900) rows of one pool drawn
  by the generator fitted on the 100 real minority rows, γ ∈ {0, .25, .5, 1, 1.5, 2, 3, 4};
  excess risk R(θ̂) − R*;
* VTSS: ``VTSSCallback(ratios=same grid, folds=5)`` on
  ``TabularDataModule.from_arrays(..., scale=False, generator=...)``: selected γ̂; its
  "refit on all rows" excess risk is the curve's value at γ̂. (TG-VTSS's symmetry test
  is shown in the logistic variant, ``exp5_logistic.py``: the package's squared-loss
  head regresses on 0/1 labels, for which this ±1-symmetric design is not locally
  symmetric.)

Usage::

    .venv/bin/python benchmarks/paper/exp5_symmetry.py --reps 5
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    fit_arrays,
    fmt_sci,
    linear_weight,
    machine,
    mean_se,
    plot_curves,
    pm_squared_classifier,
    quiet,
    single_thread,
    today,
    trainer,
    write_section,
)

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.generators import (  # noqa: E402
    GaussianGenerator,
    SMOTEGenerator,
    SyntheticGenerator,
)
from vtss_lightning.models import TabularClassifier  # noqa: E402

D, N0, N1 = 20, 2000, 100
RATIOS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
NOISES = ("cube", "rademacher", "sphere")
GENERATORS = ("oracle", "smote", "gaussian")
#: Ma & Zhang, arXiv 2601.16120, exp. 5 (no noise-law breakdown published).
PUBLISHED = {"none": 4.5e-3, "oracle": 1e-3, "smote": 9e-2, "gaussian": 5.5e-2}


def mu() -> np.ndarray:
    return np.ones(D) / math.sqrt(D)


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "cube":
        return rng.uniform(-math.sqrt(3), math.sqrt(3), (n, D))
    if kind == "rademacher":
        return rng.choice([-1.0, 1.0], size=(n, D))
    if kind == "sphere":
        z = rng.standard_normal((n, D))
        return math.sqrt(D) * z / np.linalg.norm(z, axis=1, keepdims=True)
    raise ValueError(kind)


def simulate(kind: str, n0: int, n1: int, rng) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([-mu() + noise(kind, n0, rng), mu() + noise(kind, n1, rng)])
    return x, np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])


class OracleGenerator(SyntheticGenerator):
    """Samples the true minority law ``+μ + ξ`` (ignores the rows it is fitted on)."""

    name = "oracle"

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def _fit(self, x, schema, seed):
        self._d = x.shape[1]

    def _sample(self, n, seed):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 55]))
        rows = mu() + noise(self.kind, n, rng)
        return torch.as_tensor(rows, dtype=torch.float32, device=self.device)

    def __repr__(self) -> str:
        return f"OracleGenerator({self.kind!r})"


def make_generator(name: str, kind: str) -> SyntheticGenerator:
    if name == "oracle":
        return OracleGenerator(kind)
    if name == "smote":
        return SMOTEGenerator(k_neighbors=5)
    return GaussianGenerator(shrinkage=0.1)


def excess_pm(theta: np.ndarray) -> float:
    """±1-unit balanced squared risk minus its optimum ½ (identity noise covariance)."""
    return float((1 - theta @ mu()) ** 2 + theta @ theta - 0.5)


def excess_01(w: np.ndarray) -> float:
    """0/1-coded no-intercept risk ½a² + ½(a−1)² + ‖w‖² minus 3/8, times 4 (±1 units)."""
    a = w @ mu()
    return float(4 * (0.5 * a * a + 0.5 * (a - 1) ** 2 + w @ w - 0.375))


def curve(x, y, gen_name, kind, seed, coding="pm") -> list[float]:
    gen = make_generator(gen_name, kind)
    gen.fit(torch.as_tensor(x[y == 1], dtype=torch.float32), seed=seed)
    gap = int((y == 0).sum() - (y == 1).sum())
    pool = gen.sample(round(max(RATIOS) * gap), seed + 1).cpu().numpy()
    out = []
    for g in RATIOS:
        m = round(g * gap)
        xa = np.concatenate([x, pool[:m]])
        ya = np.concatenate([y, np.ones(m, np.int64)])
        if coding == "pm":
            model = pm_squared_classifier(n_features=D, num_classes=2)
            fit_arrays(model, xa, ya, seed=seed)
            out.append(excess_pm(2 * linear_weight(model)))
        else:
            model = TabularClassifier(
                weight_decay=0.0, loss="mse", fit_intercept=False, n_features=D, num_classes=2
            )
            fit_arrays(model, xa, ya, seed=seed)
            out.append(excess_01(linear_weight(model)))
    return out


def vtss(x, y, gen_name, kind, seed, folds) -> float:
    pl.seed_everything(seed, verbose=False)
    dm = TabularDataModule.from_arrays(
        x, y, scale=False, seed=seed, generator=make_generator(gen_name, kind)
    )
    cb = VTSSCallback(ratios=RATIOS, folds=folds, verbose=False, seed=seed)
    trainer([cb]).fit(pm_squared_classifier(), datamodule=dm)
    return float(cb.result.selected_ratio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quiet()
    single_thread(args.threads)
    start = time.perf_counter()
    curves = {(k, g): [] for k in NOISES for g in GENERATORS}
    coded01 = {k: [] for k in NOISES}
    selected = {(k, g): [] for k in NOISES for g in GENERATORS}
    for r in range(args.reps):
        seed = args.seed + r
        for k in NOISES:
            rng = np.random.default_rng(np.random.SeedSequence([seed, NOISES.index(k)]))
            x, y = simulate(k, N0, N1, rng)
            coded01[k].append(curve(x, y, "oracle", k, seed, coding="01"))
            for g in GENERATORS:
                curves[k, g].append(curve(x, y, g, k, seed))
                selected[k, g].append(vtss(x, y, g, k, seed, args.folds))
            print(
                f"rep {r + 1}/{args.reps} {k}: "
                + ", ".join(
                    f"{g} γ=0 {curves[k, g][-1][0]:.2e} γ=4 {curves[k, g][-1][-1]:.2e} "
                    f"γ̂ {selected[k, g][-1]:g}"
                    for g in GENERATORS
                )
                + f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    wall = time.perf_counter() - start

    png = RESULTS / "paper_exp5_curve.png"
    pooled = {g: np.concatenate([np.asarray(curves[k, g]) for k in NOISES]) for g in GENERATORS}
    sel_all = [s for k in NOISES for g in GENERATORS for s in selected[k, g]]
    plot_curves(
        png,
        f"Paper exp. 5 (local symmetry, d = 20): {args.reps} reps × 3 noise laws, ± 1 SE",
        RATIOS,
        [(f"{g}", pooled[g]) for g in GENERATORS]
        + [("oracle, package 0/1 coding", np.concatenate([coded01[k] for k in NOISES]))],
        "excess balanced squared risk (±1 units)",
        published=[
            (0.0, PUBLISHED["none"], "published γ = 0"),
            (4.0, PUBLISHED["oracle"], "published γ = 4, oracle"),
            (4.0, PUBLISHED["smote"], "published γ = 4, SMOTE"),
            (4.0, PUBLISHED["gaussian"], "published γ = 4, Gaussian fit"),
        ],
        selected=sel_all,
        logy=True,
    )

    shown = [
        ".venv/bin/python",
        "benchmarks/paper/exp5_symmetry.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    i4 = RATIOS.index(4.0)
    rows = []
    for k in NOISES:
        for g in GENERATORS:
            c = np.asarray(curves[k, g])
            s = selected[k, g]
            at_sel = [c[i, RATIOS.index(v)] for i, v in enumerate(s)]
            rows.append(
                f"| {k} | {g} | {fmt_sci(*mean_se(c[:, 0]))} | {fmt_sci(*mean_se(c[:, i4]))} | "
                f"{PUBLISHED[g]:.1e} | {np.mean(s):.2f} ({', '.join(f'{v:g}' for v in s)}) | "
                f"{fmt_sci(*mean_se(at_sel))} |"
            )
    c01 = np.concatenate([coded01[k] for k in NOISES])
    small = sum(v <= 0.5 for v in sel_all)
    realistic = [s for k in NOISES for g in ("smote", "gaussian") for s in selected[k, g]]
    lines = [
        "## Experiment 5: local symmetry (mean shift ∓μ, symmetric noise)",
        "",
        "d = 20, ‖μ‖ = 1, n0 = 2,000, n1 = 100, noise with identity covariance (uniform cube "
        "[−√3, √3]^d, Rademacher, uniform sphere of radius √d); linear model without "
        'intercept on the ±1-coded squared loss (`TabularClassifier(loss="mse", '
        "fit_intercept=False)` with its output offset by ½, a subclass in `_common.py`); "
        "excess risk R(θ̂) − R* computed exactly: R(θ) = (1 − θᵀμ)² + ‖θ‖², R* = ½. Curve: "
        "fit on all 2,100 real rows + a prefix of one pool; VTSS: `VTSSCallback(ratios="
        f"{RATIOS}, folds={args.folds})` on `TabularDataModule.from_arrays(scale=False)`.",
        "",
        f"- Command: `{shlex.join(shown)}`",
        f"- Machine: {machine()}",
        f"- Date: {today()}; wall {wall:.0f} s",
        f"- Repetitions: {args.reps} per noise law (seeds {args.seed}–{args.seed + args.reps - 1})",
        "",
        "| noise | generator | excess γ = 0 | excess γ = 4 | published γ = 4 | VTSS γ̂ mean "
        "(per rep) | excess at γ̂ (refit on all rows) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Published γ = 0: ≈ {PUBLISHED['none']:.1e} (ours, all laws pooled: "
        f"{fmt_sci(*mean_se(np.concatenate([np.asarray(curves[k, 'oracle'])[:, 0] for k in NOISES])))}"
        "; the OLS rate R*·p/n = ½·20/2,100 = 4.8e-3).",
        "",
        f"**Done-when (VTSS selects 0 or a small size): {small}/{len(sel_all)} selections "
        f"≤ 0.5; realistic generators (SMOTE, Gaussian) mean γ̂ = {np.mean(realistic):.2f}.** "
        "With the oracle generator larger sizes are genuinely better (more true rows), so "
        "a large γ̂ there is correct.",
        "",
        f"![exp5 curves]({png.name})",
        "",
        "Notes:",
        "",
        "- Units: the paper's figures match the ±1 coding (γ = 0: ½·20/2,100 ≈ 4.8e-3; "
        "oracle γ = 4: ½·20/9,700 ≈ 1.0e-3), so that is what we report. The package's "
        "`fit_intercept=False` squared loss predicts wᵀx against 0/1 labels; for this ∓μ "
        "design that problem is *not* locally symmetric (class 0's own risk is minimised "
        "at w = 0), and its oracle curve (shown in the plot, ×4 to the same units) is "
        f"{fmt_sci(*mean_se(c01[:, 0]))} at γ = 0 and {fmt_sci(*mean_se(c01[:, i4]))} at "
        "γ = 4.",
        "- SMOTE shrinks the minority covariance (interpolation), and the Gaussian fit's "
        "covariance from 100 rows in 20 dimensions (shrinkage 0.1) is off: both shift the "
        "minority gradient at θ*, a bias that grows with the synthetic share.",
        "- VTSS selection uses 5-fold CV on the 2,100 rows; the paper's exp.-5 validation "
        "scheme is not stated. The logistic variant (n = 5,000, ≈ 560 minority) is in its own "
        "section below (`exp5_logistic.py`).",
        "",
    ]
    write_section("exp5", "\n".join(lines))
    print(f"wrote {RESULTS / 'paper.md'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
