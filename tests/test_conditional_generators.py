"""Class-conditional deep generators: the contract (fit_labelled, sample(label=)), what the
VAE and diffusion conditional modes learn, and the pool builder fitting one model per
split on the training rows of every class with nested per-class prefixes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vtss_lightning import TabularDataModule
from vtss_lightning.data import ImageDataModule
from vtss_lightning.data.builtin import simulate_paper_linear
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators import DiffusionGenerator, SMOTEGenerator, VAEGenerator
from vtss_lightning.generators.base import ClassView
from vtss_lightning.models import TabularClassifier

torch.set_num_threads(1)

# 2 numeric columns, a 3-level and a 2-level one-hot group.
SCHEMA = FeatureSchema(n_features=7, numeric=(0, 4), categorical_groups=((1, 2, 3), (5, 6)))
CENTRES = (-4.0, 0.0, 4.0)  # class k's numeric columns are centred on CENTRES[k]


def labelled_table(counts=(60, 30, 20), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``len(counts)`` classes told apart by the numeric columns' centre and
    by the first categorical column (class k mostly level k)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k, n in enumerate(counts):
        x = torch.zeros(n, 7)
        x[:, [0, 4]] = CENTRES[k] + 0.5 * torch.randn(n, 2, generator=g)
        level = torch.where(torch.rand(n, generator=g) < 0.9, k, (k + 1) % 3)
        x[torch.arange(n), 1 + level] = 1.0
        x[torch.arange(n), 5 + torch.randint(2, (n,), generator=g)] = 1.0
        xs.append(x)
        ys.append(torch.full((n,), k))
    return torch.cat(xs), torch.cat(ys)


def labelled_images(counts=(24, 12), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images: class 0 bright on the left half, class 1 bright on the right half."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k, n in enumerate(counts):
        base = torch.zeros(1, 8, 8)
        if k == 0:
            base[:, :, :4] = 0.9
        else:
            base[:, :, 4:] = 0.9
        xs.append((base + 0.05 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1).reshape(n, -1))
        ys.append(torch.full((n,), k))
    return torch.cat(xs), torch.cat(ys)


def cvae(**kw) -> VAEGenerator:
    kw.setdefault("steps", 30)
    return VAEGenerator(conditional=True, **kw)


def cdiffusion(**kw) -> DiffusionGenerator:
    kw.setdefault("steps", 30)
    kw.setdefault("sample_steps", 5)
    return DiffusionGenerator(conditional=True, **kw)


MAKERS = [pytest.param(cvae, id="vae"), pytest.param(cdiffusion, id="diffusion")]


def one_hot_exact(rows: torch.Tensor, schema: FeatureSchema) -> bool:
    for group in schema.categorical_groups:
        block = rows[:, list(group)]
        if not (((block == 0) | (block == 1)).all() and (block.sum(1) == 1).all()):
            return False
    return True


# ------------------------------------------------------------------ contract


@pytest.mark.parametrize("make", MAKERS)
def test_conditional_fit_and_sample_per_label(make):
    x, y = labelled_table()
    gen = make().fit_labelled(x, y, SCHEMA, seed=0, num_classes=3)
    assert gen.conditional and gen.class_counts_ == [60, 30, 20]
    for k in range(3):
        for n in (0, 1, 23):
            rows = gen.sample(n, generator_seed=5, label=k)
            assert rows.shape == (n, 7) and rows.dtype == torch.float32
            assert torch.isfinite(rows).all() and one_hot_exact(rows, SCHEMA)
    a = gen.sample(40, 7, label=1)
    assert torch.equal(a, gen.sample(40, 7, label=1))  # same seed and label, same rows
    assert not torch.equal(a, gen.sample(40, 8, label=1))
    assert not torch.equal(a, gen.sample(40, 7, label=2))  # the label is used
    again = make().fit_labelled(x, y, SCHEMA, seed=0, num_classes=3)
    assert torch.equal(a, again.sample(40, 7, label=1)) and again.loss_history_ == gen.loss_history_
    # a label-stratified row order does not matter to the contract: labels are per row
    view = gen.for_class(2)
    assert isinstance(view, ClassView) and view.label == 2 and "class 2" in view.name
    assert torch.equal(view.sample(9, 3), gen.sample(9, 3, label=2))


@pytest.mark.parametrize("make", MAKERS)
def test_conditional_contract_errors(make):
    x, y = labelled_table()
    with pytest.raises(VTSSError, match="fit_labelled"):
        make().fit(x, SCHEMA)
    with pytest.raises(VTSSError, match="one label per row"):
        make().fit_labelled(x, y[:-1], SCHEMA)
    with pytest.raises(VTSSError, match="integer"):
        make().fit_labelled(x, y.float(), SCHEMA)
    with pytest.raises(VTSSError, match="0..1"):
        make().fit_labelled(x, y, SCHEMA, num_classes=2)
    with pytest.raises(VTSSError, match="before fit"):
        make().sample(3, 0, label=0)
    gen = make(steps=2).fit_labelled(x[:90], y[:90], SCHEMA, num_classes=3)  # no class-2 rows
    assert gen.class_counts_ == [60, 30, 0]
    with pytest.raises(VTSSError, match="pass label="):
        gen.sample(3, 0)
    with pytest.raises(VTSSError, match="outside"):
        gen.sample(3, 0, label=3)
    with pytest.raises(VTSSError, match="no training rows"):
        gen.sample(3, 0, label=2)
    with pytest.raises(VTSSError, match="no training rows"):
        gen.for_class(2)
    with pytest.raises(VTSSError, match="through its conditional generator"):
        gen.for_class(0).fit(x, SCHEMA)


def test_per_class_generators_refuse_labels_and_fit_labelled():
    x, y = labelled_table()
    for gen in (VAEGenerator(steps=2), SMOTEGenerator()):
        assert not gen.conditional
        with pytest.raises(VTSSError, match="one class per fit"):
            gen.fit_labelled(x, y, SCHEMA)
        gen.fit(x[:60], SCHEMA)
        with pytest.raises(VTSSError, match="without label="):
            gen.sample(3, 0, label=0)
        with pytest.raises(VTSSError, match="not conditional"):
            gen.for_class(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conditional": "yes"}, "conditional"),
        ({"conditional": True, "label_dropout": 0.0, "guidance_scale": 2.0}, "label_dropout > 0"),
        ({"label_dropout": 1.0}, "below 1"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
    ],
)
def test_bad_guidance_parameters_raise(kwargs, match):
    with pytest.raises(VTSSError, match=match):
        DiffusionGenerator(**kwargs)
    if "conditional" in kwargs and len(kwargs) == 1:
        with pytest.raises(VTSSError, match=match):
            VAEGenerator(**kwargs)


def test_unguided_conditional_diffusion_needs_no_label_dropout():
    x, y = labelled_table()
    gen = cdiffusion(guidance_scale=1.0, label_dropout=0.0).fit_labelled(x, y, SCHEMA)
    assert gen.sample(5, 0, label=0).shape == (5, 7)
    guided = cdiffusion(guidance_scale=3.0).fit_labelled(x, y, SCHEMA)
    plain = cdiffusion(guidance_scale=1.0).fit_labelled(x, y, SCHEMA)
    # the same training (guidance acts at sampling only), other rows
    assert guided.loss_history_ == plain.loss_history_
    assert not torch.equal(guided.sample(20, 0, label=1), plain.sample(20, 0, label=1))


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: VAEGenerator(steps=800, conditional=True), id="vae"),
        pytest.param(
            lambda: DiffusionGenerator(steps=300, sample_steps=20, conditional=True), id="diffusion"
        ),
    ],
)
def test_conditional_table_models_learn_each_class(make):
    x, y = labelled_table((120, 40, 20))
    gen = make().fit_labelled(x, y, SCHEMA, seed=0)
    for k, centre in enumerate(CENTRES):
        rows = gen.sample(400, k, label=k)
        assert rows[:, [0, 4]].mean(0).sub(centre).abs().max() < 1.0, (k, rows[:, [0, 4]].mean(0))
        # the class's own category level dominates (0.92, 0.80, 0.90 of the real rows)
        assert rows[:, 1 + k].mean() > 0.65, (k, rows[:, 1 + k].mean())


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: VAEGenerator(steps=200, width=8, lr=3e-3, conditional=True), id="vae"),
        pytest.param(
            # guided: after 150 steps the plain conditional model's contrast is weaker
            lambda: DiffusionGenerator(
                steps=150, width=8, sample_steps=8, conditional=True, guidance_scale=2.0
            ),
            id="diffusion",
        ),
    ],
)
def test_conditional_image_models_draw_each_class_pattern(make):
    x, y = labelled_images()
    schema = FeatureSchema.image(1, 8, 8)
    gen = make().fit_labelled(x, y, schema, seed=0)
    assert gen.kind_ == "image"
    means = [x[y == k].mean(0) for k in (0, 1)]
    for k in (0, 1):
        rows = gen.sample(32, 0, label=k)
        assert rows.shape == (32, 64) and rows.min() >= 0 and rows.max() <= 1
        own, other = ((rows.mean(0) - m).norm() for m in (means[k], means[1 - k]))
        assert own < 0.5 * other, (k, own, other)


# ------------------------------------------------------------------ pool builder


def three_class_frame(counts=(90, 30, 20), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = sum(counts)
    labels = np.repeat(["a", "b", "c"], counts)
    frame = pd.DataFrame(
        {
            "u": rng.normal(size=n) + np.repeat([0.0, 2.0, -2.0], counts),
            "v": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], n),
            "y": labels,
        }
    )
    return frame


def table_dm(generator, seed: int = 0) -> TabularDataModule:
    dm = TabularDataModule.from_frame(
        three_class_frame(), target="y", generator=generator, batch_size=64, seed=seed
    )
    dm.setup()
    return dm


class CountingVAE(VAEGenerator):
    """A conditional VAE that records the labels of every fit_labelled call."""

    calls: list[list[int]] = []

    def _fit_labelled(self, x, y, schema, seed, num_classes):
        CountingVAE.calls.append(torch.bincount(y.cpu(), minlength=num_classes).tolist())
        super()._fit_labelled(x, y, schema, seed, num_classes)


def test_pool_fits_one_conditional_model_on_every_training_row():
    CountingVAE.calls = []
    dm = table_dm(CountingVAE(steps=20, conditional=True))
    fitted = []
    dm.pool_builder.on_generator_fitted = lambda who, s: fitted.append(who)
    split = dm.active
    sizes = {k: g for k, g in split.gaps.items() if g > 0}
    pool = dm.prepare_pool(sizes)
    assert sorted(pool.rows) == [1, 2] and all(len(pool.rows[k]) == m for k, m in sizes.items())
    # one fit for the split, on its training rows of all three classes (no validation row)
    assert CountingVAE.calls == [split.class_counts] and sum(split.class_counts) == len(
        split.x_train
    )
    assert len(fitted) == 1 and "all classes" in fitted[0]
    views = [split.generators[k] for k in (1, 2)]
    assert all(isinstance(v, ClassView) for v in views)
    assert views[0].generator is views[1].generator  # one shared model
    assert [v.label for v in views] == [1, 2]
    bigger = {k: m + 30 for k, m in sizes.items()}
    dm.prepare_pool(bigger)  # a larger draw reuses the fitted model
    assert len(CountingVAE.calls) == 1
    assert all(one_hot_exact(pool.rows[k], split.preprocessor.schema) for k in (1, 2))


@pytest.mark.parametrize("make", MAKERS)
def test_conditional_pool_prefixes_are_nested_per_class(make):
    def pool(sizes, chunk=16):
        dm = table_dm(make(steps=10))
        dm.pool_builder.chunk_rows = chunk
        return dm.prepare_pool(sizes).rows

    small = pool({1: 20, 2: 7})
    large = pool({1: 75, 2: 40})  # several chunks each
    for k, m in ((1, 20), (2, 7)):
        assert torch.equal(small[k], large[k][:m]), k
    # growing one DataModule's pool draws only the missing chunks and keeps the rows
    dm = table_dm(make(steps=10))
    dm.pool_builder.chunk_rows = 16
    first = dm.prepare_pool({1: 20, 2: 7}).rows
    grown = dm.prepare_pool({1: 75, 2: 40}).rows
    assert torch.equal(grown[1], large[1]) and torch.equal(grown[2], large[2])
    assert torch.equal(first[1], small[1])
    # the classes come from one model but draw distinct rows
    assert not torch.equal(large[1][:7], large[2][:7])


def test_conditional_image_pool_in_an_image_datamodule():
    x, y = labelled_images((40, 14))
    dm = ImageDataModule(
        x=x.reshape(-1, 1, 8, 8),
        y=y.numpy(),
        generator=cdiffusion(steps=10, width=8),
        batch_size=32,
    )
    dm.setup()
    rows = dm.prepare_pool({1: 12}).rows[1]
    assert rows.shape == (12, 64) and rows.min() >= 0 and rows.max() <= 1
    assert isinstance(dm.active.generators[1], ClassView)


def test_fit_generator_for_a_conditional_template_holds_out_only_the_given_class_rows():
    """TG-VTSS's cross-fitting calls fit_generator with some rows of the minority class:
    a conditional model gets those rows and every row of the other classes."""
    CountingVAE.calls = []
    dm = table_dm(CountingVAE(steps=10, conditional=True))
    split = dm.active
    builder = dm.pool_builder
    positions = torch.nonzero(split.y_train.cpu() == 2).flatten().numpy()[:-5]
    view = builder.fit_generator(split, positions, 11, "a fold")
    assert isinstance(view, ClassView) and view.label == 2
    counts = split.class_counts
    assert CountingVAE.calls == [[counts[0], counts[1], counts[2] - 5]]
    rows = builder.sample(split, view, 30, 3, "")
    assert rows.shape == (30, split.x_train.shape[1])
    mixed = torch.nonzero(split.y_train.cpu() >= 1).flatten().numpy()
    with pytest.raises(VTSSError, match="one class at a time"):
        builder.fit_generator(split, mixed, 11, "a fold")


def test_tg_diagnostics_run_with_a_conditional_generator():
    from vtss_lightning.search.tg import tg_diagnostics

    x, y = simulate_paper_linear(1500, 100, np.random.default_rng(0))
    CountingVAE.calls = []
    dm = TabularDataModule.from_arrays(x, y, generator=CountingVAE(steps=20, conditional=True))
    dm.setup()
    model = TabularClassifier()
    model.build(dm.n_features, 2)
    diag = tg_diagnostics(model, dm, folds=3)
    assert diag.generator_quality is not None  # asymmetric: the generator was cross-fitted
    assert np.isfinite(diag.gqs) and np.isfinite(diag.rho)
    # three cross-fits, each on every majority row and two folds of the minority rows
    n0, n1 = dm.active.class_counts
    assert len(CountingVAE.calls) == 3
    assert all(c[0] == n0 and c[1] < n1 for c in CountingVAE.calls)
    assert sum(n1 - c[1] for c in CountingVAE.calls) == n1  # each minority row held out once


def test_vtss_search_end_to_end_with_a_conditional_generator(tmp_path):
    import json

    import pytorch_lightning as pl
    from helpers import quiet_trainer

    from vtss_lightning import VTSSCallback

    dm = TabularDataModule.from_frame(
        three_class_frame(),
        target="y",
        generator=DiffusionGenerator(steps=30, sample_steps=5, conditional=True),
        batch_size=64,
    )
    pl.seed_everything(0)
    trainer = quiet_trainer(
        accelerator="cpu",
        max_epochs=2,
        default_root_dir=str(tmp_path),
        callbacks=[VTSSCallback(ratios=[0, 1], folds=None, verbose=False)],  # the hold-out
        logger=False,
    )
    trainer.fit(TabularClassifier(hidden_dims=[]), datamodule=dm)
    report = json.loads((tmp_path / "vtss_report.json").read_text())
    assert "conditional=True" in report["config"]["generator"]
    assert all(np.isfinite(c["val_balanced_loss"]) for c in report["candidates"])
    views = dm.active.generators.values()
    assert views and all(isinstance(v, ClassView) for v in views)
    assert len({id(v.generator) for v in views}) == 1
