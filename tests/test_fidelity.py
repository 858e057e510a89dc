"""Fidelity in the report: a held-out C2ST of each split's generator, validation rows only."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from helpers import tabular_dm

from vtss_lightning import VTSSError, VTSSTuner
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search import SearchEngine
from vtss_lightning.search import fidelity as fid
from vtss_lightning.search.fidelity import FidelityRecorder, c2st_auc, fidelity_line, reading
from vtss_lightning.search.scores import MemoryStore
from vtss_lightning.search.strategies import BaseScorer
from vtss_lightning.search.validation import plan_validation

#: 200 "ok" vs 40 "fraud" rows (3 features, the minority shifted by 1), set up.
make_dm = partial(tabular_dm, n_neg=200, n_pos=40, labels=("ok", "fraud"), n_test=20, setup=True)


class FakeScorer(BaseScorer):
    """A known loss curve (no training); keeps every split it was given."""

    def __init__(self, loss=lambda share: (share - 1.0) ** 2):
        super().__init__(template=None, settings=None)
        self.loss = loss
        self.splits = []

    def begin_split(self, dm):
        self.splits.append(dm.active)

    def score(self, dm, sizes):
        return self.loss(sum(sizes.values()) / sum(dm.class_gaps().values()))


def search(dm, seed=0, scorer=None, store=None, **settings):
    """The engine with a recorder watching it, as ``run_search`` wires them."""
    scorer = FakeScorer() if scorer is None else scorer
    engine = SearchEngine(**{"ratios": [0, 1], "verbose": False, **settings})
    recorder = FidelityRecorder(seed, plan_validation(engine.config, dm))
    result = engine.run(dm, scorer, store, on_split=recorder.record)
    recorder.report_into(result, dm)
    return result, scorer


@pytest.fixture
def spy(monkeypatch):
    """Every ``(real, synthetic)`` pair the report's C2ST is given."""
    calls = []
    real_test = fid.c2st_auc

    def c2st(real, synthetic, seed, kind="logistic"):
        calls.append((real, synthetic, kind))
        return real_test(real, synthetic, seed, kind)

    monkeypatch.setattr(fid, "c2st_auc", c2st)
    return calls


def minority_rows(splits, k, what="x_val"):
    return np.concatenate([getattr(s, what)[s.y_val == k].numpy() for s in splits])


# --------------------------------------------------------------------------- the test


@pytest.mark.parametrize("kind", ["logistic", "knn"])
def test_c2st_is_near_half_for_one_distribution_and_near_one_for_shifted(kind):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    assert abs(c2st_auc(a, b, seed=0, kind=kind) - 0.5) < 0.08
    assert c2st_auc(a, b + 3.0, seed=0, kind=kind) > 0.97


def test_c2st_is_repeatable_and_refuses_what_it_cannot_test():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 3)), rng.normal(0.5, size=(40, 3))
    assert c2st_auc(a, b, seed=3) == c2st_auc(a, b, seed=3)
    with pytest.raises(VTSSError, match="unknown C2ST kind"):
        c2st_auc(a, b, seed=0, kind="forest")
    with pytest.raises(VTSSError, match=">= 2 rows"):
        c2st_auc(a[:1], b, seed=0)


# ------------------------------------------------------------------ the report's entry


def test_k_fold_pools_each_folds_validation_rows_against_its_own_pool(spy):
    dm = make_dm()
    result, scorer = search(dm, folds=5)
    entry = result.diagnostics["fidelity"]
    assert list(entry["classes"]) == ["fraud"]  # the label as the user wrote it
    fraud = entry["classes"]["fraud"]
    assert fraud["real_rows"] == fraud["synthetic_rows"] == 40  # every minority row once
    assert 0.0 <= fraud["auc"] <= 1.0 and 0.0 <= fraud["knn_auc"] <= 1.0
    assert entry["splits"] == [f"fold 1.{i}" for i in range(1, 6)]
    assert "SMOTE" in entry["generator"] and "5 folds" in entry["reading"]
    assert result.timing["fidelity_seconds"] >= 0
    real, synthetic, _ = spy[0]
    k = dm.class_names.index("fraud")
    np.testing.assert_array_equal(real, minority_rows(scorer.splits, k))  # validation rows only
    pools = [s.pool.rows[k][: int((s.y_val == k).sum())].numpy() for s in scorer.splits]
    np.testing.assert_array_equal(synthetic, np.concatenate(pools))  # the pools' heads
    for s in scorer.splits:  # a fold's validation rows are none of its training rows
        assert not set(s.val_index) & set(s.train_index)
    assert json.loads(result.to_json())["diagnostics"]["fidelity"]["classes"]["fraud"]["auc"]


def test_hold_out_uses_no_training_and_no_test_row(spy):
    dm = make_dm(n_neg=400, n_pos=80)  # 16 minority validation rows
    result, _ = search(dm)
    assert result.diagnostics["fidelity"]["classes"]["fraud"]["real_rows"] == 16
    real, synthetic, _ = spy[0]
    split, k = dm.holdout, dm.class_names.index("fraud")
    np.testing.assert_array_equal(real, split.x_val[split.y_val == k].numpy())
    other = torch.cat([split.x_train, dm.x_test]).numpy()  # the same encoding
    assert not (real[:, None, :] == other[None, :, :]).all(-1).any()
    assert len(synthetic) == len(real)


