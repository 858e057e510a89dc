"""Reading user tables: CSV or Parquet files into DataFrames, with clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from vtss_lightning.errors import VTSSError

READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def check_table_path(path: str | Path, what: str = "path") -> Path:
    """Fail early, at construction time, on a path that cannot be read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise VTSSError(f"{what} {str(path)!r} does not exist")
    if not p.is_file():
        raise VTSSError(f"{what} {str(path)!r} is not a file")
    suffix = p.suffix.lower()
    if suffix not in READERS and not p.name.lower().endswith(".csv.gz"):
        raise VTSSError(f"{what} {str(path)!r}: unsupported file type; use .csv or .parquet")
    return p


def read_table(path: str | Path, what: str = "path") -> pd.DataFrame:
    """Load a CSV or Parquet file; an empty or unreadable file is a ``VTSSError``."""
    p = check_table_path(path, what)
    reader = READERS.get(p.suffix.lower(), pd.read_csv)
    try:
        frame = reader(p)
    except pd.errors.EmptyDataError:
        raise VTSSError(f"{what} {str(path)!r} is empty") from None
    except ImportError:  # Parquet without pyarrow/fastparquet
        raise VTSSError(
            f"reading {what} {str(path)!r} needs a Parquet engine: pip install pyarrow "
            "(or save the table as CSV)"
        ) from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise VTSSError(f"cannot read {what} {str(path)!r}: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise VTSSError(f"{what} {str(path)!r} has no rows")
    return frame


def split_target(
    frame: pd.DataFrame, target: str, what: str = "data"
) -> tuple[pd.DataFrame, pd.Series]:
    """Separate the target column from the features."""
    if target not in frame.columns:
        names = [str(c) for c in frame.columns]
        cols = ", ".join(names[:20]) + (f", … ({len(names)} columns)" if len(names) > 20 else "")
        raise VTSSError(f"target column {target!r} not found in the {what}; columns are: {cols}")
    copies = [str(c) for c in frame.columns if re.fullmatch(rf"{re.escape(target)}\.\d+", str(c))]
    if copies or list(frame.columns).count(target) > 1:
        raise VTSSError(
            f"the target column {target!r} appears more than once in the {what} "
            f"(also as {', '.join(copies) or target!r}): a copy of the label among the "
            "features would leak it; drop the duplicate column"
        )
    features = frame.drop(columns=[target])
    features.columns = [str(c) for c in features.columns]
    if features.shape[1] == 0:
        raise VTSSError(f"the {what} has no feature columns besides the target {target!r}")
    return features.reset_index(drop=True), frame[target].reset_index(drop=True)
