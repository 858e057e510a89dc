"""What a VTSS search costs, in units of one plain fit, per strategy (issue 5).

For the tabular MLP (64-64, AdamW, 30 epochs) on the paper's linear design and for
the digits CNN (``ImageClassifier``, digit 8 against the rest), K = 9 candidates (the
default grid): the wall time of the whole run (search + final model) divided by one
plain fit (a Lightning fit of the same model at full balance, timed in the same
process between the strategies), for retrain / finetune / parallel / halving /
parallel_halving; how often each strategy selects the ratio that retrain selects
(exactly, and within one grid step); and the Lightning training step against a raw
PyTorch loop on the same model and data.

A strategy that trains the winner with the final settings (all but finetune) hands
its weights over as the final model (``refit=False``, the default), so its final
model costs nothing; finetune's final model is a full fit at the chosen size.

The ``logistic`` workloads (issue 15) time the default model, ``TabularClassifier()``
(L2-penalised logistic regression, one full-batch L-BFGS fit to convergence per
candidate, ``max_epochs=1``), on a built-in table (``--table``), hold-out
(``logistic``), 5-fold (``logistic_5fold``) and 5x5-fold (``logistic_5x5``: 25 splits x
9 candidates), retrain against parallel / auto (whose stacked solve replaces one fit
per candidate), with the largest difference between the strategies' candidate losses.
``mlp_5fold`` is the ``tabular`` MLP with 5-fold selection. K-fold workloads time the
final model as one more fit at the chosen ratio (it never reuses a fold's weights).

``quickstart`` times exactly what ``vtss fit --config configs/quickstart.yaml`` runs
(the CLI's own entry point, in-process, into a fresh ``default_root_dir``; seed ``s``
sets ``--seed_everything``, ``--data.init_args.seed`` and ``--vtss.seed``): the whole
command (parsing, data, generators, search, fidelity check, final fit on all
development rows, report and curve) against one plain fit of the config's model with
the config's Trainer on the same rows (all development rows, full balance), for the
config's own strategy (``auto``) and ``--vtss.strategy retrain`` (and ``parallel``
when asked); one untimed warm-up run first pays the one-time imports.

Strategy ``auto`` (the default: parallel when the module can be stacked, else retrain
with the reason) is a row wherever it is named in ``--strategies``; quickstart always
runs it.

Usage::

    .venv/bin/python benchmarks/search_cost.py --seeds 10 --threads 1
    .venv/bin/python benchmarks/search_cost.py --workloads logistic,logistic_5fold \
        --strategies retrain,parallel --seeds 10 --out /tmp/search_cost_logistic.md
    .venv/bin/python benchmarks/search_cost.py --seeds 10 --threads 1 \
        --workloads quickstart,logistic_5fold,logistic_5x5,mlp_5fold \
        --strategies retrain,auto,parallel --out /tmp/search_cost_issue15.md
    .venv/bin/python benchmarks/search_cost.py --workloads mlp_5fold --epochs 5 --seeds 1 \
        --strategies retrain,parallel --out /tmp/smoke.md   # a quick smoke run
    .venv/bin/python benchmarks/search_cost.py --device cuda --seeds 5 --out benchmarks/results/search_cost_gpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib
import io
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
from _common import machine, quiet, single_thread, today  # noqa: E402

from vtss_lightning.data.loaders import TensorBatches  # noqa: E402
from vtss_lightning.search import SearchConfig, SearchEngine  # noqa: E402
from vtss_lightning.search.grid import DEFAULT_RATIOS  # noqa: E402
from vtss_lightning.search.strategies import (  # noqa: E402
    RetrainScorer,
    TrainerSettings,
    clone_module,
    make_scorer,
)

STRATEGIES = ("retrain", "finetune", "parallel", "parallel_best", "halving", "parallel_halving")
#: Run only when named in --strategies: ``auto`` (the default strategy: parallel when
#: the module stacks, else retrain) and Ray, an optional extra (a local Ray is started).
OPTIONAL = ("auto", "ray")
#: Table order.
ORDER = ("retrain", "auto", *STRATEGIES[1:], "ray")
LABELS = {
    "auto": "auto (the default: parallel when stackable)",
    "parallel": "parallel (snapshot=last, default)",
    "parallel_best": "parallel (snapshot=best)",
}
#: Strategies whose candidate losses are compared with retrain's (full fits, stacked).
STACKED = ("parallel", "auto")
RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = (
    *("tabular", "digits", "logistic", "logistic_5fold", "logistic_5x5", "mlp_5fold"),
    "quickstart",
)
#: Validation of each workload: (folds, repeats); folds None is the hold-out.
VALIDATION = {"logistic_5fold": (5, 1), "logistic_5x5": (5, 5), "mlp_5fold": (5, 1)}
#: Logistic-regression workloads (the default ``TabularClassifier()``).
LOGISTIC = ("logistic", "logistic_5fold", "logistic_5x5")
#: The strategies a logistic workload compares (one L-BFGS step per fit: no rungs).
LOGISTIC_STRATEGIES = ("retrain", "auto", "parallel", "ray")
#: Halving works on the hold-out only.
HOLDOUT_ONLY = ("halving", "parallel_halving")
TABLE = {"name": "breast_cancer"}  # --table
#: Epochs of the mini-batch workloads (--epochs replaces them, for smoke runs).
EPOCHS = {"tabular": 30, "mlp_5fold": 30, "digits": 15}
QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
#: What the quickstart compares: the config's own strategy (auto) and overrides of it.
QUICKSTART_STRATEGIES = ("retrain", "auto", "parallel")


def workload(kind: str, seed: int, device: str):
    """DataModule, built template and trainer settings of one workload and seed."""
    from vtss_lightning import ImageDataModule, TabularDataModule
    from vtss_lightning.generators import SMOTEGenerator
    from vtss_lightning.models import ImageClassifier, TabularClassifier

    torch.manual_seed(seed)
    if kind in LOGISTIC:
        dm = TabularDataModule(
            dataset=TABLE["name"], seed=seed, generator=SMOTEGenerator(k_neighbors=5)
        )
        model, epochs = TabularClassifier(), 1
    elif kind in ("tabular", "mlp_5fold"):
        dm = TabularDataModule(
            dataset="paper_linear", scale=False, seed=seed, generator=SMOTEGenerator(k_neighbors=5)
        )
        model, epochs = TabularClassifier(hidden_dims=[64, 64], optimizer="adamw"), EPOCHS[kind]
    else:
        dm = ImageDataModule(dataset="digits_binary", seed=seed, batch_size=64)
        model, epochs = ImageClassifier(width=16, depth=2), EPOCHS["digits"]
    dm.setup()
    model.configure_from_data(dm)
    accel = "gpu" if device == "cuda" else "cpu"
    settings = TrainerSettings.from_kwargs(
        {"max_epochs": epochs, "accelerator": accel, "devices": 1}
    )
    dm.to_device(settings.device())
    gaps = dm.class_gaps()
    dm.prepare_pool({k: math.floor(max(DEFAULT_RATIOS) * g + 0.5) for k, g in gaps.items() if g})
    return dm, model, settings, epochs


def timed_fit(model, settings, dm, ratio: float, seed: int) -> float:
    t0 = time.perf_counter()
    RetrainScorer(model, settings, seed).fit(clone_module(model), dm, dm.sizes_for_ratio(ratio))
    return time.perf_counter() - t0


def run_seed(
    kind: str, seed: int, device: str, eta: float, strategies: tuple[str, ...] = STRATEGIES
) -> dict:
    if kind == "quickstart":
        return run_quickstart_seed(seed, device, strategies)
    dm, model, settings, _ = workload(kind, seed, device)
    folds, repeats = VALIDATION.get(kind, (None, 1))
    if kind in LOGISTIC:
        strategies = tuple(k for k in strategies if k in LOGISTIC_STRATEGIES)
    if folds is not None:
        strategies = tuple(k for k in strategies if k not in HOLDOUT_ONLY)
    out = {"one_fit": [], "runs": {}}
    order = list(strategies[seed % len(strategies) :] + strategies[: seed % len(strategies)])
    for strategy in order:
        out["one_fit"].append(timed_fit(model, settings, dm, 1.0, seed))  # interleaved
        name, snapshot = (
            (strategy[:-5], "best") if strategy.endswith("_best") else (strategy, "last")
        )
        config = SearchConfig(
            strategy=name, seed=seed, halving_eta=eta, verbose=False, snapshot=snapshot
        )
        scorer = make_scorer(config, model, settings, keep_states=True)
        t0 = time.perf_counter()
        engine = SearchEngine(verbose=False, folds=folds, repeats=repeats)
        result = engine.run(dm, scorer)
        search = time.perf_counter() - t0
        final = 0.0
        # K-fold: the final model trains on other rows than any fold's fit (never reused)
        if folds is not None or scorer.trained_state(result.selected_index_sizes) is None:
            final = timed_fit(model, settings, dm, result.selected_ratio, seed)
        out["runs"][strategy] = {
            "search": search,
            "final": final,
            "ratio": result.selected_ratio,
            "fallback": scorer.fallback_reason,
            "losses": {c.ratio: c.val_balanced_loss for c in result.candidates},
        }
    out["one_fit"] = float(np.median(out["one_fit"]))
    return out


# ------------------------------------------------------------ quickstart
def _build(spec):
    """An object from a config's ``class_path``/``init_args`` (nested), as the CLI makes it."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, name = spec["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _build(v) for k, v in (spec.get("init_args") or {}).items()})
    if isinstance(spec, list):
        return [_build(v) for v in spec]
    return spec


