"""Seeds, derived seeds and size rounding: one definition each for the whole package.

Every fit, generator and split in a search is seeded from the user's ``seed`` through
:func:`derive_seed`, so runs repeat bit for bit and the streams of different jobs
(one generator per class, one fold, one epoch of image augmentation) never coincide.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

#: Salts that separate the seed streams derived from one user seed.
GENERATOR_FIT_SALT = 1009  # fitting the generator of class k
GENERATOR_SAMPLE_SALT = 7919  # sampling the pool of class k
POOL_CHUNK_SALT = 104_729  # chunk j of class k's pool, under that class's sample stream
AUGMENT_PASS_SALT = 1_000_003  # per-pass image augmentation
AUGMENT_BATCH_SALT = 10_007  # per-batch image augmentation

#: Rows per forward pass when a model scores many rows (validation, test, statistics).
EVAL_CHUNK_ROWS = 8192

#: Rows per seeded chunk of a class's synthetic pool (see :func:`pool_chunk_seed`). A pool
#: of ``m`` rows is the first ``m`` rows of ``ceil(m / POOL_CHUNK_ROWS)`` whole chunks,
#: so pools are nested whatever the generator does with the row count. 1024 keeps the
#: over-draw (< 1024 rows a class) cheap even for the slowest sampler, image diffusion
#: at ~150 images/s on one CPU thread, while one ``sample`` call per 1024 rows keeps the
#: per-call cost of SDV (reseeding, reverse transforms) and deep generators (one DDIM
#: or decoder pass) a small share of the draw.
POOL_CHUNK_ROWS = 1024


def derive_seed(seed: int, salt: int, index: int = 0) -> int:
    """A seed for the ``index``-th job of the stream named by ``salt``."""
    return int(seed) * int(salt) + int(index)


def pool_chunk_seed(seed: int, k: int, j: int) -> int:
    """The seed of chunk ``j`` of class ``k``'s pool (``seed``: the DataModule's seed).

    ``derive_seed`` of class ``k``'s sample seed plus one, so chunk seeds are at least
    ``POOL_CHUNK_SALT`` even for seed 0. For one user seed they are distinct for every
    ``(k, j)`` with ``k < 40_000`` (also modulo ``2**32``, all SDV keeps of a seed),
    and above every flat stream's ``derive_seed(seed, salt, i)`` with ``i`` below
    ``POOL_CHUNK_SALT`` (class, fold and job indices), so no fit or other draw shares
    a chunk's seed. Reduced modulo ``2**63`` so every consumer (torch, numpy) takes it.
    """
    if not 0 <= j < POOL_CHUNK_SALT:
        raise ValueError(f"pool chunk index {j} outside [0, {POOL_CHUNK_SALT})")
    stream = derive_seed(seed, GENERATOR_SAMPLE_SALT, k) + 1
    return derive_seed(stream, POOL_CHUNK_SALT, j) % 2**63


def seed_all(seed: int, cuda: bool = True) -> None:
    """Seed ``random``, numpy and torch (CUDA too unless ``cuda=False``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cuda:
        torch.manual_seed(seed)
    else:  # do not queue a lazy CUDA seed on machines that never use CUDA here
        torch.default_generator.manual_seed(seed)


@contextmanager
def seeded(seed: int, cuda: bool | None = None) -> Iterator[None]:
    """Run the block with every global RNG seeded by ``seed``, then restore them all.

    The caller's own random streams are untouched, and what runs inside depends on
    ``seed`` only. ``cuda=None`` includes the CUDA generators wherever CUDA is
    available (as Lightning's ``isolate_rng`` does); ``False`` leaves them alone.
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
    with global_rng_kept(cuda):
        seed_all(seed, cuda=cuda)
        yield


@contextmanager
def global_rng_kept(cuda: bool | None = None) -> Iterator[None]:
    """Run the block, then put every global RNG (Python, NumPy, torch; CUDA with
    ``cuda``, default: where available) back as it was.

    The search runs inside this, so the final fit draws what it would draw without
    the plugin (its dropout masks, a lazily built model's weights) after the user's
    ``seed_everything``: the search consumes none of the user's randomness.
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def round_half_up(x: float) -> int:
    """``round`` with halves going up (Python's ``round`` sends halves to even)."""
    return int(math.floor(x + 0.5))
