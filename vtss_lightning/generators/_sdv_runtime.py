"""Runtime plumbing around SDV: sdtypes, quiet fits, sampling seeds, in-process joblib.

Kept apart from the generator classes in :mod:`vtss_lightning.generators.sdv` so
that the classes read as configuration and this file holds the SDV 2.0 workarounds.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

#: Loggers SDV and its dependencies talk through (SDV's own are named by class).
NOISY_LOGGERS = (
    "sdv",
    "rdt",
    "copulas",
    "ctgan",
    "SingleTableSynthesizer",
    "MultiTableSynthesizer",
    "Metadata",
    "SingleTableMetadata",
)


def sdtype_of(dtype: Any) -> str:
    """SDV sdtype from the pandas dtype.

    Detection is not trusted: SDV 2.0's ``Metadata.detect_from_dataframes`` makes an
    all-unique integer column an ``id`` primary key, which is then never modelled.
    """
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numerical"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "categorical"


@contextmanager
def quiet_sdv(enabled: bool) -> Iterator[None]:
    """Silence SDV's warnings (metadata, pandas, sklearn convergence) and its INFO logs."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def in_process() -> Any:
    """Run joblib work sequentially, in this process.

    ctgan's ``DataTransformer.transform`` fans the columns of tables with >= 500 rows
    out to a loky *process* pool; every worker re-imports torch/rdt (many seconds on
    a small machine, and unwelcome inside DDP ranks or DataLoader workers). The
    result is the same either way (each transformer carries its own random state),
    so it is kept in-process. A threading backend would not be safe: rdt swaps the
    global numpy random state around every transformer call.
    """
    import joblib

    config = getattr(joblib, "parallel_config", None) or joblib.parallel_backend
    return config(backend="sequential")


def reseed_sampling(synth: Any, seed: int) -> None:
    """Make the next ``synth.sample`` a function of ``seed`` alone.

    SDV keeps its own random states, which advance with every ``sample`` call (and
    start from a fixed seed after ``fit``, whatever seed the caller wanted), so they
    are reset here: the model's (numpy + torch) state, and the numpy state each RDT
    transformer uses in ``reverse_transform`` (e.g. where to put missing values).
    """
    seed32 = seed % 2**32
    synth.reset_sampling()
    if getattr(synth, "_model", None) is not None:
        synth._set_random_state(seed32)
    hyper = getattr(getattr(synth, "_data_processor", None), "_hyper_transformer", None)
    transformers = getattr(hyper, "field_transformers", None) or {}
    for i, transformer in enumerate(transformers.values()):
        states = getattr(transformer, "random_states", None)
        if isinstance(states, dict) and "reverse_transform" in states:
            child = np.random.SeedSequence([seed32, i]).generate_state(1)[0]
            states["reverse_transform"] = np.random.RandomState(child)
