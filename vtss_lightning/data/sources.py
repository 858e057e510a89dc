"""Reading user tables: CSV or Parquet files into DataFrames, with clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from vtss_lightning.data.features import fresh_index
from vtss_lightning.errors import VTSSError

#: Rows per block of a CSV read by :func:`read_csv_lean`: a multiple of every chunk
#: length pandas's C parser infers column types on (a power of two up to 2^19), so
#: that blocks start where those chunks start and the columns come out the same.
CSV_BLOCK_ROWS = 1 << 19


def read_csv_lean(path: str | Path) -> pd.DataFrame:
    """``pd.read_csv(path)`` costing about the table once instead of twice.

    A whole-file read holds every column twice while pandas stacks same-typed columns
    into one 2-D block; here the file is read in blocks of :data:`CSV_BLOCK_ROWS` rows,
    each block's columns copied out before the next is read, and each column joined
    once (the frame keeps one block per column). A column whose type differs between
    blocks (numbers, then text further down), or an index read from the file, makes
    it read the file again whole, so the result is always ``pd.read_csv``'s.
    """
    pieces: dict[str, list[pd.Series]] = {}
    first: pd.DataFrame | None = None
    with pd.read_csv(path, chunksize=CSV_BLOCK_ROWS) as reader:
        for block in reader:
            if not isinstance(block.index, pd.RangeIndex):
                return pd.read_csv(path)
            if first is None and not pieces:
                first = block  # a table of one block is returned as pandas read it
                continue
            if first is not None:
                _add_columns(pieces, first)
                first = None
            _add_columns(pieces, block)
            del block
    if not pieces:
        return pd.read_csv(path) if first is None else first
    if any(len({part.dtype for part in parts}) > 1 for parts in pieces.values()):
        pieces.clear()
        return pd.read_csv(path)
    columns = {name: pd.concat(pieces.pop(name), ignore_index=True) for name in list(pieces)}
    return pd.DataFrame(columns, copy=False)


def _add_columns(pieces: dict[str, list[pd.Series]], block: pd.DataFrame) -> None:
    """Append a copy of each column of ``block`` (the block can then be let go)."""
    for name in block.columns:
        pieces.setdefault(name, []).append(block[name].copy())


READERS = {".csv": read_csv_lean, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


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
    reader = READERS.get(p.suffix.lower(), read_csv_lean)
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
    """Separate the target column from the features.

    The features share ``frame``'s memory (nothing downstream writes to them): a
    copy of a table of millions of rows would double what reading it costs.
    """
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
    features = frame.copy(deep=False)  # shares the columns: the table is not copied
    del features[target]  # from the shallow copy only; ``frame`` keeps its label
    features.columns = [str(c) for c in features.columns]
    if features.shape[1] == 0:
        raise VTSSError(f"the {what} has no feature columns besides the target {target!r}")
    return fresh_index(features), frame[target].reset_index(drop=True)
