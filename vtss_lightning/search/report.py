"""The search result: what was tried, what won, and the files a user reads."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_NAME = "vtss_report.json"
CURVE_NAME = "vtss_curve.png"


@dataclass
class CandidateResult:
    """One candidate size and its balanced validation loss (mean over splits)."""

    ratio: float | None
    sizes: dict[str, int]
    val_balanced_loss: float | None
    fold_losses: list[float | None] = field(default_factory=list)
    seconds: float = 0.0
    status: str = "ok"
    #: The generator whose pool the candidate drew from, by its report label, in a
    #: search over several generators (``None``: the DataModule's one generator).
    generator: str | None = None

    @property
    def total_size(self) -> int:
        return sum(self.sizes.values())


@dataclass
class VTSSResult:
    """Outcome of a VTSS search, serialisable to ``vtss_report.json``.

    Sizes are keyed by the class label as text (``{"malignant": 240}``); the class
    indices the DataModule uses are kept in ``selected_index_sizes``.
    """

    candidates: list[CandidateResult]
    selected_ratio: float | None
    selected_sizes: dict[str, int]
    selected_index_sizes: dict[int, int]
    test_metrics: dict[str, float] | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    #: Rows per class index the hold-out's pool is drawn with (the grid's largest
    #: candidate): the final fit draws the same pool, so its rows are the candidate's.
    pool_index_sizes: dict[int, int] = field(default_factory=dict)
    #: ``"all"``: the final model trains on every development row (after K-fold), at
    #: ``final_index_sizes`` (the selected ratio of those rows' gaps); ``"train"``: on
    #: the hold-out's training rows at ``selected_index_sizes``.
    final_rows: str = "train"
    final_index_sizes: dict[int, int] = field(default_factory=dict)
    #: Weights of the winner when the search trained it with the final settings (not
    #: serialised; the callback loads them instead of refitting).
    final_state: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: The winning generator's label when the DataModule listed several (its
    #: ``diagnostics["generators"]`` entry has every generator's own winner).
    selected_generator: str | None = None

    @property
    def selected(self) -> CandidateResult:
        return next(
            c
            for c in self.candidates
            if c.sizes == self.selected_sizes and c.generator == self.selected_generator
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "selected_ratio": self.selected_ratio,
            "selected_sizes": dict(self.selected_sizes),
            "selected_generator": self.selected_generator,
            "candidates": [asdict(c) for c in self.candidates],
            "diagnostics": self.diagnostics,
            "timing": self.timing,
            "config": self.config,
            "selected_index_sizes": {str(k): v for k, v in self.selected_index_sizes.items()},
            "pool_index_sizes": {str(k): v for k, v in self.pool_index_sizes.items()},
            "final_rows": self.final_rows,
            "final_index_sizes": {str(k): v for k, v in self.final_index_sizes.items()},
        }
        if self.test_metrics is not None:
            out["test_metrics"] = self.test_metrics
        return _finite_or_none(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VTSSResult:
        return cls(
            candidates=[CandidateResult(**c) for c in data["candidates"]],
            selected_ratio=data["selected_ratio"],
            selected_sizes=dict(data["selected_sizes"]),
            selected_index_sizes=_by_index(data["selected_index_sizes"]),
            test_metrics=data.get("test_metrics"),
            diagnostics=data.get("diagnostics", {}),
            timing=data.get("timing", {}),
            config=data.get("config", {}),
            pool_index_sizes=_by_index(data.get("pool_index_sizes", {})),
            final_rows=data.get("final_rows", "train"),
            final_index_sizes=_by_index(data.get("final_index_sizes", {})),
            selected_generator=data.get("selected_generator"),
        )

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON; with ``path`` also written there atomically (a failed
        write, e.g. a full disk, leaves no half report behind)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False)
        if path is not None:
            path = Path(path)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(text + "\n")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return text

    def plot(self, path: str | Path | None = None):
        """Balanced validation loss against synthetic size, the chosen point marked."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ok = [c for c in self.candidates if c.val_balanced_loss is not None]
        use_ratio = all(c.ratio is not None for c in ok)

        def x_of(c: CandidateResult) -> float:
            return c.ratio if use_ratio else c.total_size

        fig, ax = plt.subplots(figsize=(6, 4))
        curves = _by_generator(ok)
        for n, (label, cands) in enumerate(curves.items()):
            color = f"C{n}"
            name = "balanced validation loss" if label is None else label
            xs, ys = [x_of(c) for c in cands], [c.val_balanced_loss for c in cands]
            ax.plot(xs, ys, "o-", color=color, label=name, markersize=4 if len(curves) > 1 else 6)
            spreads = [_sd(c.fold_losses) for c in cands]
            if any(s > 0 for s in spreads):
                alpha = 0.4 if len(curves) == 1 else 0.2
                ax.errorbar(xs, ys, yerr=spreads, fmt="none", ecolor=color, alpha=alpha)
        sel = self.selected
        which = "" if self.selected_generator is None else f"{self.selected_generator}, "
        ax.plot(
            [x_of(sel)],
            [sel.val_balanced_loss],
            "*",
            color="tab:red",
            markersize=16,
            label=f"selected: {which}{_fmt_sizes(self.selected_sizes)}",
        )
        if use_ratio:
            ax.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="full balance")
        ax.set_xlabel(
            "synthetic ratio (share of each class's gap)" if use_ratio else "synthetic rows"
        )
        ax.set_ylabel("balanced validation log loss")
        ax.set_title("VTSS: validation-tuned synthetic size")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``vtss_report.json`` and ``vtss_curve.png`` into ``directory``."""
        import matplotlib.pyplot as plt

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        report, curve = directory / REPORT_NAME, directory / CURVE_NAME
        plt.close(self.plot(curve))  # the curve first: a report on disk means both were written
        self.to_json(report)
        return report, curve

    def final_rows_line(self) -> str | None:
        """What the final fit trains on, when it is not the hold-out's training rows."""
        final = self.diagnostics.get("final_rows")
        if not final or final.get("rows") != "all":
            return None
        return (
            f"VTSS final model: all {final['n_rows']} development rows at sizes "
            f"{_fmt_sizes(final['sizes'])} ({final['reason']})"
        )

    def summary(self) -> str:
        sel = self.selected
        ratio = "" if self.selected_ratio is None else f"ratio {self.selected_ratio:g}, "
        which = "" if self.selected_generator is None else f"generator {self.selected_generator}, "
        loss = "n/a" if sel.val_balanced_loss is None else f"{sel.val_balanced_loss:.4f}"
        lines = [
            f"VTSS selected {which}{ratio}sizes {_fmt_sizes(self.selected_sizes)} "
            f"(balanced val loss {loss} over {len(self.candidates)} candidates, "
            f"{self.diagnostics.get('validation', 'holdout')})"
        ]
        if self.diagnostics.get("generators"):
            lines.append(generators_line(self.diagnostics["generators"]))
        if self.diagnostics.get("grid_extended_to"):
            grown = ", ".join(f"{r:g}" for r in self.diagnostics["grid_extended_to"])
            lines.append(f"VTSS: the largest size kept winning; the grid was extended to {grown}")
        if self.diagnostics.get("curve"):
            lines.append(f"VTSS: the curve is {self.diagnostics['curve']}")
        if self.final_rows_line():
            lines.append(self.final_rows_line())
        adjusted = self.diagnostics.get("comparators", {}).get("logit_adjustment")
        if adjusted:
            verdict = "beats" if adjusted["beats_selected"] else "does not beat"
            lines.append(
                "VTSS comparator: logit adjustment without synthetic rows scores "
                f"{adjusted['val_balanced_loss']:.4f} on the same validation rows "
                f"({verdict} the selected size)"
            )
        return "\n".join(lines)


def generators_line(entries: list[dict[str, Any]]) -> str:
    """Each listed generator's own best size and loss, in one line."""
    parts = []
    for e in entries:
        if e.get("val_balanced_loss") is None:
            parts.append(f"{e['generator']} {e.get('status', 'failed')}")
            continue
        ratio = e.get("selected_ratio")
        at = "custom sizes" if ratio is None else f"ratio {ratio:g}"
        parts.append(f"{e['generator']} {e['val_balanced_loss']:.4f} at {at}")
    return "VTSS generators (best size of each): " + "; ".join(parts)


def _by_generator(cands: list[CandidateResult]) -> dict[str | None, list[CandidateResult]]:
    """The candidates of each generator's curve, in the order listed."""
    out: dict[str | None, list[CandidateResult]] = {}
    for c in cands:
        out.setdefault(c.generator, []).append(c)
    return out


def _by_index(sizes: dict[str, int]) -> dict[int, int]:
    return {int(k): int(v) for k, v in sizes.items()}


def _fmt_sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sizes.items()) or "none"


def _sd(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return 0.0
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become ``null``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj
