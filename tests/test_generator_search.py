"""Which generator, and how many rows: ``generator=[...]`` searches (generator, size)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from helpers import tabular_dm

from vtss_lightning import VTSSCallback, VTSSTuner
from vtss_lightning.data.generator_list import as_generator_list, generator_labels
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators import (
    GaussianGenerator,
    JitterGenerator,
    SMOTEGenerator,
    VAEGenerator,
)
from vtss_lightning.generators.base import SyntheticGenerator
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search.report import VTSSResult

RATIOS = [0, 1, 2]


class BrokenGenerator(SyntheticGenerator):
    """A generator whose fit always fails (one listed generator of several)."""

    name = "broken"

    def __init__(self) -> None:
        pass

    def _fit(self, x, schema, seed):
        raise VTSSError("broken on purpose")

    def _sample(self, n, seed):  # pragma: no cover - never fitted
        raise AssertionError


class AlsoBroken(BrokenGenerator):
    name = "also_broken"


def search(generator, folds=3, **settings):
    dm = tabular_dm(150, 24, n_test=30, generator=generator)
    pl.seed_everything(0)
    tuner = VTSSTuner(
        ratios=RATIOS, folds=folds, verbose=False, trainer_kwargs={"max_epochs": 1}, **settings
    )
    return tuner.search(TabularClassifier(), dm), dm


def losses(result: VTSSResult, generator: str | None = None) -> list[float]:
    """Every (candidate, fold) loss of one generator's curve, in order."""
    return [v for c in result.candidates if c.generator == generator for v in c.fold_losses]


# ------------------------------------------------------------------ the list
def test_labels_are_names_and_the_changed_settings_where_names_repeat():
    gens = [SMOTEGenerator(), VAEGenerator(), VAEGenerator(conditional=True, steps=50)]
    assert generator_labels(gens) == ["smote", "vae", "vae(steps=50, conditional=True)"]
    assert generator_labels([JitterGenerator(scale=0.1)]) == ["jitter"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "lists no generator"),
        ([SMOTEGenerator(), "vae"], r"generator\[1\] is a str, not a generator"),
        ("smote", "must be a generator"),
        ([SMOTEGenerator(), SMOTEGenerator()], "lists smote twice"),
    ],
)
def test_a_bad_generator_list_is_refused_in_one_line(value, message):
    with pytest.raises(VTSSError, match=message) as err:
        as_generator_list(value)
    assert "\n" not in str(err.value)


def test_switching_generators_keeps_each_ones_fits_and_pool():
    dm = tabular_dm(150, 24, generator=[SMOTEGenerator(), GaussianGenerator()], setup=True)
    smote_rows = dm.prepare_pool({1: 40}).rows[1]
    dm.use_generator("gaussian")
    gaussian_rows = dm.prepare_pool({1: 40}).rows[1]
    assert not torch.equal(smote_rows, gaussian_rows)
    dm.use_generator(0)
    assert dm.prepare_pool({1: 40}).rows[1] is smote_rows  # kept, not drawn again
    with pytest.raises(VTSSError, match="no generator 'vae' is listed; .*smote, gaussian"):
        dm.use_generator("vae")


# ---------------------------------------------------------------- the search
def test_every_generator_is_scored_on_the_same_folds_as_alone():
    gens = [SMOTEGenerator(), GaussianGenerator(), JitterGenerator(scale=0.3)]
    joint, dm = search(gens)
    assert [c.generator for c in joint.candidates] == [
        g for g in ("smote", "gaussian", "jitter") for _ in RATIOS
    ]
    for g in gens:
        alone, _ = search(type(g)(**g.get_params()))
        assert losses(joint, g.name) == pytest.approx(losses(alone), rel=1e-6)
    # the size chosen along each curve, then the generator whose pick is lowest
    entries = joint.diagnostics["generators"]
    assert [e["generator"] for e in entries] == ["smote", "gaussian", "jitter"]
    best = min(entries, key=lambda e: e["val_balanced_loss"])
    assert joint.selected_generator == best["generator"]
    assert joint.selected.val_balanced_loss == pytest.approx(best["val_balanced_loss"])
    assert joint.selected_ratio == best["selected_ratio"]
    assert dm.generator.name == best["generator"]  # the DataModule keeps the winner
    assert all(e["fidelity"]["classes"]["pos"]["real_rows"] > 0 for e in entries)


