"""The generators a DataModule may draw its pool from: one, or several to compare.

``generator=[...]`` makes the search compare (generator, size) pairs on the same
folds (:mod:`vtss_lightning.search.generator_search`). Each listed generator is
named in the report by its ``name`` (``smote``, ``vae``), followed by the settings
it does not leave at their defaults where two listed generators share a name
(``vae(conditional=True)`` beside ``vae``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from vtss_lightning.errors import VTSSError
from vtss_lightning.generators.base import SyntheticGenerator

#: What a DataModule's ``generator=`` accepts (``None``: SMOTE).
GeneratorChoice = SyntheticGenerator | list[SyntheticGenerator] | None


def as_generator_list(generator: object) -> tuple[SyntheticGenerator, ...]:
    """``generator=`` as a non-empty tuple of generators, checked in one line each."""
    if generator is None:
        from vtss_lightning.generators.smote import SMOTEGenerator

        return (SMOTEGenerator(),)
    if isinstance(generator, SyntheticGenerator):
        return (generator,)
    if isinstance(generator, str | bytes) or not isinstance(generator, Sequence):
        raise VTSSError(
            f"generator must be a generator (e.g. SMOTEGenerator()) or a list of them, "
            f"got {type(generator).__name__}"
        )
    if not generator:
        raise VTSSError("generator=[] lists no generator; give at least one (or None for SMOTE)")
    for i, g in enumerate(generator):
        if not isinstance(g, SyntheticGenerator):
            raise VTSSError(
                f"generator[{i}] is a {type(g).__name__}, not a generator "
                "(e.g. SMOTEGenerator(), VAEGenerator())"
            )
    generator_labels(generator)  # refuses a generator listed twice
    return tuple(generator)


def generator_labels(generators: Sequence[SyntheticGenerator]) -> list[str]:
    """The name each generator goes by in the report: its ``name``, with the settings
    that differ from the defaults where another listed generator has the same name."""
    names = [g.name for g in generators]
    labels = [
        n if names.count(n) == 1 else _with_settings(g)
        for n, g in zip(names, generators, strict=True)
    ]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise VTSSError(
                f"generator lists {label} twice; list each generator once (give the copies "
                "different settings to compare them)"
            )
    return labels


def _with_settings(generator: SyntheticGenerator) -> str:
    """``name(setting=value, ...)`` over the settings not at their signature default."""
    defaults = {
        p.name: p.default for p in inspect.signature(type(generator).__init__).parameters.values()
    }
    changed = [
        f"{k}={v!r}"
        for k, v in generator.get_params().items()
        if not _same(v, defaults.get(k, inspect.Parameter.empty))
    ]
    return f"{generator.name}({', '.join(changed)})" if changed else generator.name


def _same(value: object, default: object) -> bool:
    try:
        return bool(value == default)
    except Exception:  # e.g. an array-valued setting
        return value is default
