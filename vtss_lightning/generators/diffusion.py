"""A denoising diffusion model per minority class (or one class-conditional model with
classifier-free guidance): MLP denoiser for tables, UNet for images."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from vtss_lightning._random import seeded
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._common import (
    check_float,
    check_int,
    cpu_generator,
    group_index,
    project_one_hot,
)
from vtss_lightning.generators._deep import (
    TRAIN_PARAMS,
    OneNetGenerator,
    TrainSettings,
    autocast,
    autocast_dtype,
    check_image_rows,
    column_scaler,
    fit_net,
    in_chunks,
    train_settings,
)
from vtss_lightning.generators.nets import MLPDenoiser, UNet, pad_image, padded_size

#: Defaults per variant when the user passes ``None`` (or neither ``steps`` nor ``epochs``).
DEFAULT_STEPS = {"table": 2000, "image": 1000}
DEFAULT_LR = {"table": 3e-3, "image": 1e-3}
DEFAULT_BATCH = {"table": 128, "image": 64}


def alpha_bars(timesteps: int, schedule: str) -> torch.Tensor:
    """``prod(1 - beta_s, s <= t)`` for ``t = 0..T-1`` (float64).

    ``cosine`` is Nichol & Dhariwal (2021) with ``s = 0.008`` and betas capped at
    0.999; ``linear`` is DDPM's betas from 1e-4 to 0.02 (rescaled to ``T`` steps).
    """
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        scale = 1000.0 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def guidance_settings(
    who: str, conditional: object, guidance_scale: object, label_dropout: object
) -> tuple[bool, float, float]:
    """``conditional``, ``guidance_scale`` and ``label_dropout``, validated together."""
    if not isinstance(conditional, bool):
        raise VTSSError(f"{who}: conditional must be True or False, got {conditional!r}")
    scale = check_float(who, "guidance_scale", guidance_scale, 0.0)
    dropout = check_float(who, "label_dropout", label_dropout, 0.0, 1.0)
    if dropout >= 1.0:
        raise VTSSError(f"{who}: label_dropout must be below 1 (1 would never train the labels)")
    if conditional and dropout == 0.0 and scale != 1.0:
        raise VTSSError(
            f"{who}: guidance_scale={scale:g} needs the unconditional model that label "
            "dropout trains; set label_dropout > 0 or guidance_scale=1"
        )
    return conditional, scale, dropout


def class_ranges(
    z: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class column minima and maxima of ``z`` (``(num_classes, d)``; 0 for a class
    without rows, which is never sampled)."""
    lo = z.new_zeros(num_classes, z.shape[1])
    hi = z.new_zeros(num_classes, z.shape[1])
    for k in range(num_classes):
        rows = z[y == k]
        if len(rows):
            lo[k], hi[k] = rows.min(dim=0).values, rows.max(dim=0).values
    return lo, hi


