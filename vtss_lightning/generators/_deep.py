"""Training loop shared by the deep tensor generators (VAE, diffusion); not public API.

One place for what every deep generator needs: a fixed budget of optimizer steps
(or epochs); AdamW with warm-up and cosine decay; mixed precision on CUDA; an
optional exponential moving average of the weights; progress lines; and chunked
sampling so a large pool never holds every activation at once. Fits run inside
:func:`vtss_lightning._random.seeded`, so they depend on their seed only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._common import check_float, check_int
from vtss_lightning.generators.base import SyntheticGenerator

_LOGGER = logging.getLogger("vtss_lightning.generators")

PRECISIONS = ("auto", "32", "bf16", "16")
#: ``__init__`` parameters every deep generator stores and :class:`TrainSettings` holds
#: (the diffusion model adds ``ema``).
TRAIN_PARAMS = (
    "steps",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "precision",
    "verbose",
    "log_every",
)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one deep generator (validated by :func:`train_settings`)."""

    steps: int | None
    epochs: int | None
    batch_size: int | None
    lr: float | None
    weight_decay: float
    precision: str
    verbose: bool
    log_every: int
    ema: float = 0.0

    def resolved(self, batch_size: int, lr: float) -> TrainSettings:
        """These settings with the generator's defaults filled in where the user gave ``None``."""
        return replace(
            self,
            batch_size=self.batch_size if self.batch_size is not None else batch_size,
            lr=self.lr if self.lr is not None else lr,
        )

    def total_steps(self, n_rows: int, default: int) -> int:
        """Optimizer steps to run: ``steps``, else ``epochs`` passes over ``n_rows``, else ``default``."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            assert self.batch_size is not None, "call resolved() first"
            return self.epochs * math.ceil(n_rows / min(self.batch_size, n_rows))
        return default


def train_settings(
    who: str,
    *,
    steps: int | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    weight_decay: float,
    precision: str | int,
    verbose: bool,
    log_every: int,
    ema: float = 0.0,
) -> TrainSettings:
    """Validate the user's optimisation parameters once, at construction."""
    if steps is not None and epochs is not None:
        raise VTSSError(f"{who}: pass steps or epochs, not both")
    precision = str(precision)
    if precision not in PRECISIONS:
        raise VTSSError(f"{who}: precision must be one of {PRECISIONS}, got {precision!r}")
    return TrainSettings(
        steps=None if steps is None else check_int(who, "steps", steps, 1),
        epochs=None if epochs is None else check_int(who, "epochs", epochs, 1),
        batch_size=None if batch_size is None else check_int(who, "batch_size", batch_size, 1),
        lr=None if lr is None else _positive(who, "lr", lr),
        weight_decay=check_float(who, "weight_decay", weight_decay, 0.0),
        precision=precision,
        verbose=bool(verbose),
        log_every=check_int(who, "log_every", log_every, 1),
        ema=check_float(who, "ema", ema, 0.0, 0.9999),
    )


def _positive(who: str, name: str, value: object) -> float:
    out = check_float(who, name, value, 0.0)
    if out <= 0:
        raise VTSSError(f"{who}: {name} must be a number > 0, got {value!r}")
    return out


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32).

    ``auto`` means bf16 on a CUDA device that supports it, fp16 on an older one, and
    float32 elsewhere (CPU autocast is slower than float32 for these small nets).
    ``16`` off CUDA falls back to float32: fp16 needs a gradient scaler we only run on CUDA.
    """
    cuda = device.type == "cuda"
    if precision == "32" or (precision in ("auto", "16") and not cuda):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Optimiser:
    """AdamW with a 5 % linear warm-up and cosine decay to 10 % of ``lr``, gradient
    norm clipped at 1, a gradient scaler for fp16, and an optional weight EMA."""

    def __init__(
        self, net: nn.Module, settings: TrainSettings, total_steps: int, dtype: torch.dtype | None
    ) -> None:
        self.scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=settings.lr, weight_decay=settings.weight_decay
        )
        warmup = max(1, total_steps // 20)

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            frac = (step - warmup) / max(1, total_steps - warmup)
            return 0.1 + 0.45 * (1.0 + math.cos(math.pi * frac))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_at)
        self.ema_decay = settings.ema
        self.ema = [p.detach().clone() for p in self.params] if settings.ema > 0 else None

    def step(self, loss: torch.Tensor, step: int) -> None:
        """One update from ``loss`` (then the schedule and the moving average)."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
        self.sched.step()
        if self.ema is not None:
            decay = min(self.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)

    def finish(self) -> None:
        """Leave the weights at their moving average, when there is one."""
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.params, self.ema, strict=True):
                    p.copy_(e)


