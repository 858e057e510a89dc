"""Search progress on disk: finished candidate scores survive a killed process.

The search runs in ``on_fit_start``, before Lightning writes any checkpoint, so a
process killed mid-search would lose every finished fit. :class:`ProgressStore`
appends one JSON line per finished (split, candidate) fit, flushed and fsynced, and a
rerun of the same command skips those fits. The file starts with a fingerprint of
everything that determines the scores; a file from another configuration is set
aside (with a one-line note), never reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parameter import is_lazy

from vtss_lightning.search.scores import MemoryStore

PROGRESS_NAME = "vtss_progress.jsonl"
FORMAT = 3  # 2: settings from SearchConfig; 3: pools drawn in seeded chunks (other rows)


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
    which decide the weights under the search seed).
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
    }
    weights = [v for _, v in sorted(module.state_dict().items()) if not is_lazy(v)]
    data = [split.x_train, split.y_train, split.x_val, split.y_val]
    return fingerprint(parts, [*data, *weights])


class ProgressStore(MemoryStore):
    """A :class:`~vtss_lightning.search.scores.ScoreStore` backed by a JSON-lines file.

    Line 1 is ``{"vtss_progress": 1, "fingerprint": ...}``; every further line is one
    finished fit ``{"split", "candidate", "loss", "seconds"}`` (``loss`` is ``null``
    for a failed fit). A torn last line, from a kill during a write, is dropped.

    Parameters
    ----------
    path
        The progress file; created (with its folder) when missing.
    key
        The search's fingerprint (:func:`search_fingerprint`).
    write
        ``False`` reads without writing (e.g. on non-zero ranks).
    verbose
        Print one line when resuming or when a stale file is set aside.
    """

    def __init__(self, path: str | Path, key: str, write: bool = True, verbose: bool = True):
        self.path = Path(path)
        self.key = key
        self.write = write
        super().__init__()
        self._records: list[str] = []
        self._load(verbose)
        if write:
            self._rewrite()

    # ------------------------------------------------------------- protocol
    def put(
        self, split: int, candidate: int, loss: float, seconds: float, comparator=None
    ) -> None:
        super().put(split, candidate, loss, seconds, comparator)
        if not self.write:
            return
        record = {
            "split": split,
            "candidate": candidate,
            "loss": loss if math.isfinite(loss) else None,
            "seconds": seconds,
        }
        if comparator is not None and math.isfinite(comparator):
            record["comparator"] = comparator
        line = json.dumps(record) + "\n"
        with self.path.open("a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        """Delete the file once the search's result is safe elsewhere."""
        if self.write:
            self.path.unlink(missing_ok=True)

    # --------------------------------------------------------------- private
    def _load(self, verbose: bool) -> None:
        if not self.path.is_file():
            return
        # undecodable bytes (a torn or foreign write) spoil only their own line
        lines = self.path.read_bytes().decode("utf-8", errors="replace").split("\n")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = {}
        if header.get("fingerprint") != self.key:
            if verbose:
                _say(
                    f"VTSS: ignoring {self.path}: it was written by a different search "
                    "configuration or data; starting afresh"
                )
            return
        for text in lines[1:]:
            try:
                rec = json.loads(text)
                key = (int(rec["split"]), int(rec["candidate"]))
                loss = math.nan if rec["loss"] is None else float(rec["loss"])
                value = (loss, float(rec["seconds"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # an empty or torn line (killed mid-write)
            self.scores[key] = value
            if rec.get("comparator") is not None:
                self.comparators[key[0]] = float(rec["comparator"])
            self._records.append(text)
        if verbose and self.scores:
            _say(f"VTSS: resuming from {self.path}: {len(self.scores)} fit(s) already done")

    def _rewrite(self) -> None:
        """Start the file from its valid lines, atomically, so appends stay parseable."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        header = json.dumps({"vtss_progress": FORMAT, "fingerprint": self.key})
        with tmp.open("w") as fh:
            fh.write("\n".join([header, *self._records]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