def test_the_final_model_trains_on_the_winning_generators_rows(tmp_path):
    dm = tabular_dm(150, 24, n_test=30, generator=[SMOTEGenerator(), GaussianGenerator()])
    cb = VTSSCallback(ratios=RATIOS, folds=None, progress=False, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[cb],
    )  # fmt: skip
    trainer.fit(TabularClassifier(), datamodule=dm)
    result = cb.result
    winner = result.selected_generator
    alone = tabular_dm(150, 24, n_test=30, generator=dm.generator, setup=True)
    alone.set_synthetic_sizes(result.selected_index_sizes)
    for got, want in zip(dm.training_tensors(), alone.training_tensors(), strict=True):
        torch.testing.assert_close(got, want)
    assert all(not s for s in (dm.holdout.stashed,))  # the losers' pools are let go
    report = VTSSResult.from_dict(result.to_dict())
    assert report.selected_generator == winner
    assert report.selected.generator == winner
    assert {c.generator for c in report.candidates} == {"smote", "gaussian"}
    lines = [
        ln for ln in result.plot().axes[0].get_lines() if ln.get_label() in ("smote", "gaussian")
    ]
    assert len(lines) == 2  # one curve per generator
    assert f"generator {winner}" in result.summary()


def test_a_generator_that_fails_is_reported_and_the_others_compete():
    result, dm = search([BrokenGenerator(), SMOTEGenerator()], folds=None)
    broken, smote = result.diagnostics["generators"]
    assert broken["status"] == "failed: broken on purpose"
    assert smote["status"] == "ok" and result.selected_generator == "smote"
    assert {c.generator for c in result.candidates} == {"smote"}
    with pytest.raises(VTSSError, match="broken on purpose"):
        search(
            [
                BrokenGenerator(),
                BrokenGenerator.__new__(type("Also", (BrokenGenerator,), {"name": "also"})),
            ],
            folds=None,
        )


def test_progress_files_are_one_per_generator_and_removed_with_the_report(tmp_path):
    dm = tabular_dm(150, 24, generator=[SMOTEGenerator(), GaussianGenerator()])
    progress = tmp_path / "vtss_progress-{search}.jsonl"
    cb = VTSSCallback(ratios=RATIOS, folds=2, verbose=False, progress_path=str(progress))
    seen: list[int] = []

    class CountFiles(pl.Callback):
        def on_train_start(self, trainer, pl_module):  # after the search, before the report
            seen.append(len(list(tmp_path.glob("vtss_progress-*.jsonl"))))

    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[cb, CountFiles()],
    )  # fmt: skip
    trainer.fit(TabularClassifier(), datamodule=dm)
    assert seen[-1] == 2, seen  # the outer fit (candidate fits see copies of the callback)
    assert not list(tmp_path.glob("vtss_progress-*.jsonl"))
    assert math.isfinite(cb.result.selected.val_balanced_loss)


def test_tg_vtss_judges_each_generator_on_its_own():
    dm = tabular_dm(300, 30, generator=[SMOTEGenerator(), GaussianGenerator()])
    pl.seed_everything(0)
    tuner = VTSSTuner(grid="tg", verbose=False, trainer_kwargs={"max_epochs": 1})
    result = tuner.search(TabularClassifier(), dm)
    entries = result.diagnostics["generators"]
    assert all(e["tg"]["regime"] in ("local symmetry", "local asymmetry") for e in entries)
    winner = next(e for e in entries if e["generator"] == result.selected_generator)
    assert result.diagnostics["tg"]["regime"] == winner["tg"]["regime"]


def test_loggers_get_one_series_per_generator():
    from vtss_lightning.search.loggers import log_search

    vaes = [VAEGenerator(steps=20), VAEGenerator(conditional=True, steps=20)]
    result, _ = search([SMOTEGenerator(), *vaes], folds=None)

    class Recorder:
        def __init__(self):
            self.points = []

        def log_metrics(self, metrics, step):
            self.points.append((step, metrics))

    logger = Recorder()
    log_search(result, [logger])
    series = {}
    for step, metrics in logger.points:
        for name in metrics:
            if name.endswith("/val_balanced_loss") and name.count("/") == 2:
                series.setdefault(name, []).append(step)
    assert series == {
        "vtss/smote/val_balanced_loss": [0, 1, 2],
        "vtss/vae_steps_20_/val_balanced_loss": [0, 1, 2],  # "vae(steps=20)"
        "vtss/vae_steps_20__conditional_True_/val_balanced_loss": [0, 1, 2],
    }
