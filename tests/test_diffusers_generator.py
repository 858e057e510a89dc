"""DiffusersGenerator on tiny randomly initialised UNet2DModels (never a download):
shapes, seeds, nested pool prefixes, class labels, pretrained models and pipelines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from vtss_lightning.data import ImageDataModule
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators import DiffusersGenerator
from vtss_lightning.generators.base import ClassView


def test_diffusers_is_imported_lazily():
    """No module of the package imports diffusers at import time (only inside functions)."""
    import vtss_lightning

    root = Path(vtss_lightning.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # top-level statements only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "diffusers" for n in names), path


def test_without_diffusers_it_builds_and_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    gen = DiffusersGenerator(unet={"block_out_channels": (8, 16)}, steps=1)
    assert "block_out_channels" in repr(gen)
    x = torch.rand(6, 64)
    with pytest.raises(VTSSError, match=r"pip install 'vtss-lightning\[diffusers\]'"):
        gen.fit_labelled(x, torch.tensor([0, 0, 0, 1, 1, 1]), FeatureSchema.image(1, 8, 8))


def test_bad_parameters_raise_without_diffusers():
    for kwargs, match in [
        ({"unet": 7}, "unet must be"),
        ({"scheduler": "euler"}, "scheduler"),
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"inference_steps": 2000}, "cannot exceed"),
        ({"label_dropout": 0.0, "guidance_scale": 2.0}, "label_dropout > 0"),
        ({"train": 1}, "train"),
        ({"steps": 3, "epochs": 2}, "steps or epochs"),
    ]:
        with pytest.raises(VTSSError, match=match):
            DiffusersGenerator(**kwargs)


diffusers = pytest.importorskip("diffusers")

torch.set_num_threads(1)

#: A tiny UNet config: two levels of 8 and 16 channels, one block each, no attention.
TINY = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "add_attention": False,
}
SCHEMA = FeatureSchema.image(1, 8, 8)


def images(counts=(24, 12), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images: class 0 bright on the left half, class 1 bright on the right half."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k, n in enumerate(counts):
        base = torch.zeros(1, 8, 8)
        base[:, :, :4] = 0.9 if k == 0 else 0.0
        base[:, :, 4:] = 0.0 if k == 0 else 0.9
        xs.append((base + 0.05 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1).reshape(n, -1))
        ys.append(torch.full((n,), k))
    return torch.cat(xs), torch.cat(ys)


def tiny(**kw) -> DiffusersGenerator:
    kw.setdefault("unet", TINY)
    if "steps" not in kw:
        kw.setdefault("epochs", 1)
    kw.setdefault("batch_size", 12)
    kw.setdefault("inference_steps", 3)
    return DiffusersGenerator(**kw)


def tiny_unet(num_class_embeds=None, in_channels=1):
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
        **TINY,
    )


def test_conditional_fit_shapes_seeds_and_labels():
    x, y = images()
    gen = tiny().fit_labelled(x, y, SCHEMA, seed=0, num_classes=2)
    assert gen.conditional and gen.unet_.config.num_class_embeds == 3  # 2 classes + null
    assert gen.loss_history_[-1][0] == 3  # one pass of 36 images in batches of 12
    a = gen.sample(5, 1, label=1)
    assert a.shape == (5, 64) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, gen.sample(5, 1, label=1))
    assert not torch.equal(a, gen.sample(5, 2, label=1))
    assert not torch.equal(a, gen.sample(5, 1, label=0))  # the class embedding is used
    again = tiny().fit_labelled(x, y, SCHEMA, seed=0, num_classes=2)
    assert torch.equal(a, again.sample(5, 1, label=1))
    assert gen.sample(0, 1, label=0).shape == (0, 64)
    gen.guidance_scale = 2.0  # guidance acts at sampling only: the same model, guided
    guided = gen.sample(5, 1, label=1)
    assert guided.shape == (5, 64) and torch.equal(guided, gen.sample(5, 1, label=1))
    assert not torch.equal(guided, a)
    with pytest.raises(VTSSError, match="pass label="):
        gen.sample(2, 0)


def test_training_moves_the_class_embeddings_it_sees():
    x, y = images()
    kw = {"ema": 0.0, "steps": 4, "weight_decay": 0.0}
    table = tiny(**kw).fit_labelled(x, y, SCHEMA, seed=0, num_classes=3).unet_.class_embedding
    # the same seeded initialisation, (all but) no update: the embedding table at the start
    start = tiny(lr=1e-12, **kw).fit_labelled(x, y, SCHEMA, seed=0, num_classes=3).unet_
    assert table.weight.shape == (4, start.class_embedding.weight.shape[1])
    moved = (table.weight - start.class_embedding.weight).abs().sum(1)
    assert moved[0] > 0 and moved[1] > 0 and moved[3] > 0  # classes 0, 1 and the null row
    assert moved[2] == 0  # class 2 has no rows and is never dropped to


def test_per_class_mode_and_ddpm_scheduler():
    x, _ = images()
    gen = tiny(conditional=False, scheduler="ddpm").fit(x[:12], SCHEMA, seed=0)
    assert gen.unet_.config.num_class_embeds is None
    a = gen.sample(4, 3)
    assert a.shape == (4, 64) and torch.equal(a, gen.sample(4, 3))
    assert not torch.equal(a, gen.sample(4, 4))  # DDPM's ancestral noise is seeded too


def test_odd_image_sizes_are_padded_and_cropped():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3 * 5 * 7, generator=g)
    gen = tiny(conditional=False).fit(x, FeatureSchema.image(3, 5, 7), seed=0)
    assert gen._padded == (6, 8)
    assert gen.sample(3, 0).shape == (3, 105)


def test_nested_prefixes_in_an_image_datamodule():
    x, y = images((30, 12))

    def pool(m):
        dm = ImageDataModule(x=x.reshape(-1, 1, 8, 8), y=y.numpy(), generator=tiny(), batch_size=16)
        dm.setup()
        dm.pool_builder.chunk_rows = 4
        return dm, dm.prepare_pool({1: m}).rows[1]

    _, small = pool(5)
    dm, large = pool(11)  # three chunks of 4
    assert small.shape == (5, 64) and large.shape == (11, 64)
    assert torch.equal(small, large[:5])
    view = dm.active.generators[1]
    assert isinstance(view, ClassView) and view.generator.class_counts_ == dm.active.class_counts


def test_pretrained_unet_is_fine_tuned_on_a_copy_or_sampled_as_is():
    x, y = images()
    user = tiny_unet(num_class_embeds=3)
    before = {k: v.clone() for k, v in user.state_dict().items()}
    tuned = tiny(unet=user, steps=2).fit_labelled(x, y, SCHEMA, seed=0)
    assert all(torch.equal(v, user.state_dict()[k]) for k, v in before.items())  # untouched
    assert tuned.pretrained and [s for s, _ in tuned.loss_history_] == [2]
    assert not all(torch.equal(v, tuned.unet_.state_dict()[k]) for k, v in before.items())
    as_is = tiny(unet=user, train=False).fit_labelled(x, y, SCHEMA, seed=0)
    assert as_is.loss_history_ == []
    assert all(torch.equal(v, as_is.unet_.state_dict()[k]) for k, v in before.items())
    assert as_is.sample(3, 0, label=1).shape == (3, 64)
    assert not torch.equal(tuned.sample(3, 0, label=1), as_is.sample(3, 0, label=1))


def test_a_pipeline_brings_its_noise_schedule():
    x, y = images()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=50, beta_schedule="linear")
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=scheduler)
    gen = tiny(unet=pipe, conditional=False, steps=2).fit(x[:12], SCHEMA, seed=0)
    assert gen._train_config["num_train_timesteps"] == 50
    assert gen.sample(2, 0).shape == (2, 64)


def test_errors_at_fit():
    x, y = images()
    with pytest.raises(VTSSError, match="works on images"):
        tiny().fit_labelled(torch.rand(10, 7), torch.zeros(10, dtype=torch.long))
    with pytest.raises(VTSSError, match="pretrained"):
        tiny(train=False).fit_labelled(x, y, SCHEMA)
    with pytest.raises(VTSSError, match="in_channels"):
        tiny(unet=tiny_unet(num_class_embeds=3, in_channels=3)).fit_labelled(x, y, SCHEMA)
    with pytest.raises(VTSSError, match="num_class_embeds >= 3"):  # 2 classes + the null one
        tiny(unet=tiny_unet(num_class_embeds=2), guidance_scale=2.0).fit_labelled(x, y, SCHEMA)
    with pytest.raises(VTSSError, match="without class"):
        tiny(unet=tiny_unet(num_class_embeds=3), conditional=False).fit(x, SCHEMA)
    with pytest.raises(VTSSError, match=r"\[0, 1\]"):
        tiny(conditional=False).fit(x * 3, SCHEMA)
    # unguided sampling needs no null class
    unguided = tiny(unet=tiny_unet(num_class_embeds=2), guidance_scale=1.0, steps=1)
    assert unguided.fit_labelled(x, y, SCHEMA).sample(2, 0, label=0).shape == (2, 64)
