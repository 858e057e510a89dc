"""Memory and time of a 10^6-row x 50-column synthetic pool (issue 6, resource limits).

Each generator runs in its own child process (peak RSS is a per-process maximum):
the DataModule holds 2,000 + 500 real rows of 50 float32 columns; the minority
class's generator is fitted on its 400 training rows and the pool is drawn once at
10^6 rows (``prepare_pool``), then the largest candidate's training set (real rows +
the whole pool) is assembled as a search would. Reported: wall time of each step,
the pool's own size, and the child's peak RSS before and after.

Target: a few GB at most (we take <= 2 GiB peak RSS for the 200 MB pool).

Usage::

    .venv/bin/python benchmarks/pool_memory.py [--rows 1000000] [--cols 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
from _common import machine, quiet, single_thread, today  # noqa: E402

GENERATORS = ("smote", "smote-unchunked", "gaussian", "jitter")
TARGET_MB = 2048.0
RESULTS = Path(__file__).resolve().parent / "results" / "pool_memory.md"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(name: str, rows: int, cols: int) -> dict:
    """Run in a child: fit one generator and draw the pool; return the figures."""
    import torch

    from vtss_lightning import SyntheticAugmentationDataModule
    from vtss_lightning.generators import GaussianGenerator, JitterGenerator, SMOTEGenerator
    from vtss_lightning.search.guard import pool_megabytes

    quiet()
    single_thread(1)
    if name == "smote-unchunked":  # for comparison: interpolate all rows at once
        import vtss_lightning.generators.smote as smote

        smote._SAMPLE_CHUNK = 10**12
    gens = {"smote": SMOTEGenerator, "gaussian": GaussianGenerator, "jitter": JitterGenerator}
    gen = gens[name.split("-")[0]]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2500, cols, generator=g)
    y = torch.cat([torch.zeros(2000, dtype=torch.long), torch.ones(500, dtype=torch.long)])
    dm = SyntheticAugmentationDataModule(x, y, generator=gen(), seed=0)
    dm.setup()
    before = peak_mb()
    t0 = time.perf_counter()
    pool = dm.prepare_pool({1: rows})
    t_pool = time.perf_counter() - t0
    after_pool = peak_mb()
    t0 = time.perf_counter()
    xs, ys = dm.training_tensors({1: rows})
    t_take = time.perf_counter() - t0
    assert xs.shape == (1600 + 400 + rows, cols) and bool(torch.isfinite(xs).all())
    return {
        "generator": repr(dm.generator) + (" unchunked" if "-" in name else ""),
        "pool_mb": pool_megabytes(pool),
        "rss_before_mb": before,
        "rss_after_pool_mb": after_pool,
        "rss_peak_mb": peak_mb(),
        "fit_and_sample_s": t_pool,
        "training_set_s": t_take,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--one", choices=GENERATORS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.rows, args.cols)))
        return
    figures = []
    for name in GENERATORS:
        cmd = [sys.executable, __file__, "--one", name, "--rows", str(args.rows)]
        cmd += ["--cols", str(args.cols)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        figures.append(json.loads(out.strip().splitlines()[-1]))
        print(figures[-1], flush=True)
    single_thread(1)
    lines = [
        "# Synthetic pool memory and time",
        "",
        f"Command: `.venv/bin/python benchmarks/pool_memory.py --rows {args.rows} "
        f"--cols {args.cols}`  ",
        f"Machine: {machine()}  ",
        f"Date: {today()}",
        "",
        f"Pool: {args.rows:,} rows x {args.cols} float32 columns for one minority class "
        "(fitted on 400 training rows), drawn once by `prepare_pool`, then the largest "
        "candidate's training set (real + pool rows) assembled by `training_tensors`. "
        "Each generator in a fresh process; peak RSS is the process's maximum resident "
        f"memory. Target: peak RSS <= {TARGET_MB:.0f} MiB.",
        "",
        "| generator | pool (MiB) | RSS before (MiB) | peak RSS after pool (MiB) | "
        "peak RSS after training set (MiB) | fit + sample (s) | training set (s) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        verdict = "met" if f["rss_peak_mb"] <= TARGET_MB else "MISSED"
        lines.append(
            f"| `{f['generator']}` | {f['pool_mb']:.0f} | {f['rss_before_mb']:.0f} | "
            f"{f['rss_after_pool_mb']:.0f} | {f['rss_peak_mb']:.0f} | "
            f"{f['fit_and_sample_s']:.2f} | {f['training_set_s']:.2f} | {verdict} |"
        )
    lines += [
        "",
        "Peak RSS includes the process's baseline (torch, Lightning and scikit-learn "
        "imported, data set up: the 'RSS before' column). "
        "The pool itself is rows x columns x 4 bytes; sampling adds temporaries: SMOTE "
        "interpolates in chunks of 65,536 rows (`_SAMPLE_CHUNK`) and finds neighbours in "
        "distance blocks of at most 2^24 entries; the Gaussian draws its n x d normal "
        "matrix at once (one extra pool-sized buffer); jitter copies the resampled rows "
        "and its noise (two). Assembling the largest candidate copies real + pool rows "
        "once more (`torch.cat`). The search's report records `timing.pool_mb` and "
        "`timing.peak_rss_mb` (and `cuda_peak_mb` on CUDA).",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