def _accelerator(device: str) -> dict:
    return {"accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1}


def quickstart_plain_fit(seed: int, device: str) -> tuple[float, float, int]:
    """One plain fit of the quickstart's model at full balance: seconds with the config's
    Trainer (its logger and checkpoint, no VTSS) on all development rows, the rows
    ``vtss fit`` trains its final model on after K-fold selection; seconds of an inner
    fit (no logger or checkpoint) on the hold-out's training rows, the other sections'
    reference; and the number of development rows."""
    cfg = yaml.safe_load(QUICKSTART.read_text())
    pl.seed_everything(seed, verbose=False)  # as the CLI's seed_everything
    data = copy.deepcopy(cfg["data"])
    data.setdefault("init_args", {})["seed"] = seed
    dm, model = _build(data), _build(cfg["model"])
    dm.setup("fit")
    model.configure_from_data(dm)
    trainer_kw = {**cfg["trainer"], **_accelerator(device)}
    settings = TrainerSettings.from_kwargs(
        {"max_epochs": trainer_kw["max_epochs"], **_accelerator(device)}
    )
    dm.to_device(settings.device())
    dm.prepare_pool(dm.sizes_for_ratio(1.0))
    inner = timed_fit(model, settings, dm, 1.0, seed)
    dm.use_all_rows()
    dm.prepare_pool(dm.set_synthetic_ratio(1.0))  # drawn before timing, as elsewhere
    rows = len(dm.active.y_train)
    root = tempfile.mkdtemp(prefix="vtss_plain_")
    try:
        _sync(device)
        t0 = time.perf_counter()
        trainer = pl.Trainer(
            **{**trainer_kw, "default_root_dir": root},
            limit_val_batches=0,  # the validation rows are training rows (as vtss fit's final fit)
            num_sanity_val_steps=0,
        )
        trainer.fit(clone_module(model), datamodule=dm)
        _sync(device)
        outer = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return outer, inner, rows


def quickstart_args(seed: int, strategy: str, device: str, root: str) -> list[str]:
    """``vtss fit`` arguments: the quickstart config, seed ``seed``, ``strategy``."""
    args = ["fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", root]
    args += ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]
    args += ["--vtss.seed", str(seed)]
    if strategy != "auto":  # auto: the config's own
        args += ["--vtss.strategy", strategy]
    if device == "cuda":
        args += ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    return args


