"""Paper experiment 5, logistic variant: local symmetry under the log loss.

Design (Ma & Zhang, arXiv 2601.16120, exp. 5, logistic variant): X = ∓μ + ξ, d = 20,
‖μ‖ = 1 (μ = ones/√d), n = 5,000 with n1 = 560 minority rows (n0 = 4,440); ξ ~ N(0, I) (the
paper does not name the noise law of this variant). Model: logistic regression
without intercept (``TabularClassifier(fit_intercept=False)``, L-BFGS, no penalty). With
symmetric noise and no intercept the balanced log-loss risk equals the minority
class's own risk, so each class's gradient vanishes at the optimum θ* (local
symmetry). The excess balanced risk R(θ̂) − R(θ*) is estimated with 400,000 common
random draws of the minority law (R(θ) = E softplus(−θᵀ(μ + ξ))), θ* fitted on them.

Per repetition and generator (SMOTE k = 5; Gaussian fit, shrinkage 0.1):

* curve: fit on all 5,000 real rows + the first round(γ·gap) rows of one pool,
  γ ∈ {0, .25, .5, 1, 1.5, 2};
* VTSS: ``VTSSCallback(ratios=same grid, folds=5)``, refit on all rows at γ̂;
* TG-VTSS: ``VTSSCallback(grid="tg", folds=5)``: the Wald test should find local
  symmetry and search {0, .05, …, .2}; refit on all rows at its γ̂.

Usage::

    .venv/bin/python benchmarks/paper/exp5_logistic.py --reps 5
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    fit_arrays,
    fmt_sci,
    linear_weight,
    machine,
    mean_se,
    quiet,
    single_thread,
    today,
    trainer,
    write_section,
)

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.generators import GaussianGenerator, SMOTEGenerator  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402

D, N0, N1 = 20, 4440, 560
RATIOS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
GENERATORS = {
    "smote": lambda: SMOTEGenerator(k_neighbors=5),
    "gaussian": lambda: GaussianGenerator(shrinkage=0.1),
}
#: Ma & Zhang, arXiv 2601.16120, exp. 5, logistic variant.
PUBLISHED = {"none": 0.0061, "smote": 0.017, "gaussian": 0.013}
RISK_DRAWS = 400_000
#: Written after the committed run (see the table); revisit after a new full run.
NOTE = (
    "Differences: SMOTE at γ = 2 matches the published 0.017. Our γ = 0 excess (1.7e-"
    "3) is well below the published 0.0061 (beyond 2 SE): with symmetric noise and no"
    " intercept the unweighted fit is consistent for θ*, so γ = 0 only pays the varia"
    "nce, about d/(2n) = 2e-3 here; the paper does not state this variant's noise law"
    ", intercept or scaling, and e.g. an intercept fitted on 1:8 data would add a bia"
    "s that the symmetric design cannot cancel. The Gaussian fit's γ = 2 excess (8.0e"
    "-3 vs 0.013) depends on how far its shrunk covariance is from the truth, which t"
    "he noise law sets. VTSS picks 0 or nearly 0 for both generators (the issue's exp"
    "ectation); TG-VTSS found local symmetry in 4/5 repetitions and then searched {0,"
    " …, 0.2}, picking small non-zero sizes that cost a little against plain VTSS her"
    "e."
)


def mu() -> np.ndarray:
    return np.ones(D) / math.sqrt(D)


def simulate(n0: int, n1: int, rng) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([-mu() + rng.standard_normal((n0, D)), mu() + rng.standard_normal((n1, D))])
    return x.astype(np.float32), np.r_[np.zeros(n0, np.int64), np.ones(n1, np.int64)]


class Risk:
    """Balanced log-loss risk by Monte Carlo with common random numbers."""

    def __init__(self, seed: int = 12345) -> None:
        rng = np.random.default_rng(seed)
        self.x1 = torch.as_tensor(mu() + rng.standard_normal((RISK_DRAWS, D)), dtype=torch.float64)
        theta = torch.zeros(D, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [theta], max_iter=200, tolerance_grad=1e-12, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad()
            loss = F.softplus(-(self.x1 @ theta)).mean()
            loss.backward()
            return loss

        opt.step(closure)
        self.best = self(theta.detach().numpy())

    def __call__(self, theta: np.ndarray) -> float:
        t = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        return float(F.softplus(-(self.x1 @ t)).mean())

    def excess(self, theta: np.ndarray) -> float:
        return self(theta) - self.best


def logistic() -> TabularClassifier:
    return TabularClassifier(weight_decay=0.0, fit_intercept=False)


def refit_excess(risk: Risk, x, y, pool, size: float, seed: int) -> float:
    m = round(size)
    model = TabularClassifier(weight_decay=0.0, fit_intercept=False, n_features=D, num_classes=2)
    fit_arrays(model, np.concatenate([x, pool[:m]]), np.r_[y, np.ones(m, np.int64)], seed=seed)
    return risk.excess(linear_weight(model))


def run(risk: Risk, seed: int, name: str, folds: int) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 55]))
    x, y = simulate(N0, N1, rng)
    gap = N0 - N1
    gen = GENERATORS[name]().fit(torch.as_tensor(x[y == 1]), seed=seed)
    pool = gen.sample(round(max(RATIOS) * gap), seed + 1).cpu().numpy()
    curve = [refit_excess(risk, x, y, pool, g * gap, seed) for g in RATIOS]
    out = {"curve": curve}
    for key, kwargs in (("vtss", {"ratios": RATIOS}), ("tg", {"grid": "tg"})):
        pl.seed_everything(seed, verbose=False)
        dm = TabularDataModule.from_arrays(
            x, y, scale=False, seed=seed, generator=GENERATORS[name]()
        )
        cb = VTSSCallback(folds=folds, verbose=False, seed=seed, **kwargs)
        trainer([cb]).fit(logistic(), datamodule=dm)
        sel = float(cb.result.selected_ratio)
        out[key] = (sel, refit_excess(risk, x, y, pool, sel * gap, seed))
        if key == "tg":
            out["regime"] = cb.result.diagnostics["tg"]["regime"]
    return out


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
    risk = Risk()
    res = {g: [] for g in GENERATORS}
    for r in range(args.reps):
        for g in GENERATORS:
            res[g].append(run(risk, args.seed + r, g, args.folds))
        print(f"rep {r + 1}/{args.reps} ({time.perf_counter() - start:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    i2 = RATIOS.index(2.0)
    rows = []
    for g, reps in res.items():
        c = np.asarray([r["curve"] for r in reps])
        regimes = [r["regime"] for r in reps]
        rows.append(
            f"| {g} | {PUBLISHED['none']} / {fmt_sci(*mean_se(c[:, 0]))} | "
            f"{PUBLISHED[g]} / {fmt_sci(*mean_se(c[:, i2]))} | "
            f"{np.mean([r['vtss'][0] for r in reps]):.2f}: "
            f"{fmt_sci(*mean_se([r['vtss'][1] for r in reps]))} | "
            f"{np.mean([r['tg'][0] for r in reps]):.2f}: "
            f"{fmt_sci(*mean_se([r['tg'][1] for r in reps]))} | "
            f"{regimes.count('local symmetry')}/{len(regimes)} |"
        )
    shown = [
        ".venv/bin/python",
        "benchmarks/paper/exp5_logistic.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    lines = [
        "## Experiment 5, logistic variant (local symmetry under the log loss)",
        "",
        (__doc__ or "").split("\n\n", 1)[1].split("Usage::")[0].strip().replace("\n", " "),
        "",
        f"- Command: `{shlex.join(shown)}`",
        f"- Machine: {machine()}",
        f"- Date: {today()}; wall {wall:.0f} s",
        f"- Repetitions: {args.reps} (seeds {args.seed}–{args.seed + args.reps - 1})",
        "",
        "Excess balanced log-loss risk, published / ours (mean ± SE); VTSS columns give "
        "mean γ̂: excess after refitting on all rows at γ̂.",
        "",
        "| generator | γ = 0 | γ = 2 | VTSS (γ ∈ [0, 2]) | TG-VTSS | TG found local symmetry |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        NOTE,
        "",
    ]
    write_section("exp5b", "\n".join(lines))
    print("wrote paper.md section exp5b")
    return 0


if __name__ == "__main__":
    sys.exit(main())
