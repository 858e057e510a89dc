"""Generator quality: cost, fidelity and the VTSS result each generator leads to.

For every generator, per-class and class-conditional, on the bundled tabular data
(``breast_cancer`` and ``digits_ovr`` by default, ``--datasets``) and on the
``digits_binary`` (digit 8 vs the rest, 1:10) and ``digits_multiclass`` (digits 0-4,
140/84/50/30/18 images) images, over ``--splits`` splits (split seeds 0, 1, ...: the
DataModule's ``seed``, which also seeds the generator fits and the search); every
figure is the mean over the splits (C2ST AUCs and test losses ± their SE; times and
rows/s plain means):

* **fit (s)**: fitting the generators of one split through the DataModule's own pool
  path (``dm.prepare_pool``, timed by the pool builder's ``on_generator_fitted``
  hook), so what is timed is what the search fits: one generator per minority class
  on that class's *training* rows, or for a **conditional** generator one model per
  split on the training rows of *every* class, with their labels. SDV's frame
  generators see the raw rows and their samples are encoded like the real ones;
* **rows/s**: sampling throughput of ``dm.pool_builder.sample`` for ``--rows`` rows
  (``--image-rows`` for images), shared out over the minority classes, encoding
  included (a conditional model is sampled through its per-class view, as the pool is);
* **C2ST AUC**: a classifier two-sample test (``vtss_lightning.search.fidelity.c2st_auc``):
  ROC AUC of a logistic regression and of a 5-nearest-neighbour classifier
  (standardised inputs; the logistic one sees only mean differences, the 5-NN one also
  spread and shape), 5-fold cross-validated, telling a minority class's held-out rows
  (validation and test rows, never seen by the generator; ``n real`` in the table,
  summed over the minority classes) from as many synthetic rows of that class,
  averaged over 5 synthetic draws, over the minority classes (``digits_multiclass``
  has four) and then over the splits; 0.5 = indistinguishable, 1.0 = fully separable.
  With a few dozen real rows one split's AUC is noisy (about ±0.1);
* **VTSS**: ``VTSSCallback(folds=None)`` (default grid, hold-out; the default
  ``folds="auto"`` would run repeated 5-fold on these small classes and refit every
  generator for each fold) with that generator: the selected ratio γ̂ per split (0 =
  no synthetic rows, 1 = full balance), the final model's balanced test log loss (mean
  ± SE over splits) and the search's wall time. The search reuses the generators
  fitted above (the script checks that nothing was refitted), so each generator is
  fitted once per split;
* **joint search**: one ``VTSSCallback(folds=None)`` with ``generator=[...]`` listing
  the fast generators and the VAE/diffusion ones (not SDV's, which run on one split
  only, nor the per-class diffusion or the diffusers models, the slowest to sample):
  the chosen (generator, γ̂), its balanced test log loss against the best single
  listed generator's on the same split (paired), and the search's wall time, fits
  included. It runs on the first ``--joint-splits`` splits; on the others its pick is
  *replayed* from the single searches by its own rule (the generator whose pick has
  the lowest validation loss wins), which repeats it exactly when the joint search
  repeats the single searches, as the splits it ran on check.

A conditional generator gets its per-class twin's ``steps``: one model trained for
``steps`` on every class, against one model per minority class trained for ``steps``
each (on ``digits_multiclass`` the twin trains four models, 4x the steps in all).
Rows outside the target comparisons (SDV's generators, the default jitter on images,
``DiffusersGenerator`` with ``--diffusers``) run on the first ``--extra-splits``
splits only. Tabular model: ``TabularClassifier(weight_decay=1e-3)`` (logistic,
L-BFGS). Image model: ``ImageClassifier(width=16, depth=2)`` for ``--image-epochs``
epochs (the settings of ``configs/image_digits_*.yaml``). Each split's model is built
right after seeding and its final fit (after the search) starts from reseeded RNGs, so
a generator's search inside the joint search, and the joint's final model, repeat
that generator's single search: the joint is judged on its choice, not on training
noise. A generator that fails is reported with its reason.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generators.py [--splits 3] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, quiet, single_thread, today, trainer  # noqa: E402
from _generators_report import failure, joint_entries, render  # noqa: E402

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.data import ImageDataModule  # noqa: E402
from vtss_lightning.generators import (  # noqa: E402
    CTGANGenerator,
    DiffusionGenerator,
    GaussianCopulaGenerator,
    GaussianGenerator,
    JitterGenerator,
    SMOTEGenerator,
    TVAEGenerator,
    VAEGenerator,
)
from vtss_lightning.models import ImageClassifier, TabularClassifier  # noqa: E402
from vtss_lightning.search.fidelity import c2st_auc  # noqa: E402
from vtss_lightning.search.objective import test_metrics  # noqa: E402

IMAGE_DATASETS = ("digits_binary", "digits_multiclass")
#: synthetic draws (each with its own CV shuffle) averaged into one C2ST AUC
C2ST_DRAWS = 5
#: budgets of the full run and of ``--quick`` (a smoke test: its numbers mean nothing)
FULL = {
    "splits": 3,
    "extra_splits": 1,
    "joint_splits": 1,
    "rows": 2_000,
    "image_rows": 500,
    "sdv_epochs": 100,
    "steps": 300,
    "image_steps": 600,
    "image_epochs": 10,
    "sample_steps": None,  # diffusion's DDIM steps: None = 50 on tables (default), 25 on images
}
QUICK = {
    "splits": 1,
    "extra_splits": 1,
    "joint_splits": 1,
    "rows": 500,
    "image_rows": 100,
    "sdv_epochs": 2,
    "steps": 20,
    "image_steps": 20,
    "image_epochs": 1,
    "sample_steps": 5,
}
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


@dataclass(frozen=True)
class Spec:
    """One generator row: how to build it and where it is compared."""

    label: str
    make: Callable
    kind: str = "per class"  # or "conditional"
    twin: str | None = None  # a conditional row's per-class counterpart (its label)
    joint: bool = False  # listed in the joint search
    extra: bool = False  # in no target comparison: the first ``--extra-splits`` only


def tabular_specs(args) -> list[Spec]:
    epochs, steps = args.sdv_epochs, args.steps
    ddim = {} if args.sample_steps is None else {"sample_steps": args.sample_steps}
    return [
        Spec("SMOTE", lambda: SMOTEGenerator(5), joint=True),
        Spec("jitter", lambda: JitterGenerator(), joint=True),
        Spec("Gaussian", lambda: GaussianGenerator(), joint=True),
        Spec("GaussianCopula", lambda: GaussianCopulaGenerator(), extra=True),
        Spec("CTGAN", lambda: CTGANGenerator(epochs=epochs), extra=True),
        Spec("TVAE", lambda: TVAEGenerator(epochs=epochs), extra=True),
        Spec("VAE", lambda: VAEGenerator(steps=steps), joint=True),
        Spec(
            "VAE (conditional)",
            lambda: VAEGenerator(steps=steps, conditional=True),
            "conditional",
            twin="VAE",
            joint=True,
        ),
        Spec("diffusion", lambda: DiffusionGenerator(steps=steps, **ddim)),
        Spec(
            "diffusion (conditional)",
            lambda: DiffusionGenerator(steps=steps, conditional=True, **ddim),
            "conditional",
            twin="diffusion",
            joint=True,
        ),
    ]


def image_specs(args) -> list[Spec]:
    # VAE / diffusion settings of configs/image_digits_vae.yaml and image_digits_diffusion.yaml;
    # the conditional twins keep them (guidance_scale 1 and label_dropout 0.1, the defaults)
    steps, ddim = args.image_steps, args.sample_steps or 25

    def vae(conditional: bool = False) -> VAEGenerator:
        return VAEGenerator(
            steps=steps, width=32, latent_dim=8, beta=0.3, lr=0.003, conditional=conditional
        )

    def diffusion(conditional: bool = False) -> DiffusionGenerator:
        return DiffusionGenerator(steps=steps, width=16, sample_steps=ddim, conditional=conditional)

    def diffusers():  # configs/image_digits_diffusers.yaml's UNet, at this step budget
        from vtss_lightning.generators import DiffusersGenerator

        return DiffusersGenerator(steps=steps, inference_steps=ddim)

    specs = [
        Spec("SMOTE", lambda: SMOTEGenerator(5), joint=True),
        # the default scale (1.0) is one std of standardised tabular columns, but one
        # whole pixel range on [0, 1] images; 0.1 is the image-sized setting
        Spec("jitter", lambda: JitterGenerator(), extra=True),
        Spec("jitter (scale 0.1)", lambda: JitterGenerator(scale=0.1), joint=True),
        Spec("Gaussian", lambda: GaussianGenerator(), joint=True),
        Spec("VAE", vae, joint=True),
        Spec("VAE (conditional)", lambda: vae(True), "conditional", twin="VAE", joint=True),
        Spec("diffusion", diffusion),
        Spec(
            "diffusion (conditional)",
            lambda: diffusion(True),
            "conditional",
            twin="diffusion",
            joint=True,
        ),
    ]
    if args.diffusers and HAS_DIFFUSERS:
        specs.append(Spec("diffusers UNet (conditional)", diffusers, "conditional", extra=True))
    return specs


# ---------------------------------------------------------------- one generator


def held_out_rows(dm, k: int) -> np.ndarray:
    """Class ``k``'s validation and test rows, encoded: rows no generator has seen."""
    split = dm.holdout
    rows = [split.x_val[split.y_val == k].cpu()]
    if dm.x_test is not None:
        rows.append(dm.x_test[dm.y_test == k].cpu())
    return torch.cat(rows).numpy()


