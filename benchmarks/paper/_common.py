"""Helpers shared by the paper-reproduction scripts in ``benchmarks/paper``.

Kept deliberately small: quiet Lightning, Monte-Carlo summaries, the machine line,
a ``RetrainScorer`` that also records test losses, a callback that captures the
model's initial weights (so the test-loss curve re-trains from exactly the weights
the VTSS search used, random Fourier features included), direct fits of a
``TabularClassifier`` on arrays, and writing one section of ``results/paper.md``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from vtss_lightning.data.loaders import TensorBatches
from vtss_lightning.search import SearchEngine
from vtss_lightning.search.objective import balanced_loss
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings, clone_module

RESULTS = Path(__file__).resolve().parents[1] / "results"
PAPER_MD = RESULTS / "paper.md"

#: Section order in ``results/paper.md``.
SECTIONS = ("header", "exp1", "exp2", "exp3", "exp4", "exp5", "exp5b", "exp6", "exp7")


def quiet() -> None:
    """Keep the per-Trainer banners and known-harmless warnings out of the output."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isn't part of the.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")


def single_thread(threads: int = 1) -> None:
    """The machine is shared: run torch single-threaded unless told otherwise."""
    torch.set_num_threads(max(1, threads))


def mean_se(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se


def fmt(m: float, se: float = math.nan, digits: int = 4) -> str:
    if math.isnan(se):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def fmt_sci(m: float, se: float = math.nan) -> str:
    if math.isnan(se):
        return f"{m:.2e}"
    return f"{m:.2e} ± {se:.1e}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return (
        f"{cpu_model()}; {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"pytorch_lightning {pl.__version__}; CPU only"
    )


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def ratio_grid(stop: float, step: float) -> list[float]:
    n = int(round(stop / step))
    return sorted({round(min(stop, i * step), 10) for i in range(n + 1)} | {float(stop)})


def trainer(callbacks=(), max_epochs: int = 1, root: str | None = None) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=root or tempfile.gettempdir(),
        callbacks=list(callbacks),
    )


class InitCapture(Callback):
    """Keeps a copy of the module as it enters ``fit`` (built, untrained).

    Put it *before* ``VTSSCallback`` in the callback list: ``configure_model`` has run
    by then (random Fourier features drawn), and nothing has trained yet.
    """

    def __init__(self) -> None:
        self.template: pl.LightningModule | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.template = clone_module(pl_module)


class TestRecordingScorer(RetrainScorer):
    """A ``RetrainScorer`` that also records each trained candidate's test loss
    (and, optionally, any other function of the trained model)."""

    def __init__(self, template, settings, seed: int = 0, extra=None) -> None:
        super().__init__(template, settings, seed)
        self.extra = extra
        self.records: list[tuple[dict[int, int], float, float, float]] = []

    def score(self, dm, sizes: Mapping[int, int]) -> float:
        model = self.fit(clone_module(self.template), dm, sizes)
        val = self.evaluate(model, dm)
        test = balanced_loss(model, dm.x_test, dm.y_test, dm.num_classes)
        other = math.nan if self.extra is None else float(self.extra(model))
        self.records.append((dict(sizes), val, test, other))
        return val


def holdout_curve(dm, template, trainer_used: pl.Trainer, ratios, seed: int, extra=None):
    """Re-train ``template`` at every ratio on the DataModule's hold-out training split.

    Returns ``(ratios, val_losses, test_losses, extra_values)``.
    """
    scorer = TestRecordingScorer(template, TrainerSettings.from_trainer(trainer_used), seed, extra)
    curve = SearchEngine(ratios, verbose=False).run(dm, scorer)
    if len(scorer.records) != len(curve.candidates):
        raise RuntimeError("curve scorer and engine disagree on the candidates")
    return (
        [float(c.ratio) for c in curve.candidates],
        [r[1] for r in scorer.records],
        [r[2] for r in scorer.records],
        [r[3] for r in scorer.records],
    )


def fit_arrays(model: pl.LightningModule, x, y, max_epochs: int = 1, seed: int = 0):
    """Train ``model`` (already built) by plain ERM on the given rows, full batch if
    the model asks for it, in a quiet single-device CPU Trainer."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    full = bool(getattr(model, "full_batch", False))
    loader = TensorBatches(x, y, batch_size=None if full else 256, shuffle=True, seed=seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(
            max_epochs=max_epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        ).fit(model, train_dataloaders=loader)
    return model


def write_section(key: str, text: str, path: Path = PAPER_MD) -> None:
    """Replace (or insert, in :data:`SECTIONS` order) one section of ``paper.md``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    parts: dict[str, str] = {}
    for m in re.finditer(r"<!-- BEGIN (\w+) -->\n(.*?)<!-- END \1 -->\n", old, re.S):
        parts[m.group(1)] = m.group(2)
    parts.setdefault("header", HEADER)
    parts.setdefault("exp7", EXP7)
    parts[key] = text.rstrip("\n") + "\n"
    keys = [k for k in SECTIONS if k in parts] + sorted(k for k in parts if k not in SECTIONS)
    path.write_text("\n".join(f"<!-- BEGIN {k} -->\n{parts[k]}<!-- END {k} -->\n" for k in keys))


