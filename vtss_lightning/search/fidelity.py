"""Fidelity in the report: can a classifier tell a generator's rows from real rows?

A size search says *how many* synthetic rows help, not *why* a generator's rows did
not. A classifier two-sample test (C2ST) does: a classifier is cross-validated on
real rows against synthetic rows, and its ROC AUC is 0.5 when they cannot be told
apart and 1.0 when they always can.

The real rows are **validation rows only**, compared with the generator fitted on
the same split's training rows (never training rows, which the generator has seen,
and never test rows, which nothing in the search may read). The synthetic rows are
the head of that split's own pool, the rows the candidates trained on, so a search
refits nothing and draws nothing more (a pool smaller than the validation sample is
drawn on in its own seeded chunks; its head, what the candidates train on, stays).
A split's pool lives only while the search is in it (the engine builds a fresh
split per fold), so :class:`FidelityRecorder` takes its rows as the engine enters
the split (its ``on_split``, called after the pool is drawn) and keeps only those
rows; the test runs once, after the search.

Under K-fold one fold keeps a handful of minority validation rows, so the folds of
the first repetition are pooled (every development row once; later repetitions and
re-entered folds would count real rows twice), each fold's validation rows against
its own generator's rows. A class with fewer than :data:`MIN_REAL_ROWS` real rows
gets ``null`` and the reason, not a noisy number. The synthetic rows are the first
rows of the pool, which do not depend on the pool's size, so a resumed search (whose
finished folds are entered again afterwards, their generators refitted) reports what
an uninterrupted one does.
"""

from __future__ import annotations

import math
import time
import warnings
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from vtss_lightning._random import derive_seed
from vtss_lightning.errors import VTSSError

if TYPE_CHECKING:
    from vtss_lightning.search.validation import ValidationPlan

#: Classifiers :func:`c2st_auc` can use.
C2ST_KINDS = ("logistic", "knn")
#: Fewest real rows of a class for its AUC to be reported (below: ``null`` and why).
MIN_REAL_ROWS = 10
#: Most rows per side (real, synthetic) and class: keeps the test at a second or less.
MAX_ROWS = 2000
#: Cross-validation folds of the test.
C2ST_FOLDS = 5
#: Seed stream of the test (row subsamples, CV shuffles).
FIDELITY_SALT = 15_485_863
#: What the report names as the test.
TEST_NAME = "c2st_auc (5-fold, standardised): auc logistic regression, knn_auc 5-NN"


