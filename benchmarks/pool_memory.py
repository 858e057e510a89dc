"""Memory of the data path: the whole ``vtss fit`` of a large CSV, and a 10^6-row pool.

Every figure comes from a fresh child process (peak RSS is a per-process maximum).

* ``--fit`` (issue 15): ``vtss fit`` of a generated CSV of ``--fit-rows`` rows x 20
  columns (18 numeric, one categorical of 5 levels, a 0/1 label with 2% minority;
  numpy seed 0, written once under ``--tmp``), a hold-out search over ratios
  ``[0, 1]`` with SMOTE and logistic regression (L-BFGS, ``max_iter`` 100,
  ``max_epochs`` 1). The child records its peak RSS when the search asks for its
  first pool (the table read, encoded and split: "before the search") and at the
  end; the parent reads the child's ``ru_maxrss`` from ``os.wait4`` as a check.
  ``--before DIR`` first runs the same fit with ``PYTHONPATH=DIR`` (a copy of an
  older package), for a before/after table. Target (issue 15): peak RSS <= 3 x
  (encoded features + largest pool) in float32.
* ``--pool`` (issue 6): the minority class's generator fitted on 400 training rows
  of 50 float32 columns, the pool drawn once at 10^6 rows (``prepare_pool``), then
  the largest candidate's training set assembled as a search would; target <= 2 GiB.

Usage::

    .venv/bin/python benchmarks/pool_memory.py --fit [--fit-rows 2000000] [--before DIR]
    .venv/bin/python benchmarks/pool_memory.py --pool [--rows 1000000] [--cols 50]

Each writes its section of ``results/pool_memory.md`` (``POOL_MEMORY_MD`` names another
file), keeping the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))

GENERATORS = ("smote", "smote-unchunked", "gaussian", "jitter")
TARGET_MB = 2048.0
#: Issue 15's bound: peak RSS over (encoded features + largest pool) in float32.
FIT_TARGET = 3.0
RESULTS = Path(
    os.environ.get("POOL_MEMORY_MD", Path(__file__).resolve().parent / "results" / "pool_memory.md")
)
TITLE = "# Memory of the data path: the whole `vtss fit`, and the synthetic pool"
FIT_HEADING = "## Whole `vtss fit` of a large CSV (issue 15)"
POOL_HEADING = "## Synthetic pool memory and time (issue 6)"
MARK = "FIGURES "
MIB = 2.0**20


def peak_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------ the fit
def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """The benchmark table: 18 numeric columns, ``cat`` (5 levels), ``label`` (2% ones).

    Written in blocks so that the parent stays small; the label follows a linear score
    (its top 2%), so the search has something to learn.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    levels = np.array(list("abcde"), dtype=object)
    tmp = path.with_suffix(".part")
    block = 200_000
    for start in range(0, rows, block):
        n = min(block, rows - start)
        x = rng.standard_normal((n, 18))
        frame = pd.DataFrame(x, columns=[f"x{i + 1}" for i in range(18)])
        frame["cat"] = rng.choice(levels, n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
        score = x[:, 0] + 0.5 * x[:, 1] - 0.5 * x[:, 2] + 0.3 * rng.standard_normal(n)
        frame["label"] = (score > 2.37).astype(int)  # about 2% of rows
        frame.to_csv(tmp, mode="a", header=start == 0, index=False, float_format="%.6g")
    tmp.rename(path)


FIT_CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: 1
  default_root_dir: {root}
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  logger: false
model:
  class_path: vtss_lightning.models.TabularClassifier
  init_args:
    hidden_dims: []
    optimizer: lbfgs
    weight_decay: 0.01
    max_iter: 100
data:
  class_path: vtss_lightning.data.TabularDataModule
  init_args:
    path: {csv}
    target: label
    generator:
      class_path: vtss_lightning.generators.SMOTEGenerator
vtss:
  strategy: retrain
  ratios: [0.0, 1.0]
  progress: false
"""


def fit_files(tmp: Path, rows: int) -> Path:
    """The CSV (generated once per row count) and its config; returns the config."""
    tmp.mkdir(parents=True, exist_ok=True)
    csv = tmp / f"fit_{rows}x20_seed0.csv"
    if not csv.exists():
        print(f"writing {csv} ...", flush=True)
        write_csv(csv, rows)
    config = tmp / f"fit_{rows}.yaml"
    config.write_text(FIT_CONFIG.format(root=tmp / "runs", csv=csv))
    return config


def encoded_mb(dm) -> float:
    """Encoded development (and test) features held by ``dm``, float32 MiB."""
    split = dm.holdout
    tensors = [split.x_train, split.x_val] + ([] if dm.x_test is None else [dm.x_test])
    return sum(t.nelement() * t.element_size() for t in tensors) / MIB


def fit_child(config: str) -> dict:
    """Run in a child: ``vtss fit --config config``, recording peak RSS at the search's
    first pool request (everything before it is reading and encoding) and at the end."""
    import torch

    from vtss_lightning import cli
    from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule as DM
    from vtss_lightning.search.guard import pool_megabytes

    torch.set_num_threads(1)
    seen: dict = {"imports_mb": peak_mb()}
    t0 = time.perf_counter()
    original = DM.prepare_pool

    def prepare_pool(self, sizes):
        if "before_search_mb" not in seen:
            seen.update(before_search_mb=peak_mb(), setup_s=time.perf_counter() - t0)
            seen.update(features_mb=encoded_mb(self), width=int(self.n_features))
        pool = original(self, sizes)
        seen["pool_mb"] = max(seen.get("pool_mb", 0.0), pool_megabytes(pool))
        return pool

    DM.prepare_pool = prepare_pool
    cli.main(["fit", "--config", config])
    seen.update(peak_mb=peak_mb(), total_s=time.perf_counter() - t0)
    return seen


def run_child(args: list[str], pythonpath: str | None = None) -> dict:
    """Figures printed by a child run of this script, plus its ``ru_maxrss`` from the OS."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    line = next(x for x in reversed(out.splitlines()) if x.startswith(MARK))
    figures = json.loads(line[len(MARK) :])
    figures["os_maxrss_mb"] = usage.ru_maxrss / 1024.0
    return figures


def fit_rows_md(label: str, f: dict, rows: int) -> str:
    """One row of the fit table."""
    raw = rows * 20 * 4 / MIB
    bound = f["features_mb"] + f["pool_mb"]
    verdict = "met" if f["os_maxrss_mb"] <= FIT_TARGET * bound else "MISSED"
    return (
        f"| {label} | {raw:.0f} | {f['features_mb']:.0f} ({f['width']} cols) | "
        f"{f['pool_mb']:.0f} | {f['imports_mb']:.0f} | {f['before_search_mb']:.0f} | "
        f"{f['os_maxrss_mb']:.0f} | {f['os_maxrss_mb'] - f['imports_mb']:.0f} | "
        f"{f['os_maxrss_mb'] / raw:.1f}x | {f['os_maxrss_mb'] / bound:.2f}x | "
        f"{(f['os_maxrss_mb'] - f['imports_mb']) / bound:.2f}x | {verdict} | {f['setup_s']:.0f} | "
        f"{f['total_s']:.0f} |"
    )


def fit_section(runs: list[tuple[str, dict]], rows: int, command: str) -> list[str]:
    """The markdown section of the whole-fit measurement."""
    from _common import machine, single_thread, today

    single_thread(1)
    lines = [
        FIT_HEADING,
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {today()}",
        "",
        f"`vtss fit` of a generated CSV, {rows:,} rows x 20 columns (18 numeric, one "
        "categorical of 5 levels, a 0/1 label with ~2% ones; numpy seed 0), hold-out "
        "search over ratios [0, 1] with SMOTE and logistic regression (L-BFGS, "
        "max_iter 100, max_epochs 1; torch single-threaded), each in a fresh process. "
        "Raw float32 = rows x 20 x 4 bytes. Before the search = peak RSS when the "
        "search asks for its first pool (table read, encoded, split). Peak = the "
        "child's `ru_maxrss` (`os.wait4`). Target (issue 15): peak <= "
        f"{FIT_TARGET:.0f} x (encoded features + largest pool).",
        "",
        "| code | raw float32 (MiB) | encoded features (MiB) | largest pool (MiB) | "
        "RSS after imports (MiB) | peak RSS before search (MiB) | peak RSS (MiB) | "
        "peak above imports (MiB) | peak / raw | peak / (features + pool) | "
        "above imports / (features + pool) | target | setup (s) | whole fit (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [fit_rows_md(label, f, rows) for label, f in runs]
    return lines + ["", *fit_notes(runs[-1][1])]


def fit_notes(f: dict) -> list[str]:
    """What the figures of the current tree say, in words."""
    bound = f["features_mb"] + f["pool_mb"]
    above = f["os_maxrss_mb"] - f["imports_mb"]
    return [
        "The data path (issue 15): the CSV is read in blocks of 2^19 rows, each column "
        "joined once (`read_csv_lean`: the table once, not twice while pandas stacks "
        "it); the features share the read table's memory (no copy for dropping the "
        "label); the preprocessing is fitted column by column on the training rows read "
        "in place and encodes blocks of 65,536 rows straight into one float32 matrix (no "
        "float64 copy of the table, no copy of the training rows); the raw table is let "
        "go once encoded (read again only by a fold or the all-rows refit) and glibc's "
        "freed heap handed back; each class's pool is one preallocated tensor filled "
        "chunk by chunk, and a candidate's training set one preallocated copy of real + "
        "pool rows; shuffled batches are gathered per batch.",
        "",
        f"Target (peak <= {FIT_TARGET:.0f} x (features + pool) = "
        f"{FIT_TARGET * bound:.0f} MiB): missed. Importing torch (a CUDA build), "
        f"Lightning and scikit-learn alone takes {f['imports_mb']:.0f} MiB; above that "
        f"the peak is {above:.0f} MiB, {above / bound:.2f} x (features + pool). It is "
        "reached in the search, not in the data path: the largest candidate's training "
        "set (real + pool rows, one float32 copy) plus L-BFGS's full-batch pass over "
        "it. Letting the training set share the real rows' storage (no copy per "
        "candidate) would take about its size off; not done.",
        "",
    ]


def fit_main(args: argparse.Namespace) -> None:
    config = fit_files(Path(args.tmp), args.fit_rows)
    runs = []
    variants = ([("before", args.before)] if args.before else []) + [("after", None)]
    for label, path in variants:
        figures = run_child(["--fit-child", str(config)], path)
        print(label, figures, flush=True)
        runs.append((label if args.before else "this tree", figures))
    command = f".venv/bin/python benchmarks/pool_memory.py --fit --fit-rows {args.fit_rows}"
    command += f" --before {args.before}" if args.before else ""
    write_section(FIT_HEADING, fit_section(runs, args.fit_rows, command))


# ----------------------------------------------------------------- the pool
def pool_child(name: str, rows: int, cols: int) -> dict:
    """Run in a child: fit one generator and draw the pool; return the figures."""
    import torch
    from _common import quiet, single_thread

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
    peak_train = peak_mb()  # before the check below, whose temporaries are the benchmark's
    assert xs.shape == (1600 + 400 + rows, cols) and bool(torch.isfinite(xs).all())
    return {
        "generator": repr(dm.generator) + (" unchunked" if "-" in name else ""),
        "pool_mb": pool_megabytes(pool),
        "rss_before_mb": before,
        "rss_after_pool_mb": after_pool,
        "rss_peak_mb": peak_train,
        "fit_and_sample_s": t_pool,
        "training_set_s": t_take,
    }


def pool_section(figures: list[dict], rows: int, cols: int) -> list[str]:
    """The markdown section of the pool measurement."""
    from _common import machine, single_thread, today

    single_thread(1)
    lines = [
        POOL_HEADING,
        "",
        f"Command: `.venv/bin/python benchmarks/pool_memory.py --pool --rows {rows} "
        f"--cols {cols}`  ",
        f"Machine: {machine()}  ",
        f"Date: {today()}",
        "",
        f"Pool: {rows:,} rows x {cols} float32 columns for one minority class "
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
    return lines + [
        "",
        "Peak RSS includes the process's baseline (torch, Lightning and scikit-learn "
        "imported, data set up: the 'RSS before' column). The pool is one preallocated "
        "rows x columns x 4 bytes tensor filled chunk by chunk; sampling adds "
        "temporaries: SMOTE interpolates in chunks of 65,536 rows (`_SAMPLE_CHUNK`) and "
        "finds neighbours in distance blocks of at most 2^24 entries; the Gaussian draws "
        "its n x d normal matrix at once (one extra pool-sized buffer); jitter copies the "
        "resampled rows and its noise (two). Assembling the largest candidate copies "
        "real + pool rows once (one preallocated tensor). The search's report records "
        "`timing.pool_mb` and `timing.peak_rss_mb` (and `cuda_peak_mb` on CUDA).",
        "",
    ]


def pool_main(args: argparse.Namespace) -> None:
    figures = []
    for name in GENERATORS:
        one = ["--pool-child", name, "--rows", str(args.rows), "--cols", str(args.cols)]
        figures.append(run_child(one))
        print(figures[-1], flush=True)
    write_section(POOL_HEADING, pool_section(figures, args.rows, args.cols))


# ------------------------------------------------------------------ results
def write_section(heading: str, lines: list[str]) -> None:
    """Replace (or add) the section under ``heading`` in the results file, keeping the
    other measurement's section as it was."""
    sections = {FIT_HEADING: [], POOL_HEADING: []}
    if RESULTS.exists():
        current = None
        for line in RESULTS.read_text().splitlines():
            current = line if line in sections else current
            if current is not None:
                sections[current].append(line)
    sections[heading] = lines
    texts = ["\n".join(sections[h]).strip("\n") for h in (FIT_HEADING, POOL_HEADING)]
    RESULTS.write_text("\n\n".join([TITLE, *filter(None, texts)]) + "\n")
    print(f"wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="measure the whole vtss fit")
    parser.add_argument("--pool", action="store_true", help="measure the pool alone")
    parser.add_argument("--fit-rows", type=int, default=2_000_000)
    parser.add_argument("--before", help="package copy to run first with PYTHONPATH")
    parser.add_argument("--tmp", default="/tmp/vtss_pool_memory")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--pool-child", choices=GENERATORS, help=argparse.SUPPRESS)
    parser.add_argument("--fit-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pool_child:
        print(MARK + json.dumps(pool_child(args.pool_child, args.rows, args.cols)))
    elif args.fit_child:
        print(MARK + json.dumps(fit_child(args.fit_child)), flush=True)
        sys.stderr.flush()
        os._exit(0)  # torch's interpreter teardown alone adds ~140 MiB to ru_maxrss
    else:
        if args.fit:
            fit_main(args)
        if args.pool or not args.fit:
            pool_main(args)


if __name__ == "__main__":
    main()
