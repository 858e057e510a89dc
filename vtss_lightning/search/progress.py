"""Search progress on disk: finished candidate scores survive a killed process.

The search runs in ``on_fit_start``, before Lightning writes any checkpoint, so a
process killed mid-search would lose every finished fit. :class:`ProgressStore`
appends one JSON line per finished (split, candidate) fit, flushed and fsynced, and a
rerun of the same command skips those fits.

A progress file belongs to exactly one search, named by its fingerprint
(:func:`search_fingerprint`: everything that determines the scores):

* **Its name.** The default file, ``<default_root_dir>/vtss_progress-{search}.jsonl``
  (:data:`PROGRESS_NAME`), has ``{search}`` replaced by the first 16 hex digits of
  the fingerprint, so different searches in one folder keep different files and a
  rerun of the same search finds its own. A ``progress_path`` may use ``{search}``
  too. A ``progress_path`` without it is used as given when it is free or already
  holds this search; a file there that holds anything else (another search's
  progress) is never overwritten nor read: this search then keeps its progress
  next to it, in ``<stem>-<16 hex><suffix>`` (with a one-line note).
* **Its lines.** Line 1 carries the whole fingerprint and every further line the
  16-digit tag, and only lines with this search's tag are read. Two processes that
  ever append to one file (two searches started at the same instant on one free
  ``progress_path``) can then lose each other's progress, never take each other's
  losses.

A search that keeps records of its own (successive halving's rung results and the
status of each pruned candidate) writes them into the same file, so that a rerun
replays the same schedule (:meth:`ProgressStore.put_note`, :meth:`ProgressStore.record`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parameter import is_lazy

from vtss_lightning.errors import VTSSError
from vtss_lightning.search.scores import MemoryStore

#: Name of the default progress file; ``{search}`` becomes the search's tag.
PROGRESS_NAME = "vtss_progress-{search}.jsonl"
SEARCH_FIELD = "{search}"
TAG_DIGITS = 16
# 2: settings from SearchConfig; 3: pools drawn in seeded chunks (other rows);
# 4: every line tagged with its search, callback settings, notes and strategy records
FORMAT = 4

#: The files the writing stores of this process opened, by the path they were given
#: (one per listed generator in a search over several).
_OPENED: dict[Path, list[Path]] = {}


def fingerprint(parts: dict[str, Any], tensors: Iterable[torch.Tensor] = ()) -> str:
    """SHA-256 over a JSON-able description and the bytes of some tensors."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def search_fingerprint(config, dm, module, settings, ratios) -> str:
    """What decides every candidate's score: data, grid, folds, seed, model, budget.

    The data enter through the encoded hold-out tensors and the class names (the
    folds are a function of the rows, labels and ``dm.seed``); the search through
    every setting of its :class:`~vtss_lightning.search.config.SearchConfig` that can
    change a score; the model through its class, hyperparameters and initial weights
    (a lazily built model has none yet and is then identified by its hyperparameters,
    which decide the weights under the search seed); the trainer through its budget
    and the settings of the callbacks every candidate gets (e.g. EarlyStopping's
    ``patience``, which its name does not show).
    """
    split = dm.holdout
    parts = {
        "format": FORMAT,
        "data": {
            "classes": dm.class_names,
            "shapes": [tuple(split.x_train.shape), tuple(split.x_val.shape)],
            "seed": dm.seed,
            "val_fraction": getattr(dm, "val_fraction", None),
            "batch_size": getattr(dm, "batch_size", None),
            "generator": repr(dm.generator),
            "transforms": repr(getattr(dm, "transforms", None)),
        },
        "search": {**config.scoring_settings(), "ratios": ratios},
        "model": {
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "hparams": dict(getattr(module, "hparams", {}) or {}),
        },
        "trainer": settings.describe(),
        "callbacks": [_init_settings(c) for c in getattr(settings, "callbacks", None) or ()],
    }
    weights = [v for _, v in sorted(module.state_dict().items()) if not is_lazy(v)]
    data = [split.x_train, split.y_train, split.x_val, split.y_val]
    return fingerprint(parts, [*data, *weights])


def _init_settings(obj) -> dict[str, Any]:
    """An object's class and the plain values it keeps under its ``__init__`` names."""
    plain = (bool, int, float, str, type(None))
    out: dict[str, Any] = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    try:
        names = list(inspect.signature(type(obj).__init__).parameters)[1:]
    except (TypeError, ValueError):
        return out
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, plain) or (
            isinstance(value, list | tuple) and all(isinstance(v, plain) for v in value)
        ):
            out[name] = value
    return out


def progress_file_for(path: str | Path, key: str) -> Path:
    """The file the search with fingerprint ``key`` keeps its progress in, for ``path``.

    ``{search}`` in the name becomes the search's tag; otherwise ``path`` itself, unless
    it holds anything but this search's progress (then ``<stem>-<tag><suffix>``, which a
    rerun also finds first).
    """
    path, tag = Path(path), key[:TAG_DIGITS]
    if SEARCH_FIELD in path.name:
        return path.with_name(path.name.replace(SEARCH_FIELD, tag))
    own = path.with_name(f"{path.stem}-{tag}{path.suffix}")
    if own.is_file() or _owner(path) not in (None, key):
        return own
    return path


def start_search(path: str | Path) -> None:
    """The progress files opened for ``path`` from now on belong to one search (one
    per listed generator): :func:`remove_progress` deletes those, not an earlier
    search's."""
    _OPENED.pop(Path(path), None)