def c2st_auc(real: np.ndarray, synthetic: np.ndarray, seed: int, kind: str = "logistic") -> float:
    """Cross-validated ROC AUC of a classifier telling real from synthetic rows.

    ``"logistic"`` sees only linear (mean) differences; ``"knn"`` (5 nearest
    neighbours) also sees differences in spread and shape. Inputs are standardised
    inside each fold; ``seed`` fixes the fold shuffle, so a rerun gives the same AUC.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind not in C2ST_KINDS:
        raise VTSSError(f"unknown C2ST kind {kind!r}; choose one of {', '.join(C2ST_KINDS)}")
    folds = min(C2ST_FOLDS, len(real), len(synthetic))
    if folds < 2:
        raise VTSSError(f"a C2ST needs >= 2 rows a side, got {len(real)} and {len(synthetic)}")
    x = np.concatenate([_flat(real), _flat(synthetic)]).astype(np.float64)
    y = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    head = (
        LogisticRegression(C=1.0, max_iter=2000)
        if kind == "logistic"
        else KNeighborsClassifier(n_neighbors=5)
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():  # convergence and constant-column warnings
        warnings.simplefilter("ignore")
        scores = cross_val_score(
            make_pipeline(StandardScaler(), head), x, y, cv=cv, scoring="roc_auc"
        )
    return float(scores.mean())


def _flat(rows: np.ndarray) -> np.ndarray:
    """Rows as a 2-d matrix (images become pixel rows)."""
    rows = np.asarray(rows)
    return rows.reshape(len(rows), -1)


#: One split's rows per class index: (real validation rows, as many pool rows).
SplitRows = dict[int, tuple[np.ndarray, np.ndarray]]


class FidelityRecorder:
    """Takes each split's validation rows and pool rows as the search enters it.

    The splits tested are the hold-out, or under K-fold the folds of the first
    repetition (each development row validated once). A split the search did not
    enter in this run (a resumed search's finished folds) is entered afterwards and
    its generators fitted again, so a resumed report equals an uninterrupted one.

    Parameters
    ----------
    seed
        The search's seed: the same seed gives the same subsamples and AUCs.
    plan
        The search's validation scheme (``None``: the hold-out).
    max_rows
        Most real rows per split and class, and per side in the pooled test.
    """

    def __init__(
        self, seed: int, plan: ValidationPlan | None = None, max_rows: int = MAX_ROWS
    ) -> None:
        self.seed = int(seed)
        self.folds: int | None = None if plan is None else plan.folds
        self.repeats = 1 if plan is None else plan.repeats
        self.max_rows = int(max_rows)
        self.blocks: dict[str, SplitRows] = {}
        self.image = False
        self.seconds = 0.0
        self._expected: list[tuple[str, Any, Any]] | None = None

    def expected(self, dm) -> list[tuple[str, Any, Any]]:
        """``(name, train, val)`` of the splits to test (the hold-out: ``None`` indices)."""
        if self._expected is None:
            if self.folds is None:
                self._expected = [(dm.holdout.name, None, None)]
            else:  # the engine's own folds; the first ``folds`` are repetition 1
                self._expected = list(islice(dm.fold_indices(self.folds, self.repeats), self.folds))
        return self._expected

    def record(self, dm, classes: list[int] | None = None) -> None:
        """The active split's minority validation rows and the head of its pool.

        ``classes``: those to test (default: every class the split fitted a generator
        for); a split already recorded or not tested (a later repetition) is skipped.
        """
        t0 = time.perf_counter()
        split = dm.active
        names = [name for name, _, _ in self.expected(dm)]
        classes = sorted(split.generators) if classes is None else classes
        if split.name in self.blocks or split.name not in names or not classes:
            return
        s = names.index(split.name)
        self.image = split.preprocessor.schema.image_shape is not None
        self.blocks[split.name] = {k: self._rows(dm, split, s, k) for k in classes}
        self.seconds += time.perf_counter() - t0

    def _rows(self, dm, split, s: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ``k``'s validation rows (at most ``max_rows``) and the first as many
        rows of its pool, drawn on by the pool's own chunks when it is shorter (so the
        rows do not depend on the pool's size: pools are nested)."""
        real = self._subsample(_flat(split.x_val[split.y_val == k].cpu().numpy()), s + 1, k)
        n = len(real)
        if len(split.pool.rows.get(k, ())) < n:
            dm.prepare_pool({k: n})  # ``split`` is the active split
        return real, _flat(split.pool.rows[k][:n].cpu().numpy())

    def _subsample(self, rows: np.ndarray, s: int, k: int) -> np.ndarray:
        """At most ``max_rows`` of ``rows``, chosen with a seed of split ``s`` and class
        ``k`` (the same positions for two samples of one length)."""
        if len(rows) <= self.max_rows:
            return rows
        rng = np.random.default_rng(derive_seed(self.seed, FIDELITY_SALT, 1000 * s + k))
        return rows[np.sort(rng.choice(len(rows), self.max_rows, replace=False))]

    def complete(self, dm, pool_sizes: dict[int, int]) -> None:
        """Enter and record the splits to test that the search did not enter in this run.

        ``pool_sizes``: the hold-out's pool sizes; its classes with rows are tested.
        Nothing is done (or fitted) when every split was recorded or no class has rows.
        """
        wanted = [k for k, m in sorted(pool_sizes.items()) if m > 0]
        for name, train, val in self.expected(dm):
            if name in self.blocks or not wanted:
                continue
            if train is None:  # the hold-out: the active split after the search
                self.record(dm, wanted)
                continue
            with dm.use_split(name, train, val) as split:
                self.record(dm, [k for k in wanted if split.gaps.get(k, 0) > 0])

    # ------------------------------------------------------------------ report
    def diagnostics(self, dm, generator: str = "") -> dict[str, Any] | None:
        """The report's ``fidelity`` entry; ``None`` when no split's generator was seen."""
        if not self.blocks:
            return None
        t0 = time.perf_counter()
        splits = [name for name, _, _ in self.expected(dm) if name in self.blocks]
        classes = {
            dm.class_names[k]: self._score(k, splits)
            for k in sorted({k for b in self.blocks.values() for k in b})
        }
        self.seconds += time.perf_counter() - t0
        return {
            "test": TEST_NAME,
            "generator": generator,
            "splits": splits,
            "classes": classes,
            "reading": reading(classes, self.image, len(splits)),
        }

    def _score(self, k: int, splits: list[str]) -> dict[str, Any]:
        """Class ``k``'s AUCs over the splits' pooled rows (``null`` and why when too few)."""
        pairs = [self.blocks[name][k] for name in splits if k in self.blocks[name]]
        real = self._subsample(np.concatenate([r for r, _ in pairs]), 0, k)
        synthetic = self._subsample(np.concatenate([x for _, x in pairs]), 0, k)
        entry: dict[str, Any] = {"auc": None, "knn_auc": None}
        entry.update(real_rows=len(real), synthetic_rows=len(synthetic))
        if len(real) < MIN_REAL_ROWS:
            entry["reason"] = (
                f"only {len(real)} validation row(s) of this class; fewer than "
                f"{MIN_REAL_ROWS} give a noisy AUC"
            )
            if len(splits) == 1:
                entry["reason"] += " (K-fold validation, e.g. folds=5, pools all its rows)"
            return entry
        seed = derive_seed(self.seed, FIDELITY_SALT, k)
        entry["auc"] = c2st_auc(real, synthetic, seed, "logistic")
        entry["knn_auc"] = c2st_auc(real, synthetic, seed, "knn")
        return entry

    def report_into(self, result, dm, verbose: bool = False) -> None:
        """Add the ``fidelity`` entry to ``result.diagnostics`` (and its cost to
        ``result.timing``); nothing when the search drew no synthetic row."""
        t0 = time.perf_counter()
        self.complete(dm, result.pool_index_sizes)
        self.seconds += time.perf_counter() - t0
        entry = self.diagnostics(dm, repr(dm.generator))
        if entry is None:
            return
        result.diagnostics["fidelity"] = entry
        result.timing["fidelity_seconds"] = self.seconds
        line = fidelity_line(result.diagnostics)
        if verbose and line:
            print(line, flush=True)


def reading(classes: dict[str, dict[str, Any]], image: bool, n_splits: int) -> str:
    """How to read the AUCs: the scale, the noise at these row counts, the blind spots."""
    where = (
        "the split's validation rows"
        if n_splits == 1
        else f"the validation rows of {n_splits} folds, each against its own fold's generator"
    )
    text = (
        "ROC AUC of a classifier telling real rows that no generator saw (here "
        f"{where}) from as many of the generator's rows: 0.5 = indistinguishable, "
        "1.0 = always told apart. A generator near 1.0 adds rows unlike the real class, "
        "a likely reason why more of them did not help. The logistic test sees only "
        "mean differences, the 5-NN test also spread and shape. An AUC below 0.5 is no "
        "better than 0.5: cross-validation pulls a test with nothing to find under it, "
        "and rows packed tighter than real ones (SMOTE's interpolations) pull the 5-NN "
        "test under it."
    )
    scored = [c["real_rows"] for c in classes.values() if c["auc"] is not None]
    if scored:
        n = min(scored)
        noise = 2 * math.sqrt((2 * n + 1) / (12 * n * n))  # 2 sd of the AUC at 0.5
        text += f" With {n} real rows an AUC within about {noise:.2f} of 0.5 is noise."
    if image:
        text += (
            " These are images compared as flattened pixels: a weak test (blind to much "
            "of what makes an image look real), so a low AUC is weak evidence."
        )
    return text


def fidelity_line(diagnostics: dict[str, Any]) -> str | None:
    """One summary line: each class's logistic C2ST AUC (``None`` without the entry)."""
    entry = diagnostics.get("fidelity")
    if not entry or not entry["classes"]:
        return None
    parts = [
        f"{name} {'n/a' if c['auc'] is None else format(c['auc'], '.2f')} ({c['real_rows']} rows)"
        for name, c in entry["classes"].items()
    ]
    head = "VTSS fidelity (C2ST AUC vs held-out validation rows, 0.5 = like real)"
    return f"{head}: {', '.join(parts)}"
