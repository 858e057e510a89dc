"""The Markdown report of ``benchmarks/real_data.py`` (aggregation and tables only)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pandas as pd
from _common import machine, today

#: Paired references: full balance on the hold-out's training rows (the issue's row)
#: and on all training rows (what plain full balancing without a search would train on).
REFERENCES = {"full": "full balance", "full_all": "full balance, all rows"}
VTSS_ROWS = ("none", "full", "defaults", "cv5x5", "paired")
SKLEARN_ROWS = ("smote_lr", "class_weight", "logit_adjust", "tuned_threshold")
METRICS = (
    ("balanced_log_loss", "Balanced test log loss", True),
    ("balanced_accuracy", "Balanced accuracy", False),
    ("auprc", "Minority-class AUPRC", False),
)
TIE = 1e-9


def package_defaults() -> list[str]:
    """The settings a user gets without arguments, read when the benchmark runs."""
    from vtss_lightning import TabularDataModule
    from vtss_lightning.generators import SMOTEGenerator
    from vtss_lightning.models import TabularClassifier
    from vtss_lightning.search.config import SearchConfig
    from vtss_lightning.search.grid import DEFAULT_RATIOS

    dm = {
        k: p.default
        for k, p in inspect.signature(TabularDataModule.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and k not in ("path", "target", "dataset")
    }
    return [
        f"- `SearchConfig()`: `{SearchConfig().to_dict()}`",
        f"- `TabularClassifier()` hparams: `{dict(TabularClassifier().hparams)}`",
        f"- `TabularDataModule` defaults: `{dm}`",
        f"- Generator: `{SMOTEGenerator(k_neighbors=5)!r}`; `DEFAULT_RATIOS` = `{list(DEFAULT_RATIOS)}`",
    ]


def _present(frame: pd.DataFrame, labels: dict) -> list[str]:
    have = set(frame["method"])
    return [k for k in labels if k in have]


def _pivot(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(table, split) × method values of one metric (failed methods: NaN columns)."""
    wide = frame.pivot_table(index=["table", "split"], columns="method", values=metric)
    return wide.reindex(columns=sorted(set(frame["method"])))


def _se(values) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan


def _wlt(diff_by_table: pd.Series, lower_better: bool) -> str:
    d = diff_by_table.dropna() * (1 if lower_better else -1)
    return f"{int((d < -TIE).sum())}/{int((d > TIE).sum())}/{int((d.abs() <= TIE).sum())}"


def summary_table(frame: pd.DataFrame, labels: dict, metric: str, lower: bool) -> list[str]:
    """Mean per method and paired differences against each reference in ``REFERENCES``."""
    wide = _pivot(frame, metric)
    refs = [r for r in REFERENCES if r in wide]
    head = "| method | mean | " + " | ".join(
        f"Δ vs {REFERENCES[r]} ± SE (pairs) | Δ ± SE (tables) | W/L/T (tables)" for r in refs
    )
    lines = [head + " | pairs |", "|---|---|" + "---|---|---|" * len(refs) + "---|"]
    for key in _present(frame, labels):
        col = wide[key]
        cells = [f"{col.mean():.4f}"]
        for ref in refs:
            if key == ref:
                cells += ["—", "—", "—"]
                continue
            diff = col - wide[ref]
            per_table = diff.groupby(level="table").mean()
            cells += [
                f"{diff.mean():+.4f} ± {_se(diff):.4f}",
                f"{per_table.mean():+.4f} ± {_se(per_table):.4f}",
                _wlt(per_table, lower),
            ]
        cells.append(str(int(col.notna().sum())))
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    return lines


def best_sklearn(frame: pd.DataFrame) -> str | None:
    wide = _pivot(frame, "balanced_log_loss")
    have = [k for k in SKLEARN_ROWS if k in wide and wide[k].notna().any()]
    return min(have, key=lambda k: wide[k].mean()) if have else None


