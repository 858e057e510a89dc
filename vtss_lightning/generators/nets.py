"""Networks of the deep generators: small on purpose (minority classes have few rows).

* :class:`TabularVAENet` / :class:`ConvVAENet`: encoder to ``(mu, logvar)`` and a
  decoder, for :class:`~vtss_lightning.generators.VAEGenerator`.
* :class:`MLPDenoiser` / :class:`UNet`: noise predictors ``eps(x_t, t)`` for
  :class:`~vtss_lightning.generators.DiffusionGenerator`.
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


class TabularVAENet(nn.Module):
    """MLP encoder/decoder for an encoded table.

    The decoder emits the means of the ``n_numeric`` (standardised) numeric columns
    followed by one logit per one-hot column; each numeric column has a learned
    noise scale ``sigma`` in ``(0.01, 1)`` (as in TVAE), shared over rows.
    """

    def __init__(self, d_in: int, n_numeric: int, n_logits: int, width: int, latent: int):
        super().__init__()
        self.latent = latent
        self.n_numeric = n_numeric
        self.encoder = mlp(d_in, width, 2, 2 * latent)
        self.decoder = mlp(latent, width, 2, n_numeric + n_logits)
        # sigmoid(-2.2) ~ 0.1: start with a small noise scale, as TVAE does.
        self.raw_sigma = nn.Parameter(torch.full((n_numeric,), -2.2))

    def sigma(self) -> torch.Tensor:
        return 0.01 + 0.99 * torch.sigmoid(self.raw_sigma)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decoder(z)
        return out[:, : self.n_numeric], out[:, self.n_numeric :]


class ConvVAENet(nn.Module):
    """Two stride-2 convolutions down, two transposed convolutions up.

    Input images are padded to a multiple of 4 by the caller; ``height``/``width``
    are the padded sizes. The decoder returns pixel logits (Bernoulli likelihood).
    """

    def __init__(self, channels: int, height: int, width: int, base: int, latent: int):
        super().__init__()
        self.latent = latent
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
            nn.Linear(flat, 2 * latent),
        )
        self.fc = nn.Sequential(nn.Linear(latent, flat), nn.SiLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * base, base, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(base, base, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(base, channels, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fc(z).reshape(-1, *self.grid))


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


class MLPDenoiser(nn.Module):
    """TabDDPM-style MLP: residual blocks, the timestep embedding added to each."""

    def __init__(self, d: int, width: int, depth: int = 3):
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

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(t)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


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

    def __init__(self, channels: int, base: int = 32, mults: tuple[int, ...] = (1, 2)):
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

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(t)
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