HEADER = """# Paper experiments (Ma & Zhang, arXiv 2601.16120) reproduced with vtss-lightning

One section per experiment, each written by its own script in `benchmarks/paper/`
(`expN_*.py --reps R`). Every section gives the published figure beside ours
(mean ± Monte-Carlo standard error over our repetitions), the exact command, the
machine and the date, and a PNG of the loss-versus-size curves in this folder.
Default `--reps` are small so that all scripts finish in about half an hour on a
shared 2-core CPU; `--reps 100` is the full run. Experiment 1 also has its own
report, `paper_linear.md` (`benchmarks/paper/exp1_linear.py`).
"""

EXP7 = """## Experiment 7: MIMIC-III (not reproduced)

Experiment 7 (MIMIC-III mortality, severe sepsis / septic shock, septic shock) needs
credentialed PhysioNet data, which cannot be shipped or downloaded here; the paper
publishes no numbers for it either. `benchmarks/selection_rules.py` runs the same
protocol (stratified splits, 5×5 repeated CV for the size, logistic regression) on
the bundled real datasets instead.
"""


def plot_curves(
    path: Path,
    title: str,
    ratios,
    curves,
    ylabel: str,
    published=(),
    selected=None,
    vtss=None,
    logy: bool = False,
    xlabel: str = "synthetic ratio γ = ñ / (n0 − n1)",
) -> None:
    """Mean curves ± 1 SE (left) and a histogram of the selected ratios (right).

    ``curves``: ``[(label, array reps × ratios), ...]``; ``published``: ``[(x or None,
    y, label), ...]`` drawn as crosses (or horizontal lines when x is None);
    ``vtss``: ``(x, y, yerr, label)`` for the VTSS final model.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ratios = np.asarray(ratios, dtype=float)
    ncols = 2 if selected is not None else 1
    fig, axes = plt.subplots(
        1,
        ncols,
        figsize=(6.5 * ncols + 1, 4.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.6, 1][:ncols]},
    )
    ax = axes[0, 0]
    for i, (label, arr) in enumerate(curves):
        arr = np.asarray(arr, dtype=float)
        m = arr.mean(0)
        se = arr.std(0, ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else np.zeros_like(m)
        ax.plot(ratios, m, color=f"C{i}", label=label)
        ax.fill_between(ratios, m - se, m + se, color=f"C{i}", alpha=0.25, lw=0)
    for j, (x, y, label) in enumerate(published):
        if x is None:
            ax.axhline(y, color="k", ls=["--", ":", "-."][j % 3], lw=1, label=label)
        else:
            ax.plot([x], [y], "x", color="k", ms=8, mew=2 - (j % 2), label=label)
    if vtss is not None:
        x, y, yerr, label = vtss
        ax.errorbar(
            [x], [y], yerr=[0 if math.isnan(yerr) else yerr], fmt="o", color="C3", label=label
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    if selected is not None:
        hx = axes[0, 1]
        step = float(np.min(np.diff(ratios))) if len(ratios) > 1 else 0.1
        edges = np.append(ratios - step / 2, ratios[-1] + step / 2)
        edges = np.unique(np.concatenate([ratios - step / 2, [ratios[-1] + step / 2]]))
        hx.hist(selected, bins=edges, color="C3", alpha=0.8)
        hx.yaxis.set_major_locator(MaxNLocator(integer=True))
        hx.set_xlabel("selected ratio γ")
        hx.set_ylabel("repetitions")
        hx.set_title("VTSS selected ratio")
        hx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class PlusMinusSquared:
    """Mixin marker; see :func:`pm_squared_classifier`."""


def pm_squared_classifier(**kwargs):
    """``TabularClassifier(loss="mse", fit_intercept=False)`` coded as the paper's
    ±1 squared loss: the output is ``½ + wᵀx`` against 0/1 labels, i.e.
    ``(½ + wᵀx − y)² = ¼ (θᵀx − t)²`` with ``t = 2y − 1 ∈ {−1, +1}`` and ``θ = 2w``.

    The package's own ``fit_intercept=False`` squared loss predicts ``wᵀx`` against 0/1
    labels, which is the ±1 problem only when the majority class has mean zero (the
    paper's experiments 3-4) — not for experiment 5's ∓μ design.
    """
    from vtss_lightning.models import TabularClassifier

    class PMSquaredClassifier(TabularClassifier, PlusMinusSquared):
        def forward(self, x):
            s = super().forward(x)
            return torch.cat([s[:, :1], s[:, 1:] + 0.5], dim=1)

    return PMSquaredClassifier(loss="mse", fit_intercept=False, weight_decay=0.0, **kwargs)


def linear_weight(model) -> np.ndarray:
    """Weight vector of a binary linear ``TabularClassifier`` (no hidden layers)."""
    return model.net[-1].weight.detach().cpu().double().numpy().reshape(-1)


class ArrayGenerator:
    """Mixin helpers for benchmark generators that sample a known law with numpy."""

    @staticmethod
    def rng(seed: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