def fit_net(
    net: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    settings: TrainSettings,
    total_steps: int,
    seed: int,
    name: str,
    y: torch.Tensor | None = None,
) -> list[tuple[int, float]]:
    """Minimise ``loss_fn(batch)`` over minibatches of the rows ``x``.

    Call inside :func:`vtss_lightning._random.seeded`. Batches are slices of one
    random permutation per pass (drawn from a CPU generator seeded by ``seed``);
    updates by :class:`_Optimiser`. With ``settings.ema > 0`` the weights end as
    their exponential moving average (what diffusion models sample with). Returns
    ``(step, mean loss since last record)`` every ``log_every`` steps and at the
    end; with ``verbose`` each is also printed. With labels ``y`` (one per row, a
    conditional model) the loss is ``loss_fn(batch, batch_labels)``; the batches are
    the same rows as without.
    """
    device = x.device
    n = x.shape[0]
    assert settings.batch_size is not None and settings.lr is not None, "call resolved() first"
    batch = min(settings.batch_size, n)
    dtype = autocast_dtype(device, settings.precision)
    optimiser = _Optimiser(net, settings, total_steps, dtype)
    order = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=order).to(device)
    pos, history, running, since = 0, [], torch.zeros((), device=device), 0
    net.train()
    for step in range(total_steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=order).to(device), 0
        idx = perm[pos : pos + batch]
        xb = x.index_select(0, idx)
        yb = None if y is None else y.index_select(0, idx)
        pos += batch
        with autocast(device, dtype):
            loss = loss_fn(xb) if yb is None else loss_fn(xb, yb)
        optimiser.step(loss, step)
        running += loss.detach().float()
        since += 1
        if (step + 1) % settings.log_every == 0 or step + 1 == total_steps:
            mean = float(running) / since
            if not math.isfinite(mean):
                raise VTSSError(
                    f"{name}: the training loss became {mean} at step {step + 1}; "
                    "lower lr or use precision='32'"
                )
            history.append((step + 1, mean))
            _report(name, step + 1, total_steps, mean, settings.verbose)
            running, since = torch.zeros((), device=device), 0
    optimiser.finish()
    net.eval()
    return history


def _report(name: str, step: int, total: int, loss: float, verbose: bool) -> None:
    line = f"{name}: step {step}/{total}  loss {loss:.4f}"
    _LOGGER.debug(line)
    if verbose:
        print(line, file=sys.stdout, flush=True)


def in_chunks(
    n: int, chunk: int, draw: Callable[[int], torch.Tensor], width: int, device: torch.device
) -> torch.Tensor:
    """``n`` rows built by ``draw(m)`` in consecutive chunks of at most ``chunk`` rows.

    Keeps peak memory at one chunk's activations however large the pool is; the
    chunks are drawn in order from the caller's seeded generator, so a seed and ``n``
    fix the result.
    """
    if n == 0:
        return torch.empty(0, width, device=device)
    return torch.cat([draw(min(chunk, n - start)) for start in range(0, n, chunk)])


def column_scaler(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each column of ``x`` (std 1 where a column is constant).

    Deep generators train on standardised numeric columns whatever the caller's
    preprocessing did, so defaults (learning rate, noise schedule) fit every table.
    """
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0) if x.shape[0] > 1 else torch.ones_like(mean)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def check_image_rows(x: torch.Tensor, who: str) -> None:
    """Image generators model pixels in ``[0, 1]``; anything else is a preprocessing slip."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise VTSSError(
            f"{who}: image rows must hold pixel values in [0, 1], got values in "
            f"[{lo:.3g}, {hi:.3g}]; scale images to [0, 1] instead of standardising them"
        )


class OneNetGenerator(SyntheticGenerator):
    """A deep generator that trains one network either way: on one class's rows
    (``fit``) or, ``conditional``, on every class's rows with their labels
    (``fit_labelled``); both end in :meth:`_fit_model`."""

    def _fit(self, x: torch.Tensor, schema: FeatureSchema | None, seed: int) -> None:
        self._fit_model(x, None, schema, seed, 0)

    def _fit_labelled(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        schema: FeatureSchema | None,
        seed: int,
        num_classes: int,
    ) -> None:
        self._fit_model(x, y, schema, seed, num_classes)

    def _fit_model(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        schema: FeatureSchema | None,
        seed: int,
        num_classes: int,
    ) -> None:
        """Train the network (``y``, ``num_classes > 0``: the class-conditional one)."""
        raise NotImplementedError

    def _sample(self, n: int, seed: int) -> torch.Tensor:
        return self._generate(n, seed, None)

    def _sample_class(self, n: int, seed: int, label: int) -> torch.Tensor:
        return self._generate(n, seed, label)

    def _generate(self, n: int, seed: int, label: int | None) -> torch.Tensor:
        """``n`` rows from the trained network (of class ``label`` when conditional)."""
        raise NotImplementedError

    def _keep_train_settings(self, s: TrainSettings) -> None:
        """Store the validated optimisation settings as the parameters they came from."""
        self.steps, self.epochs, self.batch_size, self.lr = s.steps, s.epochs, s.batch_size, s.lr
        self.weight_decay, self.precision = s.weight_decay, s.precision
        self.verbose, self.log_every = s.verbose, s.log_every
        self.ema = s.ema
