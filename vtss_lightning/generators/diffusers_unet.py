"""A Hugging Face ``diffusers`` UNet as the image generator (optional: ``pip install
vtss-lightning[diffusers]``); ``diffusers`` is imported only when one is fitted."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from vtss_lightning._random import seeded
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._common import check_int, cpu_generator
from vtss_lightning.generators._deep import (
    TRAIN_PARAMS,
    OneNetGenerator,
    TrainSettings,
    autocast,
    autocast_dtype,
    check_image_rows,
    fit_net,
    in_chunks,
    train_settings,
)
from vtss_lightning.generators.diffusion import guidance_settings
from vtss_lightning.generators.nets import pad_image, padded_size

SCHEDULERS = ("ddpm", "ddim")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
DEFAULT_STEPS = 1000
DEFAULT_BATCH = 64
DEFAULT_LR = {"fresh": 1e-3, "pretrained": 1e-4}


def require_diffusers() -> Any:
    """The ``diffusers`` module, or a VTSSError that says how to install it."""
    try:
        import diffusers
    except ImportError as exc:
        raise VTSSError(
            "DiffusersGenerator needs the optional diffusers package: "
            "pip install 'vtss-lightning[diffusers]'"
        ) from exc
    return diffusers


def default_unet_config(image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """A small UNet for ``(C, H, W)`` images: 2 resolution levels below 16 px, 3 from 16 px."""
    small = min(image_shape[1:]) < 16
    channels = (32, 64) if small else (32, 64, 64)
    return {"block_out_channels": channels, "layers_per_block": 1, "norm_num_groups": 8}


def _is_pipeline(obj: object) -> bool:
    return hasattr(obj, "unet") and hasattr(obj, "scheduler")


def _is_model(obj: object) -> bool:
    return isinstance(obj, torch.nn.Module) and hasattr(obj, "config")


class DiffusersGenerator(OneNetGenerator):
    """Images from a ``diffusers`` ``UNet2DModel``: trained here, fine-tuned or sampled.

    ``unet`` is either a ``UNet2DModel`` *config* (a dict; ``None`` gives a small
    default), trained here from a seeded initialisation on the training images, or a
    user's model: a ``UNet2DModel`` instance, or a diffusers pipeline (anything with
    ``.unet`` and ``.scheduler``, e.g. a ``DDPMPipeline`` from ``from_pretrained``, whose
    scheduler's noise schedule and prediction type are then kept), fine-tuned on the
    training images (``train=True``) or sampled as it is (``train=False``). Nothing is
    ever downloaded here: load a pretrained pipeline yourself and pass it.

    With ``conditional=True`` (default) one model is fitted per split on the training
    images of every class, the class index ``k`` fed to the UNet's class embedding
    (``num_class_embeds``: a config gets ``num_classes + 1``, the last row the null
    class); labels are dropped to the null class with probability ``label_dropout``
    and class ``k`` is sampled with classifier-free guidance ``guidance_scale`` (1: no
    guidance). A user's class-conditional model must use class ``k``'s embedding for
    class index ``k`` and its last embedding as the null class. ``conditional=False``
    fits an unconditional copy per minority class, as :class:`DiffusionGenerator` does.

    Images (rows of ``C*H*W`` pixels in ``[0, 1]``, shape from ``schema.image_shape``)
    are mapped to ``[-1, 1]`` and padded bottom/right with black to a multiple of the
    UNet's downsampling (and to a pretrained model's ``sample_size``); samples are
    cropped back. Training is DDPM's noise-prediction loss (or the scheduler's
    ``v_prediction`` / ``sample`` target) with :class:`DiffusionGenerator`'s loop
    (AdamW, warm-up and cosine decay, EMA weights, autocast on CUDA), seeded by
    ``seed`` only; sampling runs the ``scheduler`` (``"ddim"``: deterministic given the
    starting noise, ``"ddpm"``: ancestral) over ``inference_steps`` steps, drawing
    every random number from a seeded CPU generator.

    Parameters
    ----------
    unet
        ``None``, a ``UNet2DModel`` config dict (``in_channels``, ``out_channels``,
        ``sample_size`` and ``num_class_embeds`` are filled in where absent; block types
        default to ``DownBlock2D`` / ``UpBlock2D`` per entry of ``block_out_channels``
        and ``norm_num_groups`` to the largest divisor of 32 that divides every
        channel count), a ``UNet2DModel``, or a pipeline with ``.unet`` and ``.scheduler``.
    scheduler
        Sampler: ``"ddim"`` or ``"ddpm"``.
    conditional
        One class-conditional model (default) or one unconditional model per class.
    num_train_timesteps, beta_schedule
        The noise schedule of a model trained here or a bare ``UNet2DModel`` (a
        pipeline's own scheduler config is used instead).
    inference_steps
        Denoising steps per sample.
    guidance_scale, label_dropout
        Classifier-free guidance weight (1 = none, the default, as for
        :class:`DiffusionGenerator`) and the training label dropout (the null class is
        trained either way, so a larger ``guidance_scale`` can be set after fitting).
    train
        ``False``: sample a user's (pretrained) model without any optimizer step.
    steps, epochs, lr, weight_decay, batch_size, ema, precision, verbose, log_every
        As for :class:`DiffusionGenerator`; default 1000 steps, batches of 64, ``lr``
        1e-3 for a model trained from scratch and 1e-4 to fine-tune a user's model.
    sample_batch
        Images denoised at once.
    """

    name: ClassVar[str] = "diffusers"
    min_rows: ClassVar[int] = 2

    def __init__(
        self,
        unet: Mapping[str, Any] | Any | None = None,
        scheduler: str = "ddim",
        conditional: bool = True,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        inference_steps: int = 50,
        guidance_scale: float = 1.0,
        label_dropout: float = 0.1,
        train: bool = True,
        steps: int | None = None,
        epochs: int | None = None,
        lr: float | None = None,
        weight_decay: float = 1e-4,
        batch_size: int | None = None,
        ema: float = 0.995,
        precision: str = "auto",
        verbose: bool = False,
        log_every: int = 100,
        sample_batch: int = 256,
    ) -> None:
        super().__init__()
        who = "DiffusersGenerator"
        if not (unet is None or isinstance(unet, Mapping) or _is_model(unet) or _is_pipeline(unet)):
            raise VTSSError(
                f"{who}: unet must be None, a UNet2DModel config dict, a UNet2DModel or a "
                f"diffusers pipeline, got {type(unet).__name__}"
            )
        self.unet = dict(unet) if isinstance(unet, Mapping) else unet
        if scheduler not in SCHEDULERS:
            raise VTSSError(f"{who}: scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        self.scheduler = scheduler
        if beta_schedule not in BETA_SCHEDULES:
            raise VTSSError(
                f"{who}: beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}"
            )
        self.beta_schedule = beta_schedule
        self.num_train_timesteps = check_int(who, "num_train_timesteps", num_train_timesteps, 2)
        self.inference_steps = check_int(who, "inference_steps", inference_steps, 1)
        if self.inference_steps > self.num_train_timesteps:
            raise VTSSError(
                f"{who}: inference_steps ({inference_steps}) cannot exceed "
                f"num_train_timesteps ({num_train_timesteps})"
            )
        self.conditional, self.guidance_scale, self.label_dropout = guidance_settings(
            who, conditional, guidance_scale, label_dropout
        )
        if not isinstance(train, bool):
            raise VTSSError(f"{who}: train must be True or False, got {train!r}")
        self.train = train
        s = train_settings(
            who,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            precision=precision,
            verbose=verbose,
            log_every=log_every,
            ema=ema,
        )
        self._keep_train_settings(s)
        self.sample_batch = check_int(who, "sample_batch", sample_batch, 1)
        #: ``(step, mean training loss)`` records of the last fit (empty with ``train=False``).
        self.loss_history_: list[tuple[int, float]] = []

    @property
    def settings(self) -> TrainSettings:
        """The optimisation parameters, validated again (they may have been changed)."""
        return train_settings(
            "DiffusersGenerator", **{n: getattr(self, n) for n in TRAIN_PARAMS}, ema=self.ema
        )

    @property
    def pretrained(self) -> bool:
        """Whether ``unet`` is a user's model (or pipeline) rather than a config."""
        return self.unet is not None and not isinstance(self.unet, Mapping)

    # ----------------------------------------------------------------- fitting

    def _fit_model(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        schema: FeatureSchema | None,
        seed: int,
        num_classes: int,
    ) -> None:
        """Build (or copy) the UNet and train it in a scope seeded by ``seed``."""
        assert schema is not None  # base.fit validated x and filled in the schema
        self._check_fit(schema)
        check_image_rows(x, self.name)
        require_diffusers()
        self._schema, self._n_classes = schema, num_classes
        c, h, w = schema.image_shape  # type: ignore[misc]
        device = x.device
        with seeded(int(seed), cuda=device.type != "cpu"):
            unet = self._build_unet(schema.image_shape, num_classes).to(device)  # type: ignore[arg-type]
            self._train_config = self._noise_config()
            noise = _scheduler("ddpm", self._train_config)
            img = x.clamp(0.0, 1.0).reshape(-1, c, h, w) * 2 - 1
            z = pad_image(img, *self._padded, value=-1.0)
            self.loss_history_ = []
            if self.train:
                kind = "pretrained" if self.pretrained else "fresh"
                settings = self.settings.resolved(DEFAULT_BATCH, DEFAULT_LR[kind])
                steps = settings.total_steps(len(z), DEFAULT_STEPS)
                loss_fn = self._loss(unet, noise)
                self.loss_history_ = fit_net(
                    unet, loss_fn, z, settings, steps, seed, self.name, y=y
                )
        self.unet_ = unet.eval().requires_grad_(False)

    def _check_fit(self, schema: FeatureSchema) -> None:
        if schema.image_shape is None:
            raise VTSSError(
                "DiffusersGenerator works on images (a schema with image_shape, as "
                "ImageDataModule builds); use DiffusionGenerator for tables"
            )
        if not self.train and not self.pretrained:
            raise VTSSError(
                "DiffusersGenerator(train=False) samples a user's pretrained UNet2DModel or "
                "pipeline as it is; pass one as unet= (a config has nothing learned yet)"
            )
        if not self.train and not self.conditional:
            raise VTSSError(
                "DiffusersGenerator(train=False, conditional=False) would give every class "
                "the same untouched unconditional model; fine-tune it (train=True) instead"
            )

    def _build_unet(self, image_shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module:
        """A fresh UNet from the config, or a copy of the user's; ``_padded`` set to fit it."""
        c, h, w = image_shape
        if self.pretrained:
            user = self.unet.unet if _is_pipeline(self.unet) else self.unet
            unet = copy.deepcopy(user)
            config = dict(unet.config)
            size = config.get("sample_size")
        else:
            config = self._config(image_shape, num_classes)
            unet = require_diffusers().UNet2DModel(**config)
            size = None
        self._check_unet(config, c, num_classes)
        multiple = 2 ** (len(config["block_out_channels"]) - 1)
        sh, sw = (size, size) if isinstance(size, int) else tuple(size or (0, 0))
        self._padded = (max(padded_size(h, multiple), sh), max(padded_size(w, multiple), sw))
        if self._padded[0] % multiple or self._padded[1] % multiple:
            raise VTSSError(
                f"DiffusersGenerator: the UNet's sample_size {size} is not a multiple of its "
                f"downsampling ({multiple})"
            )
        return unet

    def _config(self, image_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        """The UNet2DModel config to train: the user's (or the default) with the data's
        channels, the padded size and the class embedding filled in."""
        c, h, w = image_shape
        config = dict(self.unet) if self.unet is not None else default_unet_config(image_shape)
        levels = len(config.get("block_out_channels", ()))
        if levels == 0:
            raise VTSSError("DiffusersGenerator: the unet config needs block_out_channels")
        config.setdefault("down_block_types", ("DownBlock2D",) * levels)
        config.setdefault("up_block_types", ("UpBlock2D",) * levels)
        config.setdefault("norm_num_groups", math.gcd(32, *config["block_out_channels"]))
        config.setdefault("in_channels", c)
        config.setdefault("out_channels", c)
        multiple = 2 ** (levels - 1)
        config.setdefault("sample_size", (padded_size(h, multiple), padded_size(w, multiple)))
        if self.conditional:
            config.setdefault("num_class_embeds", num_classes + 1)
        return config

    def _check_unet(self, config: Mapping[str, Any], channels: int, num_classes: int) -> None:
        """The UNet's channels and class embedding fit the images and the mode."""
        for key in ("in_channels", "out_channels"):
            if config.get(key) != channels:
                raise VTSSError(
                    f"DiffusersGenerator: the UNet has {key}={config.get(key)} but the images "
                    f"have {channels} channel(s)"
                )
        embeds = config.get("num_class_embeds")
        if not self.conditional:
            if embeds is not None:
                raise VTSSError(
                    "DiffusersGenerator(conditional=False) needs a UNet without class "
                    "embeddings (num_class_embeds=None)"
                )
            return
        if config.get("class_embed_type") is not None:
            raise VTSSError(
                "DiffusersGenerator: conditional mode feeds class indices to the UNet's "
                f"num_class_embeds table; class_embed_type={config['class_embed_type']!r} "
                "is not supported"
            )
        need = num_classes + (0 if self.guidance_scale == 1.0 else 1)
        if embeds is None or embeds < need:
            raise VTSSError(
                f"DiffusersGenerator: {num_classes} classes"
                + (" and the null class of guidance" if need > num_classes else "")
                + f" need num_class_embeds >= {need}, the UNet has {embeds}"
            )
        self._null = int(embeds) - 1

    def _noise_config(self) -> dict[str, Any]:
        """The training noise schedule: a pipeline's scheduler config, else the parameters."""
        if _is_pipeline(self.unet):
            return dict(self.unet.scheduler.config)
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "clip_sample": True,
            "prediction_type": "epsilon",
        }

    def _loss(self, unet: torch.nn.Module, noise_scheduler: Any):
        """DDPM's denoising loss on ``(x0, labels)`` batches, labels dropped to the null class."""
        T = int(noise_scheduler.config.num_train_timesteps)
        target_kind = noise_scheduler.config.prediction_type
        drop = self.label_dropout

        def loss_fn(x0: torch.Tensor, yb: torch.Tensor | None = None) -> torch.Tensor:
            t = torch.randint(T, (x0.shape[0],), device=x0.device)
            eps = torch.randn_like(x0)
            xt = noise_scheduler.add_noise(x0, eps, t)
            if yb is not None and drop > 0:
                yb = torch.where(torch.rand(len(yb), device=yb.device) < drop, self._null, yb)
            pred = unet(xt, t, class_labels=yb).sample.float()
            if target_kind == "v_prediction":
                target = noise_scheduler.get_velocity(x0, eps, t)
            elif target_kind == "sample":
                target = x0
            else:
                target = eps
            return F.mse_loss(pred, target.float())

        return loss_fn

    # ---------------------------------------------------------------- sampling

    def _generate(self, n: int, seed: int, label: int | None) -> torch.Tensor:
        """``n`` images (of class ``label``, guided) from ``inference_steps`` scheduler steps."""
        device = self.device
        unet = self.unet_.to(device)
        g = cpu_generator(seed)
        dtype = autocast_dtype(device, self.settings.precision)
        c, h, w = self._schema.image_shape  # type: ignore[misc]

        def draw(m: int) -> torch.Tensor:
            sched = _scheduler(self.scheduler, self._train_config)
            sched.set_timesteps(self.inference_steps)
            x = torch.randn(m, c, *self._padded, generator=g).to(device)
            x = x * sched.init_noise_sigma
            with torch.inference_mode():
                for t in sched.timesteps:
                    with autocast(device, dtype):
                        out = self._guided(unet, sched.scale_model_input(x, t), t, label)
                    x = sched.step(out, t, x, generator=g).prev_sample
            img = (x[:, :, :h, :w].float().clamp(-1.0, 1.0) + 1) / 2
            return img.reshape(m, c * h * w)

        return in_chunks(n, self.sample_batch, draw, self._schema.n_features, device)

    def _guided(
        self, unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, label: int | None
    ) -> torch.Tensor:
        """The UNet's output at ``x``; a conditional one's guided by ``guidance_scale``."""
        if label is None:
            return unet(x, t).sample.float()
        m, scale = len(x), self.guidance_scale
        y = torch.full((m,), label, device=x.device, dtype=torch.long)
        if scale == 1.0:
            return unet(x, t, class_labels=y).sample.float()
        null = torch.full_like(y, self._null)
        both = unet(torch.cat([x, x]), t, class_labels=torch.cat([y, null])).sample.float()
        cond, uncond = both[:m], both[m:]
        return uncond + scale * (cond - uncond)


def _scheduler(kind: str, config: Mapping[str, Any]) -> Any:
    """A fresh diffusers ``DDPMScheduler`` / ``DDIMScheduler`` on the noise schedule
    ``config`` (keys the class does not take are dropped, without diffusers' warning)."""
    diffusers = require_diffusers()
    cls = diffusers.DDIMScheduler if kind == "ddim" else diffusers.DDPMScheduler
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in config.items() if k in accepted})