def quickstart_run(seed: int, strategy: str, device: str) -> dict:
    """One whole ``vtss fit --config configs/quickstart.yaml`` in this process, timed."""
    from vtss_lightning import cli

    root = tempfile.mkdtemp(prefix="vtss_quickstart_")
    printed = io.StringIO()
    try:
        _sync(device)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                cli.main(quickstart_args(seed, strategy, device, root))
        except BaseException:  # SystemExit included: show what the run printed
            print(printed.getvalue()[-4000:], file=sys.stderr)
            raise
        _sync(device)
        wall = time.perf_counter() - t0
        report = json.loads(next(Path(root).rglob("vtss_report.json")).read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    timing = report["timing"]
    notes = [n for n in report["diagnostics"].get("notes", []) if "one candidate at a time" in n]
    return {
        "search": timing["search_seconds"],
        "final": timing.get("final_fit_seconds", 0.0),
        "fidelity": timing.get("fidelity_seconds", 0.0),
        "wall": wall,
        "ratio": report["selected_ratio"],
        "fallback": notes[0] if notes else None,
        "losses": {c["ratio"]: c["val_balanced_loss"] for c in report["candidates"]},
        "validation": report["diagnostics"].get("validation"),
        "k": len(report["candidates"]),
    }


_WARMED: set[str] = set()


def run_quickstart_seed(seed: int, device: str, strategies: tuple[str, ...]) -> dict:
    """The quickstart's strategies, each timed right after its own plain fit."""
    strategies = tuple(k for k in ORDER if k in {"auto", *strategies} & set(QUICKSTART_STRATEGIES))
    if device not in _WARMED:  # one-time imports (plotting, logger, parser) are not a run's cost
        quickstart_plain_fit(seed, device)
        quickstart_run(seed, "auto", device)
        _WARMED.add(device)
    out = {"one_fit": [], "inner_fit": [], "runs": {}}
    order = list(strategies[seed % len(strategies) :] + strategies[: seed % len(strategies)])
    for strategy in order:
        outer, inner, rows = quickstart_plain_fit(seed, device)  # interleaved
        out["one_fit"].append(outer)
        out["inner_fit"].append(inner)
        out["rows"] = rows
        out["runs"][strategy] = quickstart_run(seed, strategy, device)
    out["one_fit"] = float(np.median(out["one_fit"]))
    out["inner_fit"] = float(np.median(out["inner_fit"]))
    return out


# ------------------------------------------------------------ hot path
STEP_WORKLOADS = {
    "tabular": "tabular MLP 64-64, AdamW, batch 256",
    "digits": "digits CNN width 16 depth 2, Adam, batch 64",
}


RAW_LOOP = "raw PyTorch loop"
INNER_FIT = "Lightning, no logger/bar (VTSS inner fits)"
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _TrainClock(pl.Callback):
    """Seconds from ``on_train_start`` to ``on_train_end``, the device synchronised."""

    def __init__(self, device: str):
        self.device = device

    def on_train_start(self, *a):
        self.t0 = time.perf_counter()

    def on_train_end(self, *a):
        _sync(self.device)
        self.seconds = time.perf_counter() - self.t0


def _raw_step_seconds(base, x, y, batch_size: int, epochs: int, device: str) -> float:
    """Seconds per step of a plain PyTorch loop over a copy of ``base``."""
    m = copy.deepcopy(base)
    opt = m.configure_optimizers()
    loader = TensorBatches(x, y, batch_size, shuffle=True, seed=0)
    steps, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            loss = m.loss(m(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _lightning_step_seconds(base, x, y, batch_size: int, epochs: int, device: str, **kw) -> float:
    """Seconds per step of a Lightning fit of a copy of ``base``; ``kw`` go to the Trainer."""
    m = copy.deepcopy(base)
    loader = TensorBatches(x, y, batch_size, shuffle=True, seed=0)
    clock = _TrainClock(device)
    accel = "gpu" if device == "cuda" else "cpu"
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=accel, devices=1, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock], **kw,
    )  # fmt: skip
    trainer.fit(m, train_dataloaders=loader)
    return clock.seconds / trainer.global_step


def _step_variants(kind: str, raw, lightning, root: str) -> dict:
    """The loops to time, by report label: raw, VTSS's inner fits, and (tabular) the
    Lightning configurations a user would run."""
    variants = {
        RAW_LOOP: raw,
        INNER_FIT: lambda: lightning(
            logger=False, enable_checkpointing=False, enable_progress_bar=False
        ),
    }
    if kind == "tabular":
        variants["Lightning, CSV logger, no bar"] = lambda: lightning(
            logger=pl.loggers.CSVLogger(root), enable_checkpointing=False, enable_progress_bar=False
        )
        variants["Lightning defaults (logger, checkpoint, progress bar)"] = lambda: lightning(
            default_root_dir=root
        )
    return variants


def _time_with_nvml_check(times: dict[str, list[float]], raw, inner, repeats: int) -> None:
    """Time VTSS's inner fits again with Lightning's NVML CUDA check on (what
    vtss_lightning._runtime saves), each paired with a fresh raw-loop timing."""
    saved = os.environ[NVML_CHECK]
    os.environ[NVML_CHECK] = "1"
    try:
        name = "Lightning, no logger/bar, with Lightning's NVML CUDA check"
        times[name] = [math.nan] * repeats  # paired by position with the raw timings
        for _ in range(repeats):
            times[RAW_LOOP].append(raw())
            times[name].append(inner())
    finally:
        os.environ[NVML_CHECK] = saved


def step_times(device: str, kind: str, epochs: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per optimizer step, per repeat: raw loop vs Lightning, same model and batches.

    The loops run interleaved (raw, then each Lightning variant, ``repeats`` times) so
    that drifting load hits them alike; the report uses per-repeat ratios to raw.
    """
    dm, template, _, _ = workload(kind, 0, device)
    x, y = dm.training_tensors(dm.sizes_for_ratio(1.0))
    loop = (template.to(x.device), x, y, dm.batch_size, epochs, device)
    raw = functools.partial(_raw_step_seconds, *loop)
    lightning = functools.partial(_lightning_step_seconds, *loop)
    variants = _step_variants(kind, raw, lightning, tempfile.mkdtemp(prefix="vtss_steps_"))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(fn())
    if kind == "tabular" and device == "cpu" and os.environ.get(NVML_CHECK) == "0":
        _time_with_nvml_check(times, raw, variants[INNER_FIT], repeats)
    n = len(times[RAW_LOOP])
    return {k: v + [math.nan] * (n - len(v)) for k, v in times.items()}


# ------------------------------------------------------------------ report
def grid_step(a: float, b: float) -> int:
    grid = sorted(set(DEFAULT_RATIOS) | {a, b})  # a ratio of an extended grid too
    return abs(grid.index(a) - grid.index(b))


def loss_gaps(seeds: list[dict], strategy: str) -> list[float]:
    """Per seed, the largest |strategy - retrain| candidate loss over the common ratios."""
    out = []
    for s in seeds:
        a, b = s["runs"]["retrain"]["losses"], s["runs"][strategy]["losses"]
        common = [r for r in a if r in b and a[r] is not None and b[r] is not None]
        out.append(max((abs(a[r] - b[r]) for r in common), default=math.nan))
    return out


def whole(run: dict) -> float:
    """Seconds of the whole run: the ``vtss fit`` command (quickstart), else search + final."""
    return run.get("wall", run["search"] + run["final"])


def title(kind: str) -> str:
    logistic = (
        f"Logistic regression (TabularClassifier(): L2 1/n, full-batch L-BFGS, max_epochs=1) on "
        f"`{TABLE['name']}`, "
    )
    mlp = f"Tabular MLP (64-64, AdamW, {EPOCHS['tabular']} epochs, batch 256) on the paper's linear design"
    return {
        "tabular": mlp,
        "mlp_5fold": mlp.replace(f"{EPOCHS['tabular']} epochs", f"{EPOCHS['mlp_5fold']} epochs")
        + ", 5-fold",
        "digits": f"Digits CNN (ImageClassifier width 16, depth 2, {EPOCHS['digits']} epochs, "
        "batch 64), digit 8 vs rest",
        "logistic": logistic + "hold-out",
        "logistic_5fold": logistic + "5-fold",
        "logistic_5x5": logistic + "5x5-fold (25 splits)",
        "quickstart": "Quickstart: `vtss fit --config configs/quickstart.yaml` (logistic regression "
        "`hidden_dims: []`, L-BFGS, weight_decay 0.01, breast_cancer, SMOTE k=5, 5-fold)",
    }[kind]


def section(kind: str, seeds: list[dict]) -> str:
    one = [s["one_fit"] for s in seeds]
    quick = kind == "quickstart"
    if quick:
        inner = [s["inner_fit"] for s in seeds]
        reference = (
            f"One plain fit (full balance, the config's Trainer with its logger and checkpoint, "
            f"no VTSS, the final fit's rows: all {seeds[0]['rows']} development rows and the "
            f"synthetic rows of full balance): median "
            f"{np.median(one):.2f} s over seeds (range {min(one):.2f}-{max(one):.2f} s); an "
            f"inner fit (no logger or checkpoint, the hold-out's training rows: the other "
            f"sections' reference) {np.median(inner):.2f} s. Whole run = the whole `vtss fit` "
            "in-process (parsing, data, generators, search, fidelity check, final fit, report "
            "and curve); seed s adds `--seed_everything s --data.init_args.seed s "
            "--vtss.seed s`, retrain `--vtss.strategy retrain`."
        )
        head = (
            "| strategy | whole `vtss fit` / one fit: median [min, max] | search + final / one "
            "fit | search s (median) | fidelity s | final model s (median) | rest s (CLI, data, "
            "report) | same ratio as retrain | within one grid step |"
        )
        rule = "|---|---|---|---|---|---|---|---|---|"
    else:
        reference = (
            f"One plain fit (full balance): median {np.median(one):.2f} s over seeds "
            f"(range {min(one):.2f}-{max(one):.2f} s)."
        )
        head = (
            "| strategy | whole run / one fit: median [min, max] | search s (median) | final "
            "model s (median) | same ratio as retrain | within one grid step |"
        )
        rule = "|---|---|---|---|---|---|"
    lines = [f"### {title(kind)}", "", reference, "", head, rule]
    ran = [k for k in ORDER if k in seeds[0]["runs"]]
    n = len(seeds)
    for strategy in ran:
        runs = [s["runs"][strategy] for s in seeds]
        pairs = list(zip(runs, seeds, strict=True))
        ratios = [whole(r) / s["one_fit"] for r, s in pairs]
        exact = sum(r["ratio"] == s["runs"]["retrain"]["ratio"] for r, s in pairs)
        near = sum(grid_step(r["ratio"], s["runs"]["retrain"]["ratio"]) <= 1 for r, s in pairs)
        cells = [
            LABELS.get(strategy, strategy),
            f"{np.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]",
        ]
        if quick:
            fit = [(r["search"] + r["final"]) / s["one_fit"] for r, s in pairs]
            rest = [r["wall"] - r["search"] - r["fidelity"] - r["final"] for r in runs]
            cells += [f"{np.median(fit):.2f}", f"{np.median([r['search'] for r in runs]):.2f}"]
            cells += [f"{np.median([r['fidelity'] for r in runs]):.2f}"]
            cells += [f"{np.median([r['final'] for r in runs]):.2f}", f"{np.median(rest):.2f}"]
        else:
            cells += [f"{np.median([r['search'] for r in runs]):.1f}"]
            cells += [f"{np.median([r['final'] for r in runs]):.1f}"]
        cells += [f"{exact}/{n}", f"{near}/{n}"]
        lines.append("| " + " | ".join(cells) + " |")
    fallbacks = {s["runs"][k]["fallback"] for s in seeds for k in ran} - {None}
    if fallbacks:
        lines += ["", f"Fallbacks: {sorted(fallbacks)}"]
    if quick:
        schemes = sorted({str(s["runs"][k].get("validation")) for s in seeds for k in ran})
        ks = sorted({s["runs"][k]["k"] for s in seeds for k in ran})
        lines += ["", f"Validation (from the reports): {', '.join(schemes)}; candidates K: {ks}."]
    picks = ", ".join(f"{k}: " + " ".join(f"{s['runs'][k]['ratio']:g}" for s in seeds) for k in ran)
    lines += ["", f"Selected ratios per seed — {picks}."]
    for strategy in (k for k in STACKED if k in ran):
        gaps = loss_gaps(seeds, strategy)
        lines += [
            "",
            f"Largest |{strategy} - retrain| candidate balanced loss per seed: median "
            f"{np.median(gaps):.1e}, max {max(gaps):.1e}.",
        ]
    lines.append("")
    return "\n".join(lines)


#: Issue 15's CPU targets: (workload, whole run / one fit at most); selection must match
#: retrain's on at least 9 seeds in 10.
TARGETS = (("logistic_5fold", 5.0), ("tabular", 2.5))
AGREEMENT = 0.9


def targets_section(done: dict[str, list[dict]]) -> str:
    """Each CPU target of issue 15 against this run's medians, met or missed."""
    lines = []
    for kind, bound in TARGETS:
        seeds = done.get(kind) or []
        for strategy in (k for k in STACKED if seeds and k in seeds[0]["runs"]):
            pairs = [(s["runs"][strategy], s) for s in seeds]
            ratio = float(np.median([whole(r) / s["one_fit"] for r, s in pairs]))
            same = sum(r["ratio"] == s["runs"]["retrain"]["ratio"] for r, s in pairs)
            met = ratio <= bound and same >= AGREEMENT * len(seeds)
            lines.append(
                f"| {title(kind)} | {LABELS.get(strategy, strategy)} | <= {bound:g}x, same "
                f"ratio in >= {AGREEMENT:.0%} of seeds | {ratio:.2f}x, {same}/{len(seeds)} | "
                f"{'met' if met else 'MISSED'} |"
            )
    if not lines:
        return ""
    head = [
        "## Issue 15 targets (CPU; medians over this run's seeds)",
        "",
        "| workload | strategy | target | this run | |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n"


def steps_section(kind: str, times: dict[str, list[float]], epochs: int) -> str:
    raw = np.asarray(times[RAW_LOOP])
    lines = [
        f"### Lightning loop vs raw PyTorch loop ({STEP_WORKLOADS[kind]}, full-balance set, "
        f"{epochs} epochs per timing, {len(times[RAW_LOOP])} raw timings)",
        "",
        "| loop | ms / step: median | vs raw: median of paired ratios [IQR] | fastest / fastest raw |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        v = np.asarray(values)
        ok = ~np.isnan(v)
        paired = v[ok] / raw[ok]
        q1, q3 = np.percentile(paired, [25, 75])
        lines.append(
            f"| {name} | {np.median(v[ok]) * 1e3:.3f} | {np.median(paired):.2f}x "
            f"[{q1:.2f}, {q3:.2f}] | {v[ok].min() / raw.min():.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--workloads", default="tabular,digits", help=", ".join(WORKLOADS))
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of tabular/mlp_5fold/digits (smoke runs)"
    )
    parser.add_argument("--table", default="breast_cancer", help="built-in table (logistic)")
    parser.add_argument("--step-epochs", type=int, default=4, help="epochs per step timing")
    parser.add_argument("--step-repeats", type=int, default=9, help="interleaved step timings")
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="comma list; retrain is always run; also: " + ", ".join(OPTIONAL),
    )
    parser.add_argument("--steps-only", action="store_true", help="only the loop comparison")
    parser.add_argument("--out", type=Path, default=RESULTS / "search_cost.md")
    args = parser.parse_args()
    wanted = {"retrain", *args.strategies.split(",")}
    unknown = wanted - set(ORDER) | set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown strategies or workloads: {sorted(unknown)}")
    strategies = tuple(k for k in ORDER if k in wanted)
    TABLE["name"] = args.table
    if args.epochs is not None:
        EPOCHS.update(dict.fromkeys(EPOCHS, args.epochs))
    quiet()
    single_thread(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    steps = {  # the loop comparison is about mini-batch steps: not the L-BFGS workloads
        kind: step_times(args.device, kind, args.step_epochs, args.step_repeats)
        for kind in args.workloads.split(",")
        if kind in STEP_WORKLOADS
    }
    done: dict[str, list[dict]] = {}
    if args.steps_only:
        write_report(args, steps, done, load_before, start)
        return
    for kind in args.workloads.split(","):
        done[kind] = []
        for s in range(args.seed, args.seed + args.seeds):
            done[kind].append(run_seed(kind, s, args.device, args.eta, strategies))
            r = done[kind][-1]["runs"]
            print(kind, s, {k: round(whole(v) / done[kind][-1]["one_fit"], 2) for k, v in r.items()},
                  {k: v["ratio"] for k, v in r.items()}, flush=True)  # fmt: skip
            write_report(args, steps, done, load_before, start)  # partial results survive a kill


def write_report(args, steps, done, load_before, start) -> None:
    parts = [section(kind, seeds) for kind, seeds in done.items() if seeds]
    load_after = os.getloadavg()
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    busy = load_before[0] > 1.0 or load_after[0] > torch.get_num_threads() + 1.0
    load_note = (
        "**Load caveat:** the machine was shared with other jobs while this ran (see the "
        "load averages above); absolute seconds are inflated and noisy, the ratios less so "
        "(strategy and reference fit interleaved per seed). Rerun on a quiet machine."
        if busy
        else "The machine ran nothing else (load averages above: this benchmark's own). "
        "Timings on this VM still vary by 10-30% between repeats, hence medians, ranges and "
        "interleaving (each strategy is timed right after its own reference fit)."
    )
    gpu_note = (
        "GPU: not available on this machine; run `benchmarks/gpu_search_cost.sh` on a CUDA "
        "machine (writes `benchmarks/results/search_cost_gpu.md`; target <= 1.5x one fit)."
        if args.device == "cpu"
        else f"GPU: {torch.cuda.get_device_name()}."
    )
    text = "\n".join(
        [
            "# Search cost per strategy (issue 5)",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine() if args.device == 'cpu' else torch.cuda.get_device_name()}  ",
            f"Date: {today()}; wall time {time.perf_counter() - start:.0f} s; 1-min load "
            f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after.",
            "",
            "Whole run = search + final model; one fit = a Lightning fit of the same model "
            "at full balance, timed in the same process before each strategy (median). "
            "K = 9 (default grid 0, .5, .75, .9, 1, 1.1, 1.25, 1.5, 2); halving eta = "
            f"{args.eta:g}; the pool is drawn before timing (same for every strategy). "
            "Agreement: the selected ratio vs retrain's on the same seed. "
            "`parallel` replays retrain per candidate but draws different dropout masks, so "
            "its losses equal retrain's only without dropout; `snapshot=best` scores each "
            "candidate at its best epoch by validation loss instead of its last.",
            "",
            load_note,
            "",
            gpu_note,
            "",
            targets_section(done),
            *(steps_section(kind, t, args.step_epochs) for kind, t in steps.items()),
            *parts,
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
