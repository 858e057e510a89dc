"""Networks of the deep generators: small on purpose (minority classes have few rows).

* :class:`TabularVAENet` / :class:`ConvVAENet`: encoder to ``(mu, logvar)`` and a
  decoder, for :class:`~vtss_lightning.generators.VAEGenerator`.
* :class:`MLPDenoiser` / :class:`UNet`: noise predictors ``eps(x_t, t)`` for
  :class:`~vtss_lightning.generators.DiffusionGenerator`.

Each takes ``n_classes``: 0 (the default) builds the unconditional network of one
class, exactly as before (same layers, same initialisation for a seed); ``K > 0``
conditions it on a class index (a one-hot input for the VAEs; for the denoisers a
learned embedding with ``K + 1`` rows, the last the *null* class that classifier-free
guidance trains with label dropout and samples against). The class modules are
created after all the others, so they never shift the unconditional initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units with SiLU, then a linear output."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.SiLU()]
    layers.append(nn.Linear(width if depth else d_in, d_out))
    return nn.Sequential(*layers)


def padded_size(size: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= size``."""
    return -(-size // multiple) * multiple


def pad_image(x: torch.Tensor, height: int, width: int, value: float = 0.0) -> torch.Tensor:
    """Pad ``(n, C, H, W)`` on the bottom/right to ``height x width`` with ``value``."""
    dh, dw = height - x.shape[2], width - x.shape[3]
    return F.pad(x, (0, dw, 0, dh), value=value) if dh or dw else x


# ----------------------------------------------------------------------------- VAE


def _with_class(h: torch.Tensor, y: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    """``h`` with the one-hot of ``y`` appended (``h`` itself for an unconditional net)."""
    if not n_classes:
        return h
    if y is None:
        raise ValueError("a class-conditional network needs the class labels y")
    return torch.cat([h, F.one_hot(y, n_classes).to(h.dtype)], dim=1)


class TabularVAENet(nn.Module):
    """MLP encoder/decoder for an encoded table.

    The decoder emits the means of the ``n_numeric`` (standardised) numeric columns
    followed by one logit per one-hot column; each numeric column has a learned
    noise scale ``sigma`` in ``(0.01, 1)`` (as in TVAE), shared over rows (and, in a
    conditional net, one per class: encoder and decoder also read the class one-hot).
    """

    def __init__(
        self, d_in: int, n_numeric: int, n_logits: int, width: int, latent: int, n_classes: int = 0
    ):
        super().__init__()
        self.latent = latent
        self.n_numeric = n_numeric
        self.n_classes = n_classes
        self.encoder = mlp(d_in + n_classes, width, 2, 2 * latent)
        self.decoder = mlp(latent + n_classes, width, 2, n_numeric + n_logits)
        # sigmoid(-2.2) ~ 0.1: start with a small noise scale, as TVAE does.
        shape = (n_classes, n_numeric) if n_classes else (n_numeric,)
        self.raw_sigma = nn.Parameter(torch.full(shape, -2.2))

    def sigma(self, y: torch.Tensor | None = None) -> torch.Tensor:
        """Noise scale per numeric column (per row's class, ``(n, n_numeric)``, with ``y``)."""
        raw = self.raw_sigma if not self.n_classes else self.raw_sigma[y]
        return 0.01 + 0.99 * torch.sigmoid(raw)

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(_with_class(x, y, self.n_classes)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(
        self, z: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder(_with_class(z, y, self.n_classes))
        return out[:, : self.n_numeric], out[:, self.n_numeric :]


class ConvVAENet(nn.Module):
    """Two stride-2 convolutions down, two transposed convolutions up.

    Input images are padded to a multiple of 4 by the caller; ``height``/``width``
    are the padded sizes. The decoder returns pixel logits (Bernoulli likelihood). A
    conditional net appends the class one-hot to the flattened features before the
    latent layer and to ``z`` before the decoder.
    """

    def __init__(
        self, channels: int, height: int, width: int, base: int, latent: int, n_classes: int = 0
    ):
        super().__init__()
        self.latent = latent
        self.n_classes = n_classes
        self.grid = (2 * base, height // 4, width // 4)
        flat = 2 * base * (height // 4) * (width // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, base, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(base, base, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(base, 2 * base, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(flat + n_classes, 2 * latent),
        )
        self.fc = nn.Sequential(nn.Linear(latent + n_classes, flat), nn.SiLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * base, base, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(base, base, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(base, channels, 3, padding=1),
        )

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.n_classes:
            mu, logvar = self.encoder(x).chunk(2, dim=1)
        else:
            feats = _with_class(self.encoder[:-1](x), y, self.n_classes)
            mu, logvar = self.encoder[-1](feats).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(_with_class(z, y, self.n_classes))
        return self.decoder(h.reshape(-1, *self.grid))


# ------------------------------------------------------------------------ diffusion


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the (integer) diffusion step ``t``, as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half, 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(timestep_features(t, self.dim))


class ClassEmbedding(nn.Module):
    """``n_classes + 1`` learned vectors: one per class, the last the null class."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.null = n_classes
        self.table = nn.Embedding(n_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


class MLPDenoiser(nn.Module):
    """TabDDPM-style MLP: residual blocks, the timestep embedding (plus, conditional, the
    class embedding) added to each."""

    def __init__(self, d: int, width: int, depth: int = 3, n_classes: int = 0):
        super().__init__()
        self.time = TimeEmbedding(width)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 2 * width),
                nn.SiLU(),
                nn.Linear(2 * width, width),
            )
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, d))
        self.label = ClassEmbedding(n_classes, width) if n_classes else None

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = _add_class(self.time(t), self.label, y)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


def _add_class(
    emb: torch.Tensor, label: ClassEmbedding | None, y: torch.Tensor | None
) -> torch.Tensor:
    """The timestep embedding plus the class embedding of ``y`` (conditional nets)."""
    if label is None:
        return emb
    if y is None:
        raise ValueError("a class-conditional denoiser needs the class labels y")
    return emb + label(y).to(emb.dtype)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, timestep embedding added in between, residual skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small DDPM UNet: one residual block per level down, one in the middle, two per
    level up; stride-2 convolutions down, nearest-neighbour up.

    ``mults`` gives each resolution level's channels as multiples of ``base``; the
    image (padded by the caller) must be divisible by ``2 ** (len(mults) - 1)``.
    Skips follow DDPM: every down-path output is concatenated on the way up.
    """

    def __init__(
        self, channels: int, base: int = 32, mults: tuple[int, ...] = (1, 2), n_classes: int = 0
    ):
        super().__init__()
        t_dim = 4 * base
        self.time = TimeEmbedding(t_dim)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch = [base], base
        for i, m in enumerate(mults):
            self.down.append(ResBlock(ch, base * m, t_dim))
            ch = base * m
            skips.append(ch)
            if i < len(mults) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, t_dim)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            level = nn.ModuleList()
            for _ in range(2):
                level.append(ResBlock(ch + skips.pop(), base * m, t_dim))
                ch = base * m
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU())
        self.out_conv = nn.Conv2d(ch, channels, 3, padding=1)
        self.label = ClassEmbedding(n_classes, t_dim) if n_classes else None

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = _add_class(self.time(t), self.label, y)
        h = self.inp(x)
        hs = [h]
        for i, block in enumerate(self.down):
            h = block(h, emb)
            hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out_conv(self.out(h))
