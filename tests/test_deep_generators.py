"""VAEGenerator and DiffusionGenerator: counts, dtypes, one-hot validity, images, seeds,
learning, precision, progress, errors, and a VTSS search end-to-end (tiny CPU sizes)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from helpers import quiet_trainer

from vtss_lightning import TabularDataModule, VTSSCallback
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators import DiffusionGenerator, SyntheticGenerator, VAEGenerator
from vtss_lightning.generators._deep import autocast_dtype
from vtss_lightning.models import TabularClassifier

torch.set_num_threads(1)

# 2 numeric columns, a 3-level and a 2-level one-hot group (numeric not first).
SCHEMA = FeatureSchema(n_features=7, numeric=(0, 4), categorical_groups=((1, 2, 3), (5, 6)))


def table(n: int = 60, seed: int = 0, probs=(0.7, 0.2, 0.1)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g)
    a = torch.multinomial(torch.tensor(probs), n, replacement=True, generator=g)
    b = torch.randint(2, (n,), generator=g)
    x = torch.zeros(n, 7)
    x[:, 0] = 3 + 2 * z
    x[:, 4] = -1 + 2 * (0.95 * z + 0.31 * torch.randn(n, generator=g))  # corr ~0.95
    x[torch.arange(n), 1 + a] = 1.0
    x[torch.arange(n), 5 + b] = 1.0
    return x


def images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A fixed bright left half / dark right half pattern plus a little noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(c, h, w)
    base[:, :, : w // 2] = 0.9
    x = (base + 0.05 * torch.randn(n, c, h, w, generator=g)).clamp(0, 1)
    return x.reshape(n, -1)


def vae(**kw) -> VAEGenerator:
    kw.setdefault("steps", 40)
    return VAEGenerator(**kw)


def diffusion(**kw) -> DiffusionGenerator:
    kw.setdefault("steps", 40)
    kw.setdefault("sample_steps", 5)
    return DiffusionGenerator(**kw)


MAKERS = [pytest.param(vae, id="vae"), pytest.param(diffusion, id="diffusion")]


def one_hot_exact(rows: torch.Tensor, schema: FeatureSchema) -> bool:
    for group in schema.categorical_groups:
        block = rows[:, list(group)]
        if not (((block == 0) | (block == 1)).all() and (block.sum(1) == 1).all()):
            return False
    return True


# ------------------------------------------------------------------ contract


@pytest.mark.parametrize("make", MAKERS)
def test_table_counts_dtype_device_and_exact_one_hot(make):
    gen = make().fit(table(), SCHEMA, seed=0)
    assert isinstance(gen, SyntheticGenerator) and gen.kind_ == "table"
    for n in (0, 1, 37):
        rows = gen.sample(n, generator_seed=5)
        assert rows.shape == (n, 7) and rows.dtype == torch.float32
        assert rows.device == torch.device("cpu")
        assert torch.isfinite(rows).all() and one_hot_exact(rows, SCHEMA)
    # numeric columns are not pinned to 0/1
    assert rows[:, [0, 4]].std(0).min() > 0.1


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 28, 28), (1, 5, 7)], ids=str)
def test_images_come_back_flat_in_unit_interval(make, shape):
    schema = FeatureSchema.image(*shape)
    # 28 x 28 x 3 only checks shapes and padding: two optimizer steps
    gen = make(steps=2 if shape[1] == 28 else 20, width=8).fit(images(12, *shape), schema, seed=0)
    assert gen.kind_ == "image"
    rows = gen.sample(9, generator_seed=1)
    assert rows.shape == (9, schema.n_features) and rows.dtype == torch.float32
    assert rows.min() >= 0 and rows.max() <= 1


@pytest.mark.parametrize("make", MAKERS)
def test_same_seed_same_rows_other_seed_other_rows(make):
    x = table()
    a = make().fit(x, SCHEMA, seed=3)
    b = make().fit(x, SCHEMA, seed=3)
    c = make().fit(x, SCHEMA, seed=4)
    before = torch.random.get_rng_state()
    s = a.sample(50, 11)
    assert torch.equal(torch.random.get_rng_state(), before)  # the user's RNG is untouched
    assert torch.equal(s, b.sample(50, 11))
    assert torch.equal(s, a.sample(50, 11))
    assert not torch.equal(s, a.sample(50, 12))
    assert not torch.equal(s, c.sample(50, 11))
    assert a.loss_history_ == b.loss_history_


def test_fit_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    vae(steps=5).fit(table(), SCHEMA, seed=0)
    diffusion(steps=5).fit(table(), SCHEMA, seed=0)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------ learning


def _corr(rows: torch.Tensor) -> float:
    return float(torch.corrcoef(rows[:, [0, 4]].T)[0, 1])


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: VAEGenerator(steps=s, batch_size=64), id="vae"),
        pytest.param(
            lambda s: DiffusionGenerator(steps=s, batch_size=64, sample_steps=25), id="diffusion"
        ),
    ],
)
def test_table_generators_learn_correlation_spread_and_category_frequencies(make):
    x = table(150, seed=1, probs=(0.75, 0.25, 0.0))
    gen = make(400).fit(x, SCHEMA, seed=0)
    trained = gen.sample(2000, 0)
    untrained = make(1).fit(x, SCHEMA, seed=0).sample(2000, 0)
    assert _corr(x) > 0.9
    assert _corr(trained) > 0.8
    assert abs(_corr(untrained)) < 0.5
    # the spread is right to within a factor (an untrained denoiser's DDIM output has
    # none of the data's structure; with 400 steps, deterministic DDIM still
    # overshoots ~1.3x and the VAE undershoots a little)
    std_ratio = trained[:, [0, 4]].std(0) / x[:, [0, 4]].std(0)
    assert ((std_ratio > 0.6) & (std_ratio < 1.5)).all(), std_ratio
    freq = trained[:, 1:4].mean(0)
    assert freq[0] == pytest.approx(0.75, abs=0.1) and freq[2] < 0.05, freq
    assert gen.loss_history_[-1][1] < gen.loss_history_[0][1]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s: VAEGenerator(steps=s, width=8, lr=3e-3), id="vae"),
        pytest.param(lambda s: DiffusionGenerator(steps=s, width=8, sample_steps=10), id="diff"),
    ],
)
def test_image_generators_learn_the_mean_image(make):
    x = images(40, 1, 8, 8)
    schema = FeatureSchema.image(1, 8, 8)
    mean = x.mean(0)
    err_trained = (make(200).fit(x, schema, seed=0).sample(200, 0).mean(0) - mean).norm()
    err_untrained = (make(1).fit(x, schema, seed=0).sample(200, 0).mean(0) - mean).norm()
    # the mean image's norm is ~5.1; an untrained model is ~3.5 away from it
    assert err_trained < 0.6 * err_untrained


# ------------------------------------------------------------------ settings


def test_epochs_alternative_counts_optimizer_steps():
    gen = vae(steps=None, epochs=2, batch_size=16, log_every=1000).fit(table(50), SCHEMA)
    assert gen.loss_history_[-1][0] == 2 * 4  # ceil(50 / 16) steps per pass
    gen = diffusion(steps=None, epochs=3, batch_size=100).fit(table(50), SCHEMA)
    assert gen.loss_history_[-1][0] == 3  # batches capped at the class size


def test_argmax_decoding_and_no_categorical_columns():
    x = table(80, probs=(0.9, 0.1, 0.0))
    rows = vae(steps=300, categorical="argmax").fit(x, SCHEMA, seed=0).sample(200, 0)
    assert one_hot_exact(rows, SCHEMA) and rows[:, 1].mean() > 0.95
    numeric = FeatureSchema.all_numeric(3)
    for make in (vae, diffusion):
        out = make(steps=5).fit(torch.randn(20, 3), numeric).sample(4, 0)
        assert out.shape == (4, 3)


def test_precision_plan_and_bf16_on_cpu():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cpu, "32") is None
    assert autocast_dtype(cpu, "16") is None  # fp16 needs CUDA's gradient scaler
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    for make in (vae, diffusion):
        gen = make(steps=5, precision="bf16").fit(table(), SCHEMA)
        rows = gen.sample(10, 0)
        assert rows.dtype == torch.float32 and torch.isfinite(rows).all()


def test_verbose_prints_progress(capsys):
    diffusion(steps=6, log_every=3, verbose=True).fit(table(), SCHEMA)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("diffusion:")]
    assert [ln.split()[2] for ln in lines] == ["3/6", "6/6"]
    vae(steps=6, log_every=3).fit(table(), SCHEMA)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (VAEGenerator, {"steps": 10, "epochs": 2}, "steps or epochs"),
        (VAEGenerator, {"steps": 0}, "steps"),
        (VAEGenerator, {"lr": 0.0}, "lr"),
        (VAEGenerator, {"precision": "64"}, "precision"),
        (VAEGenerator, {"categorical": "mode"}, "categorical"),
        (VAEGenerator, {"width": 0}, "width"),
        (VAEGenerator, {"beta": -1.0}, "beta"),
        (DiffusionGenerator, {"sample_steps": 2000}, "cannot exceed"),
        (DiffusionGenerator, {"schedule": "sigmoid"}, "schedule"),
        (DiffusionGenerator, {"eta": 2.0}, "eta"),
        (DiffusionGenerator, {"ema": 1.0}, "ema"),
        (DiffusionGenerator, {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_parameters_raise(make, kwargs, match):
    with pytest.raises(VTSSError, match=match):
        make(**kwargs)


@pytest.mark.parametrize("make", MAKERS)
def test_bad_input_raises(make):
    with pytest.raises(VTSSError, match=r"\[0, 1\]"):
        make().fit(torch.randn(10, 64), FeatureSchema.image(1, 8, 8))
    with pytest.raises(VTSSError, match="at least 2"):
        make().fit(table(1), SCHEMA)
    with pytest.raises(VTSSError, match="before fit"):
        make().sample(3, 0)


def test_linear_schedule_and_stochastic_ddim_work():
    gen = diffusion(schedule="linear", eta=1.0, steps=30).fit(table(), SCHEMA, seed=0)
    a, b = gen.sample(20, 1), gen.sample(20, 1)
    assert torch.equal(a, b) and one_hot_exact(a, SCHEMA)


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize(
    "generator",
    [
        pytest.param(VAEGenerator(steps=30), id="vae"),
        pytest.param(DiffusionGenerator(steps=30, sample_steps=5), id="diffusion"),
    ],
)
def test_vtss_search_end_to_end(tmp_path, generator):
    rng = np.random.default_rng(0)
    n_neg, n_pos = 100, 30
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n_neg + n_pos),
            "b": rng.normal(size=n_neg + n_pos),
            "colour": rng.choice(["red", "green", "blue"], n_neg + n_pos),
            "y": ["neg"] * n_neg + ["pos"] * n_pos,
        }
    )
    frame.loc[n_neg:, "a"] += 1.5
    dm = TabularDataModule.from_frame(frame, target="y", generator=generator, batch_size=64)
    pl.seed_everything(0)
    cb = VTSSCallback(ratios=[0, 1, 2], folds=None, verbose=False)  # the hold-out pool below
    trainer = quiet_trainer(
        accelerator="cpu",
        max_epochs=2,
        default_root_dir=str(tmp_path),
        callbacks=[cb],
        logger=False,
    )
    trainer.fit(TabularClassifier(hidden_dims=[]), datamodule=dm)
    report = json.loads((tmp_path / "vtss_report.json").read_text())
    assert [c["sizes"]["pos"] for c in report["candidates"]] == [0, 56, 112]
    assert all(np.isfinite(c["val_balanced_loss"]) for c in report["candidates"])
    pool = dm.holdout.pool.rows[1]
    assert pool.shape == (112, dm.n_features) and pool.dtype == torch.float32
    assert one_hot_exact(pool, dm.holdout.preprocessor.schema)