def per_table(frame: pd.DataFrame, labels: dict, constant: float) -> list[str]:
    sk = best_sklearn(frame)
    cols = [k for k in ("none", "full", "defaults", "paired", "cv5x5") if k in set(frame["method"])]
    cols += [k for k in (sk, "oracle_holdout", "oracle") if k and k in set(frame["method"])]
    loss = frame.groupby(["table", "method"])["balanced_log_loss"].mean().unstack()
    choice = frame.groupby(["table", "method"])["choice"].mean().unstack()
    size = frame.groupby("table")[["n_train", "n_minority_train"]].first()
    lines = [
        "| table | train rows (minority) | " + " | ".join(labels[k] for k in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for table in loss.index:
        cells = []
        for k in cols:
            v = loss.at[table, k]
            cell = f"{v:.4f}"
            if k in VTSS_ROWS and not v < constant:
                cell += " ▲"
            if k in ("defaults", "paired", "cv5x5", "oracle_holdout", "oracle"):
                cell += f" (γ {choice.at[table, k]:.2f})"
            cells.append(cell)
        n, m = size.loc[table]
        lines.append(f"| {table} | {n} ({m}) | " + " | ".join(cells) + " |")
    below = [
        f"{labels[k]} {int((loss[k] < constant).sum())}/{int(loss[k].notna().sum())}"
        for k in VTSS_ROWS
        if k in loss
    ]
    lines += ["", "Tables whose mean loss is below the constant predictor's: " + ", ".join(below)]
    return lines


def timing(frame: pd.DataFrame) -> list[str]:
    per = frame.drop_duplicates(["table", "split", "unit"])
    t = per.groupby("unit")["seconds"].agg(["mean", "median", "max", "sum"])
    t = t.reindex([u for u in dict.fromkeys(per["unit"]) if u in t.index])
    lines = [
        "| method (unit of work) | mean s per (table, split) | median | max | total s |",
        "|---|---|---|---|---|",
    ]
    for unit, r in t.iterrows():
        lines.append(
            f"| {unit} | {r['mean']:.2f} | {r['median']:.2f} | {r['max']:.2f} | {r['sum']:.0f} |"
        )
    pairs = per.groupby(["table", "split"])["seconds"].sum()
    lines.append(
        f"| **all methods** | {pairs.mean():.2f} | {pairs.median():.2f} | {pairs.max():.2f} | {pairs.sum():.0f} |"
    )
    return lines


def checks(frame: pd.DataFrame) -> list[str]:
    """Our metrics against the callback's own ``test_metrics``; failures."""
    out = []
    if "pkg_balanced_log_loss" in frame:
        v = frame.dropna(subset=["pkg_balanced_log_loss"])
        gap = (v["pkg_balanced_log_loss"] - v["balanced_log_loss"]).abs().max()
        auprc = int(((v["pkg_auprc"] - v["auprc"]).abs() > 1e-4).sum())
        out.append(
            f"- Cross-check, VTSS rows: largest |callback `test_metrics['balanced_log_loss']` − "
            f"ours| = {gap:.1e}; the callback's `auprc` differs from the minority-class AUPRC "
            f"in {auprc} of {len(v)} fits (where its positive class is not the minority)."
        )
    if "validation" in frame:
        v = frame[frame["method"] == "defaults"]
        schemes = v["validation"].fillna("?").value_counts().to_dict()
        extended = int((v["grid_extended_to"].fillna("").astype(str) != "").sum())
        out.append(
            f"- Shipped defaults: validation scheme per fit {schemes}; grid extended in "
            f"{extended} of {len(v)} fits."
        )
    bad = frame[frame["error"].fillna("").astype(str) != ""]
    for _, r in bad.drop_duplicates(["table", "split", "unit"]).iterrows():
        out.append(f"- Failed: {r['table']} split {r['split']} `{r['unit']}`: {r['error']}")
    return out


def reused_rows(frame) -> list[str]:
    """A line naming the rows taken from an earlier run (``--reuse``), if any."""
    if "source" not in frame:
        return []
    old = frame[frame["source"] != "this run"]
    if old.empty:
        return []
    parts = [
        f"{method} ({len(group)} rows)" for method, group in old.groupby("method", sort=False)
    ]
    return [
        f"- Rows reused from `{old['source'].iloc[0]}` (an earlier run with the code of its "
        f"own date, not rerun here): {', '.join(parts)}"
    ]


def write_report(path: Path, frame, command: str, wall: float, args, labels, doc: str) -> None:
    constant = math.log(2)
    intro = doc.split("Usage::")[0].strip().split("\n\n", 1)[1]
    tables = sorted(set(frame["table"]))
    sk = best_sklearn(frame)
    lines = [
        "# VTSS against full balancing on real imbalanced tables (KEEL)",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}",
        f"- Date: {today()}; wall {wall:.0f} s ({args.jobs} worker process(es))",
        f"- Tables: {len(tables)}; splits per table: {args.splits} (seeds {args.seed}–"
        f"{args.seed + args.splits - 1}); raw results: `{path.with_suffix('.csv').name}`",
        *reused_rows(frame),
        "- Package defaults at run time:",
        *("  " + ln for ln in package_defaults()),
        "",
        intro,
        "",
        f"Constant predictor (p = ½): balanced log loss log 2 = {constant:.4f}. Δ: method − "
        "reference (full balance on the hold-out's training rows, and on all training rows), "
        "paired per (table, split); SE over pairs (which treats the splits of a "
        "table as independent) and over tables (per-table mean differences). W/L/T: tables "
        "where the method's mean over splits is better / worse / equal. Oracles pick the ratio "
        "by test loss; their accuracy and AUPRC are those of that ratio.",
        "",
    ]
    for metric, title, lower in METRICS:
        better = "lower" if lower else "higher"
        lines += [f"## {title} ({better} is better)", ""]
        lines += [*summary_table(frame, labels, metric, lower), ""]
    lines += [
        "## Balanced test log loss per table (mean over splits)",
        "",
        f"Best scikit-learn baseline by mean loss: {labels.get(sk, '—')}. ▲: a VTSS row "
        f"whose loss is not below the constant predictor's ({constant:.4f}). γ: mean chosen ratio.",
        "",
        *per_table(frame, labels, constant),
        "",
        "## Time per (table, split)",
        "",
        "Wall seconds of each unit of work (`oracle`: one fit per oracle ratio on all training "
        "rows, giving three rows; `oracle_holdout`: the same on the hold-out rows; VTSS rows: "
        "the search plus the final fit).",
        "",
        *timing(frame),
        "",
        "## Checks",
        "",
        *(checks(frame) or ["- none"]),
        "",
    ]
    path.write_text("\n".join(lines))