def test_integer_labels_are_keyed_as_written():
    dm = make_dm(labels=(1, 2))
    result, _ = search(dm, folds=5)
    assert list(result.diagnostics["fidelity"]["classes"]) == ["2"]  # not "np.int64(2)"


def test_too_few_validation_rows_give_null_and_the_reason(spy):
    dm = make_dm()  # the hold-out keeps 8 of the 40 minority rows
    result, _ = search(dm)
    fraud = result.diagnostics["fidelity"]["classes"]["fraud"]
    assert fraud["auc"] is None and fraud["knn_auc"] is None and fraud["real_rows"] == 8
    assert "fewer than 10" in fraud["reason"] and "folds=" in fraud["reason"]
    assert spy == []  # no noisy number computed
    assert "fraud n/a (8 rows)" in fidelity_line(result.diagnostics)


def test_a_seed_repeats_the_entry():
    first, _ = search(make_dm(), seed=4, folds=5)
    again, _ = search(make_dm(), seed=4, folds=5)
    assert first.diagnostics["fidelity"] == again.diagnostics["fidelity"]


def test_re_entered_and_repeated_folds_count_each_real_row_once():
    dm = make_dm()
    falling = FakeScorer(lambda share: 1.0 / (1.0 + share))  # the largest size keeps winning
    result, scorer = search(dm, scorer=falling, ratios=None, folds=5, repeats=2)
    assert len(scorer.splits) > 10  # the extended grid re-entered the folds
    entry = result.diagnostics["fidelity"]
    assert entry["classes"]["fraud"]["real_rows"] == 40
    assert len(entry["splits"]) == 5


def test_a_resumed_search_reports_what_an_uninterrupted_one_does():
    store = MemoryStore()
    full, _ = search(make_dm(), folds=5, store=store)
    partial = MemoryStore()  # as if killed after the first two folds
    partial.scores = {key: v for key, v in store.scores.items() if key[0] < 2}
    resumed, scorer = search(make_dm(), folds=5, store=partial)
    assert [s.name for s in scorer.splits] == ["fold 1.3", "fold 1.4", "fold 1.5"]
    assert resumed.diagnostics["fidelity"] == full.diagnostics["fidelity"]
    restored, scorer = search(make_dm(), folds=5, store=store)  # every fold restored
    assert scorer.splits == []
    assert restored.diagnostics["fidelity"] == full.diagnostics["fidelity"]


class RowKeeper(FakeScorer):
    """Keeps every candidate's training rows."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def score(self, dm, sizes):
        self.rows.append(dm.training_tensors(sizes)[0].clone())
        return super().score(dm, sizes)


def test_a_short_pool_is_drawn_on_without_changing_any_candidates_rows():
    settings = {"ratios": None, "sizes": [{"fraud": 3}], "folds": 5, "extend_grid": False}
    watched, plain = RowKeeper(), RowKeeper()
    dm = make_dm()
    result, _ = search(dm, scorer=watched, **settings)
    SearchEngine(verbose=False, **settings).run(make_dm(), plain)  # no recorder
    for a, b in zip(watched.rows, plain.rows, strict=True):
        assert torch.equal(a, b)  # the pool's head is what it was: pools are nested
    fraud = result.diagnostics["fidelity"]["classes"]["fraud"]
    assert fraud["synthetic_rows"] == fraud["real_rows"] == 40
    k = dm.class_names.index("fraud")
    assert [len(s.pool.rows[k]) for s in watched.splits] == [8] * 5  # drawn on from 3


@pytest.mark.parametrize("kwargs", [{"ratios": [0]}, {"n_pos": 200}])
def test_no_entry_without_a_generator(kwargs):
    settings = {"ratios": kwargs.pop("ratios", [0, 1])}
    result, _ = search(make_dm(**kwargs), **settings)
    assert "fidelity" not in result.diagnostics


def test_the_reading_says_the_pixel_test_is_weak_on_images():
    classes = {"8": {"auc": 0.9, "knn_auc": 0.9, "real_rows": 40, "synthetic_rows": 40}}
    assert "flattened pixels" in reading(classes, image=True, n_splits=5)
    assert "pixels" not in reading(classes, image=False, n_splits=5)


# ------------------------------------------------------------------------ end to end


def test_tuner_reports_fidelity_with_smote(capsys, tmp_path):
    dm = tabular_dm(200, 40, labels=("ok", "fraud"))
    tuner = VTSSTuner({"max_epochs": 1}, ratios=[0, 1], folds=2, progress=False)
    result = tuner.search(TabularClassifier(), dm)
    fraud = result.diagnostics["fidelity"]["classes"]["fraud"]
    assert fraud["real_rows"] == 40 and 0.0 <= fraud["auc"] <= 1.0
    assert "VTSS fidelity (C2ST AUC" in capsys.readouterr().out
    report, _ = result.write(tmp_path)
    assert json.loads(report.read_text())["diagnostics"]["fidelity"]["test"].startswith("c2st_auc")