def remove_progress(path: str | Path) -> None:
    """Delete the files the writing :class:`ProgressStore` s of this process kept for
    ``path`` (the path as given): a search's own files, never another search's. Where
    no search ran in this process (a fit resumed from a checkpoint) nothing is removed;
    a rerun of that search would find its finished fits there."""
    for used in _OPENED.pop(Path(path), []):
        used.unlink(missing_ok=True)


def _owner(path: Path) -> str | None:
    """The fingerprint in ``path``'s header; ``None`` when there is no file (or an
    empty one), ``""`` when it is not a progress file."""
    if not path.is_file():
        return None
    with path.open("rb") as fh:
        first = fh.readline().decode("utf-8", errors="replace").strip()
    if not first:
        return None
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        return ""
    return str(header.get("fingerprint", "")) if isinstance(header, dict) else ""


class ProgressStore(MemoryStore):
    """A :class:`~vtss_lightning.search.scores.ScoreStore` backed by a JSON-lines file.

    Line 1 is ``{"vtss_progress": FORMAT, "fingerprint": ...}``; every further line
    carries ``"search"`` (the fingerprint's first 16 hex digits) and is one of: a
    finished fit ``{"split", "candidate", "loss", "seconds"}`` (``loss`` is ``null``
    for a failed or pruned fit), a candidate's status ``{"split", "candidate",
    "note"}``, or a strategy's record ``{"entry": {...}}``. A torn last line, from a
    kill during a write, and lines of another search are dropped.

    Parameters
    ----------
    path
        The progress path as given (see the module docstring for the file it names,
        :attr:`path`); created with its folder when missing.
    key
        The search's fingerprint (:func:`search_fingerprint`).
    write
        ``False`` reads without writing (e.g. on non-zero ranks).
    verbose
        Print one line when resuming or when another search's file is left alone.
    """

    def __init__(self, path: str | Path, key: str, write: bool = True, verbose: bool = True):
        self.requested = Path(path)
        if self.requested.is_dir():
            raise VTSSError(
                f"progress_path {str(self.requested)!r} is a folder; give a file path "
                "(e.g. inside it: .../vtss_progress.jsonl)"
            )
        self.key = key
        self.tag = key[:TAG_DIGITS]
        self.path = progress_file_for(self.requested, key)  # the file actually used
        self.write = write
        super().__init__()
        self._records: list[str] = []
        if verbose and self.path != self.requested and SEARCH_FIELD not in self.requested.name:
            _say(
                f"VTSS: {self.requested} holds something else (the progress of a different "
                f"search configuration or data); leaving it as it is and keeping this "
                f"search's progress in {self.path}"
            )
        self._load(verbose)
        if write:
            self._rewrite()
            opened = _OPENED.setdefault(self.requested, [])
            if self.path not in opened:
                opened.append(self.path)

    # ------------------------------------------------------------- protocol
    def put(self, split: int, candidate: int, loss: float, seconds: float, comparator=None) -> None:
        super().put(split, candidate, loss, seconds, comparator)
        record = {
            "split": split,
            "candidate": candidate,
            "loss": loss if math.isfinite(loss) else None,
            "seconds": seconds,
        }
        if comparator is not None and math.isfinite(comparator):
            record["comparator"] = comparator
        self._append(record)

    def put_note(self, split: int, candidate: int, note: str) -> None:
        super().put_note(split, candidate, note)
        self._append({"split": split, "candidate": candidate, "note": note})

    def record(self, entry: dict[str, Any]) -> None:
        super().record(entry)
        self._append({"entry": entry})

    def remove(self) -> None:
        """Delete the file once the search's result is safe elsewhere."""
        if self.write:
            self.path.unlink(missing_ok=True)

    # --------------------------------------------------------------- private
    def _append(self, record: dict[str, Any]) -> None:
        if not self.write:
            return
        line = json.dumps({"search": self.tag, **record}) + "\n"
        with self.path.open("a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _load(self, verbose: bool) -> None:
        if not self.path.is_file():
            return
        # undecodable bytes (a torn or foreign write) spoil only their own line
        lines = self.path.read_bytes().decode("utf-8", errors="replace").split("\n")
        if not lines[0].strip():
            return  # an empty file: nothing to resume
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = {}
        if not isinstance(header, dict) or header.get("fingerprint") != self.key:
            if verbose:  # only a 16-digit tag clash or a damaged header lead here
                _say(f"VTSS: ignoring {self.path}: its header is not this search's")
            return
        for text in lines[1:]:
            if self._take_line(text):
                self._records.append(text)
        if verbose and self.scores:
            _say(f"VTSS: resuming from {self.path}: {len(self.scores)} fit(s) already done")

    def _take_line(self, text: str) -> bool:
        """Keep one line's record if it is this search's and whole; whether it was."""
        try:
            rec = json.loads(text)
            if rec["search"] != self.tag:
                return False  # another search's append (never read)
            if "entry" in rec:
                MemoryStore.record(self, dict(rec["entry"]))
                return True
            key = (int(rec["split"]), int(rec["candidate"]))
            if "note" in rec:
                MemoryStore.put_note(self, *key, str(rec["note"]))
                return True
            loss = math.nan if rec["loss"] is None else float(rec["loss"])
            value = (loss, float(rec["seconds"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return False  # an empty or torn line (killed mid-write)
        self.scores[key] = value
        if rec.get("comparator") is not None:
            self.comparators[key[0]] = float(rec["comparator"])
        return True

    def _rewrite(self) -> None:
        """Start the file from its valid lines, atomically, so appends stay parseable."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        header = json.dumps({"vtss_progress": FORMAT, "fingerprint": self.key})
        try:
            with tmp.open("w") as fh:
                fh.write("\n".join([header, *self._records]) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)  # left only when the write or the rename failed


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