class SeedFinalFit(pl.Callback):
    """Seeds the global RNGs as the final fit starts, after the search: the final model
    (refit at the selected size) then trains the same way whatever the search drew from
    them before, so a joint search's final model is its chosen generator's single one."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, trainer, pl_module) -> None:
        pl.seed_everything(self.seed, verbose=False)


def search(dm, model, epochs: int, seed: int) -> tuple[VTSSCallback, float, float]:
    """``VTSSCallback`` on the hold-out: the callback, the wall time, the test loss."""
    # candidate_callbacks=[]: SeedFinalFit is for the outer (final) fit only
    cb = VTSSCallback(verbose=False, seed=seed, folds=None, candidate_callbacks=[])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        trainer([cb, SeedFinalFit(seed)], max_epochs=epochs, root=root).fit(model, datamodule=dm)
    wall = time.perf_counter() - t0
    loss = test_metrics(model, dm.x_test, dm.y_test, dm.num_classes)["balanced_log_loss"]
    return cb, wall, float(loss)


def run_one(make_dm: Callable, make_model: Callable, epochs: int, rows: int, seed: int) -> dict:
    """Fit, time, score and search with one generator on one split."""
    pl.seed_everything(seed, verbose=False)
    model = make_model()  # first, as in run_joint: the same initial weights
    dm = make_dm()
    dm.setup("fit")
    split = dm.holdout
    minority = [k for k, gap in dm.class_gaps().items() if gap > 0]
    builder = dm.pool_builder
    # fit as the search would (per class, or one conditional model per split): the
    # pool path fits on first use and draws one chunk per class, which the search
    # then reuses (pools are nested), so that chunk's time counts as search time
    fits: list[float] = []
    builder.on_generator_fitted = lambda who, seconds: fits.append(seconds)
    t0 = time.perf_counter()
    dm.prepare_pool(dict.fromkeys(minority, 1))
    prepared_s = time.perf_counter() - t0
    builder.on_generator_fitted = None
    fitted = {k: split.generators[k] for k in minority}
    sample_s, per_class = 0.0, -(-rows // len(minority))
    aucs, knn_aucs = [], []
    for k in minority:
        t0 = time.perf_counter()
        builder.sample(split, fitted[k], per_class, seed * 31 + k)
        sample_s += time.perf_counter() - t0
        real = held_out_rows(dm, k)
        draws_auc, draws_knn = [], []
        for r in range(C2ST_DRAWS):
            draw = seed * 37 + 101 * r + k
            synthetic = builder.sample(split, fitted[k], len(real), draw).cpu().numpy()
            draws_auc.append(c2st_auc(real, synthetic, draw))
            draws_knn.append(c2st_auc(real, synthetic, draw, "knn"))
        aucs.append(float(np.mean(draws_auc)))
        knn_aucs.append(float(np.mean(draws_knn)))
    cb, search_s, loss = search(dm, model, epochs, seed)
    if any(dm.holdout.generators.get(k) is not g for k, g in fitted.items()):
        raise RuntimeError("the search refitted the generators; the fit time would be wrong")
    return {
        "fit_s": float(sum(fits)),
        "fits": len(fits),
        "rows_per_s": per_class * len(minority) / sample_s,
        "auc": float(np.mean(aucs)),
        "knn_auc": float(np.mean(knn_aucs)),
        "class_auc": aucs,
        "class_knn_auc": knn_aucs,
        "n_real": int(sum(len(held_out_rows(dm, k)) for k in minority)),
        "ratio": float(cb.result.selected_ratio),
        "val_loss": cb.result.selected.val_balanced_loss,
        "test_loss": loss,
        "search_s": search_s + prepared_s - float(sum(fits)),
    }


def run_joint(specs: list[Spec], make_dm: Callable, make_model, epochs: int, seed: int) -> dict:
    """One search over (generator, size) with every listed generator, on one split."""
    listed = [s for s in specs if s.joint]
    pl.seed_everything(seed, verbose=False)
    try:
        model = make_model()
        dm = make_dm([s.make() for s in listed])
        cb, wall, loss = search(dm, model, epochs, seed)
        result = cb.result
        chosen = result.selected_generator
        per_gen = result.diagnostics["generators"]
        labels = [g["generator"] for g in per_gen]
        if chosen not in labels or len(labels) != len(listed):
            raise ValueError(f"selected_generator {chosen!r} is not one of {labels}")
        generators = joint_entries([s.label for s in listed], per_gen)
    except Exception as exc:  # the API may be missing or broken: reported, not fatal
        return {"unavailable": failure(exc)["error"]}
    return {
        "generator": listed[labels.index(chosen)].label,
        "dm_generator": repr(dm.generator),
        "ratio": float(result.selected_ratio),
        "test_loss": loss,
        "search_s": wall,
        "generators": generators,
    }


# ---------------------------------------------------------------- datasets


@dataclass
class Dataset:
    name: str
    kind: str  # "tabular" or "image"
    specs: list[Spec]
    make_dm: Callable  # (generator or list, seed) -> DataModule
    make_model: Callable
    epochs: int
    rows: int


def make_dataset(name: str, args) -> Dataset:
    if name not in IMAGE_DATASETS:
        return Dataset(
            name,
            "tabular",
            tabular_specs(args),
            lambda g, s: TabularDataModule(dataset=name, seed=s, generator=g),
            lambda: TabularClassifier(weight_decay=1e-3),
            1,
            args.rows,
        )
    return Dataset(
        name,
        "image",
        image_specs(args),
        lambda g, s: ImageDataModule(dataset=name, seed=s, generator=g, batch_size=128),
        lambda: ImageClassifier(width=16, depth=2, dropout=0.1, lr=0.003, weight_decay=1e-4),
        args.image_epochs,
        args.image_rows,
    )


def run_dataset(name: str, args) -> dict:
    quiet()  # again: a --jobs worker is a fresh process
    single_thread(args.threads)
    d = make_dataset(name, args)
    if args.only:
        d.specs = [s for s in d.specs if s.label in args.only]
    singles: dict[str, list[dict | None]] = {s.label: [] for s in d.specs}
    joints: list[dict] = []
    for seed in range(args.splits):
        for spec in d.specs:
            if spec.extra and seed >= args.extra_splits:
                singles[spec.label].append(None)  # not run on this split
                continue
            t0 = time.perf_counter()
            try:
                r = run_one(
                    lambda m=spec.make, s=seed: d.make_dm(m(), s),
                    d.make_model,
                    d.epochs,
                    d.rows,
                    seed,
                )
            except Exception as exc:  # reported, not fatal
                r = failure(exc)
            singles[spec.label].append(r)
            took = time.perf_counter() - t0
            print(f"{d.name} split {seed} {spec.label}: {r} ({took:.0f} s)", flush=True)
        if not args.no_joint and seed >= args.joint_splits and any(s.joint for s in d.specs):
            joints.append({"replay": True})  # replayed from the single searches
        elif not args.no_joint and any(s.joint for s in d.specs):
            t0 = time.perf_counter()
            j = run_joint(d.specs, lambda g, s=seed: d.make_dm(g, s), d.make_model, d.epochs, seed)
            joints.append(j)
            print(
                f"{d.name} split {seed} joint: {j} ({time.perf_counter() - t0:.0f} s)", flush=True
            )
    return {
        "name": d.name,
        "kind": d.kind,
        "rows": d.rows,
        "specs": [
            {"label": s.label, "kind": s.kind, "twin": s.twin, "joint": s.joint, "extra": s.extra}
            for s in d.specs
        ],
        "singles": singles,
        "joint": joints,
    }


def run_all(names: list[str], args) -> list[dict]:
    """Every dataset, in order; ``--jobs`` > 1 runs datasets in parallel processes."""
    if args.jobs <= 1:
        return [run_dataset(name, args) for name in names]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_dataset, name, args) for name in names]
        return [f.result() for f in futures]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--datasets", nargs="*", default=["breast_cancer", "digits_ovr"], help="tables")
    add("--images", nargs="*", default=list(IMAGE_DATASETS), choices=IMAGE_DATASETS)
    add("--no-images", action="store_true", help="skip the image datasets")
    add("--no-joint", action="store_true", help="skip the joint search")
    add("--diffusers", action="store_true", help="add a DiffusersGenerator row (images)")
    add("--only", nargs="+", metavar="LABEL", help="only these generator rows (smoke tests)")
    add("--quick", action="store_true", help="tiny budgets, 1 split: a smoke test")
    add("--splits", type=int, help=f"split seeds 0..N-1 (default {FULL['splits']})")
    add("--extra-splits", type=int, help="splits of the rows outside the targets (default 1)")
    add("--joint-splits", type=int, help="splits the joint search runs on; replayed on the rest")
    add("--rows", type=int, help=f"rows sampled for rows/s, tables (default {FULL['rows']:,})")
    add("--image-rows", type=int, help=f"the same, images (default {FULL['image_rows']:,})")
    add("--sdv-epochs", type=int, help=f"CTGAN/TVAE epochs (default {FULL['sdv_epochs']})")
    add("--steps", type=int, help=f"tabular VAE/diffusion steps (default {FULL['steps']})")
    add("--image-steps", type=int, help=f"image deep generators' steps ({FULL['image_steps']})")
    add("--image-epochs", type=int, help=f"image classifier epochs ({FULL['image_epochs']})")
    add("--sample-steps", type=int, help="diffusion DDIM steps (default 50 tables, 25 images)")
    add("--threads", type=int, default=1, help="torch threads per process")
    add("--jobs", type=int, default=1, help="datasets run in parallel processes")
    add("--out", default=str(RESULTS / "generators.md"))
    add("--json", help="also write the per-split numbers here")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.extra_splits = min(args.extra_splits, args.splits)
    args.joint_splits = min(args.joint_splits, args.splits)
    if args.no_images:
        args.images = []
    return args


def header(args, wall: float, argv: list[str] | None) -> list[str]:
    shown = ["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/generators.py"]
    shown += sys.argv[1:] if argv is None else argv
    doc = (__doc__ or "").split("Usage::")[0].strip()
    ddim = "" if args.sample_steps is None else f" ({args.sample_steps} DDIM steps)"
    budgets = (
        f"CTGAN/TVAE {args.sdv_epochs} epochs; tabular VAE/diffusion {args.steps} steps; "
        f"image VAE/diffusion{'/diffusers' if args.diffusers else ''} {args.image_steps} "
        f"steps{ddim}; image classifier {args.image_epochs} epochs; rows/s over "
        f"{args.rows:,} (tables) and {args.image_rows:,} (images) rows"
    )
    if args.quick:
        budgets += "; `--quick`: smoke-test budgets, the numbers mean nothing"
    lines = [
        "# Generator quality on the bundled data",
        "",
        doc.split("\n\n", 1)[1],
        "",
        f"- Command: `{shlex.join(shown)}`",
        f"- Machine: {machine()}" + (f"; {args.jobs} processes" if args.jobs > 1 else ""),
        f"- Date: {today()}; wall {wall:.0f} s; split seeds 0..{args.splits - 1}; rows "
        f"outside the targets on split(s) 0..{args.extra_splits - 1}",
        f"- Budgets: {budgets}",
    ]
    if args.images and not args.diffusers:
        lines.append("- No DiffusersGenerator row (`--diffusers` adds one, on the extra splits)")
    elif args.images and not HAS_DIFFUSERS:
        lines.append("- `diffusers` is not installed: no DiffusersGenerator row")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    quiet()
    start = time.perf_counter()
    results = run_all([*args.datasets, *args.images], args)
    wall = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([*header(args, wall, argv), "", *render(results, args.splits)]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