class DiffusionGenerator(OneNetGenerator):
    """DDPM training, DDIM sampling; one unconditional model per minority class, or
    one class-conditional model with classifier-free guidance.

    By default the DataModule fits one copy per minority class on that class's
    training rows, so a class's generator never sees other classes. With
    ``conditional=True`` it fits one model per split on the training rows of *every*
    class: the denoiser adds a learned class embedding to its timestep embedding, the
    label is replaced by a null class with probability ``label_dropout`` during
    training, and class ``k`` is sampled with classifier-free guidance (Ho &
    Salimans 2022), ``eps = eps(x, null) + guidance_scale * (eps(x, k) - eps(x, null))``
    (``guidance_scale = 1``, the default: the plain conditional model, one pass per
    step; larger: more typical of class ``k``, less diverse). Training is DDPM's (Ho et al. 2020): ``T = timesteps`` noise
    levels (cosine schedule by default), a network predicts the noise ``eps`` of
    ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``, squared-error loss; the weights
    sampled with are an exponential moving average (``ema``). Sampling is DDIM
    (Song et al. 2021) over ``sample_steps`` evenly spaced levels (``eta = 0``:
    deterministic given the starting noise; ``eta = 1`` with
    ``sample_steps = timesteps`` is DDPM's ancestral sampler), with each ``x_0``
    prediction clipped to the data's range.

    * **table**: numeric columns standardised on the class rows; each categorical
      one-hot block is diffused as Gaussian "analog bits" (one-hot mapped to
      ``+-1``) and decoded by argmax per block into an exact one-hot. TabDDPM
      instead runs a multinomial diffusion on categories; the Gaussian relaxation
      is simpler, shares one noise process and one loss with the numeric columns,
      and is what analog-bits work (Chen et al. 2023) found competitive. Denoiser:
      an MLP with residual blocks and a sinusoidal timestep embedding (width 128).
      ``x_0`` predictions are clipped to each column's range in the class rows, as
      images are clipped to ``[-1, 1]``: without it few-step DDIM overshoots on
      small classes (a 200-row class gave 1.4x the data's spread after 600 steps
      with the range widened by half, 1.1x with the range itself); samples then
      stay inside the observed range of each column.
    * **image** (``schema.image_shape`` set, pixels in ``[0, 1]``): pixels mapped
      to ``[-1, 1]``, padded to a multiple of the UNet's downsampling; a small UNet
      (GroupNorm, timestep embedding; 2 resolution levels below 16 px, 3 from 16 px
      such as 28 x 28 MNIST); ``x_0`` clipped to ``[-1, 1]``; samples in ``[0, 1]``.

    Training uses AdamW, warm-up and cosine decay on :attr:`device`, with bf16/fp16
    autocast on CUDA (``precision``); weights and training noise depend only on
    ``seed``. Sampling draws from a seeded CPU generator in chunks of
    ``sample_batch`` rows, so a seed gives the same rows and memory stays bounded.

    Parameters
    ----------
    steps, epochs
        Training budget in optimizer steps, or in passes over the class rows (not
        both). Default 2000 steps (table) / 1000 (image).
    width
        Hidden units of the MLP (default 128) or base channels of the UNet (default
        16 below 16 px, 32 from 16 px).
    lr, weight_decay, batch_size
        AdamW settings; ``None`` means ``lr`` 3e-3 and batches of 128 rows for
        tables, 1e-3 and 64 images for images. Batches are capped at the class size.
    timesteps, schedule
        Number of noise levels ``T`` and ``"cosine"`` or ``"linear"`` betas.
    sample_steps, eta
        DDIM steps per sample (``<= timesteps``) and its stochasticity in ``[0, 1]``.
    ema
        Decay of the weights' moving average (0 turns it off).
    precision
        ``"auto"`` (bf16 on CUDA when supported, else fp16; float32 on CPU),
        ``"32"``, ``"bf16"`` or ``"16"``.
    verbose, log_every
        Print the mean loss every ``log_every`` steps (``loss_history_`` keeps them).
    sample_batch
        Rows denoised at once; default 4096 (table) / 256 (image).
    conditional
        ``False`` (default): one model per class (:meth:`fit`). ``True``: one model of
        every class (:meth:`fit_labelled`, ``sample(n, seed, label=k)``); numeric
        columns are standardised on the rows of all classes, and ``x_0`` predictions
        are clipped to the range of class ``k``'s own training rows.
    guidance_scale
        Classifier-free guidance weight ``w >= 0`` of a conditional model (diffusers'
        convention: 1 = no guidance, 0 = the unconditional model). Default 1: on the
        imbalanced digits, ``w`` = 1.5, 2 and 3 made the samples more typical of their
        class but less varied (closer to the training images), and a CNN trained on
        real + synthetic images did worse than with ``w = 1`` (two splits, three seeds).
        Guidance acts at sampling only, so ``w`` can be changed on a fitted model.
    label_dropout
        Share of training rows whose label is replaced by the null class (in
        ``[0, 1)``; 0 trains no unconditional model, so then ``guidance_scale`` must be 1).
    """

    name: ClassVar[str] = "diffusion"
    min_rows: ClassVar[int] = 2

    def __init__(
        self,
        steps: int | None = None,
        epochs: int | None = None,
        width: int | None = None,
        lr: float | None = None,
        weight_decay: float = 1e-4,
        batch_size: int | None = None,
        timesteps: int = 1000,
        schedule: Literal["cosine", "linear"] = "cosine",
        sample_steps: int = 50,
        eta: float = 0.0,
        ema: float = 0.995,
        precision: str = "auto",
        verbose: bool = False,
        log_every: int = 100,
        sample_batch: int | None = None,
        conditional: bool = False,
        guidance_scale: float = 1.0,
        label_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        who = "DiffusionGenerator"
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
        self.width = None if width is None else check_int(who, "width", width, 1)
        self.timesteps = check_int(who, "timesteps", timesteps, 2)
        if schedule not in ("cosine", "linear"):
            raise VTSSError(f"{who}: schedule must be 'cosine' or 'linear', got {schedule!r}")
        self.schedule = schedule
        self.sample_steps = check_int(who, "sample_steps", sample_steps, 1)
        if self.sample_steps > self.timesteps:
            raise VTSSError(
                f"{who}: sample_steps ({sample_steps}) cannot exceed timesteps ({timesteps})"
            )
        self.eta = check_float(who, "eta", eta, 0.0, 1.0)
        self.sample_batch = (
            None if sample_batch is None else check_int(who, "sample_batch", sample_batch, 1)
        )
        self.conditional, self.guidance_scale, self.label_dropout = guidance_settings(
            who, conditional, guidance_scale, label_dropout
        )
        #: ``(step, mean training loss)`` records of the last fit.
        self.loss_history_: list[tuple[int, float]] = []

    @property
    def settings(self) -> TrainSettings:
        """The optimisation parameters, validated again (they may have been changed)."""
        return train_settings(
            "DiffusionGenerator", **{n: getattr(self, n) for n in TRAIN_PARAMS}, ema=self.ema
        )

    # ----------------------------------------------------------------- fitting

    def _fit_model(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        schema: FeatureSchema | None,
        seed: int,
        num_classes: int,
    ) -> None:
        """Fit the denoiser (``y``, ``num_classes > 0``: the conditional one), seeded."""
        assert schema is not None  # base.fit validated x and filled in the schema
        device = x.device
        self._schema = schema
        self._n_classes = num_classes
        self.kind_ = "image" if schema.image_shape is not None else "table"
        self._abar = alpha_bars(self.timesteps, self.schedule).to(device, torch.float32)
        kind = self.kind_
        settings = self.settings.resolved(DEFAULT_BATCH[kind], DEFAULT_LR[kind])
        steps = settings.total_steps(x.shape[0], DEFAULT_STEPS[kind])
        # off the CPU, torch.manual_seed must seed the accelerator (CUDA or MPS) too
        with seeded(int(seed), cuda=device.type != "cpu"):
            if self.kind_ == "image":
                z = self._build_image(x, schema)
            else:
                z = self._build_table(x, y)
            net, abar, T = self.net_, self._abar, self.timesteps
            drop, null = self.label_dropout, num_classes

            def loss_fn(x0: torch.Tensor, yb: torch.Tensor | None = None) -> torch.Tensor:
                t = torch.randint(T, (x0.shape[0],), device=x0.device)
                noise = torch.randn_like(x0)
                a = abar[t].reshape(-1, *([1] * (x0.dim() - 1)))
                if yb is not None and drop > 0:  # classifier-free guidance's label dropout
                    yb = torch.where(torch.rand(len(yb), device=yb.device) < drop, null, yb)
                pred = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, yb)
                return F.mse_loss(pred.float(), noise)

            self.loss_history_ = fit_net(net, loss_fn, z, settings, steps, seed, self.name, y=y)

    def _build_table(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Rows in diffusion space (numeric standardised, one-hot as +-1) and the denoiser.

        ``x_0`` is clipped to the range of the class rows (of each class, conditional).
        """
        cat = [j for g in self._schema.categorical_groups for j in g]
        self._num_idx = torch.as_tensor(
            [j for j in range(x.shape[1]) if j not in set(cat)], dtype=torch.long, device=x.device
        )
        self._cat_idx = torch.as_tensor(cat, dtype=torch.long, device=x.device)
        self._mean, self._std = column_scaler(x[:, self._num_idx])
        z = x.clone()
        z[:, self._num_idx] = (x[:, self._num_idx] - self._mean) / self._std
        z[:, self._cat_idx] = 2 * x[:, self._cat_idx] - 1
        if y is None:
            self._lo, self._hi = z.min(dim=0).values, z.max(dim=0).values
        else:
            self._lo, self._hi = class_ranges(z, y, self._n_classes)
        self.net_ = MLPDenoiser(x.shape[1], self.width or 128, n_classes=self._n_classes).to(
            x.device
        )
        return z

    def _build_image(self, x: torch.Tensor, schema: FeatureSchema) -> torch.Tensor:
        """Padded images in ``[-1, 1]`` and the UNet."""
        check_image_rows(x, self.name)
        c, h, w = schema.image_shape  # type: ignore[misc]
        mults = (1, 2) if min(h, w) < 16 else (1, 2, 2)
        multiple = 2 ** (len(mults) - 1)
        self._padded = (padded_size(h, multiple), padded_size(w, multiple))
        base = self.width or (16 if min(h, w) < 16 else 32)
        self.net_ = UNet(c, base, mults, n_classes=self._n_classes).to(x.device)
        img = x.clamp(0.0, 1.0).reshape(-1, c, h, w) * 2 - 1
        return pad_image(img, *self._padded, value=-1.0)

    # ---------------------------------------------------------------- sampling

    def _generate(self, n: int, seed: int, label: int | None) -> torch.Tensor:
        """``n`` DDIM samples (of class ``label``, guided, in a conditional model)."""
        device = self.device
        g = cpu_generator(seed)
        dtype = autocast_dtype(device, self.settings.precision)
        if self.kind_ == "image":
            c, h, w = self._schema.image_shape  # type: ignore[misc]
            shape, lo, hi, chunk = (c, *self._padded), -1.0, 1.0, self.sample_batch or 256
        else:
            shape, chunk = (self._schema.n_features,), self.sample_batch or 4096
            lo, hi = self._lo.to(device), self._hi.to(device)
            if label is not None:
                lo, hi = lo[label], hi[label]

        def draw(m: int) -> torch.Tensor:
            z = self._ddim(m, shape, lo, hi, g, dtype, label)
            return self._decode(z)

        return in_chunks(n, chunk, draw, self._schema.n_features, device)

    def _eps(self, net, x: torch.Tensor, t: torch.Tensor, label: int | None) -> torch.Tensor:
        """The noise prediction; a conditional model's is guided by ``guidance_scale``."""
        if label is None:
            return net(x, t).float()
        m, w = len(x), self.guidance_scale
        y = torch.full((m,), label, device=x.device, dtype=torch.long)
        if w == 1.0:
            return net(x, t, y).float()
        null = torch.full_like(y, self._n_classes)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).float()
        cond, uncond = both[:m], both[m:]
        return uncond + w * (cond - uncond)

    @torch.inference_mode()
    def _ddim(self, m, shape, lo, hi, g: torch.Generator, dtype, label=None) -> torch.Tensor:
        """DDIM from pure noise to ``x_0`` over ``sample_steps`` levels (Song et al. eq. 12)."""
        device = self.device
        net, abar = self.net_.to(device), self._abar.to(device)
        levels = torch.linspace(self.timesteps - 1, 0, self.sample_steps).round().long().tolist()
        levels = list(dict.fromkeys(levels))  # keep order, drop duplicates
        x = torch.randn(m, *shape, generator=g).to(device)
        for i, t in enumerate(levels):
            a = abar[t]
            a_prev = abar[levels[i + 1]] if i + 1 < len(levels) else torch.ones((), device=device)
            with autocast(device, dtype):
                eps = self._eps(net, x, torch.full((m,), t, device=device, dtype=torch.long), label)
            x0 = torch.clamp((x - (1 - a).sqrt() * eps) / a.sqrt(), lo, hi)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            sigma = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp(min=0).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            if self.eta > 0 and i + 1 < len(levels):
                x = x + sigma * torch.randn(m, *shape, generator=g).to(device)
        return x

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion space back to encoded rows (exact one-hot, or pixels in ``[0, 1]``)."""
        if self.kind_ == "image":
            c, h, w = self._schema.image_shape  # type: ignore[misc]
            img = (z[:, :, :h, :w] + 1) / 2
            return img.reshape(len(z), c * h * w).clamp(0.0, 1.0)
        device = z.device
        out = z.clone()
        num = self._num_idx.to(device)
        out[:, num] = z[:, num] * self._std.to(device) + self._mean.to(device)
        return project_one_hot(out, group_index(self._schema, device))
