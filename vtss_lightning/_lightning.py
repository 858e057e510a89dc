"""The one place that decides which Lightning runs: ``lightning.pytorch`` or ``pytorch_lightning``.

Lightning ships the same framework under two names, and their objects do not mix: a
``lightning.pytorch.Trainer`` rejects a ``pytorch_lightning.LightningModule`` and
raises "Expected a parent" on a DataModule of the other package. Users write either
``import lightning as L`` (Lightning's docs today) or ``import pytorch_lightning as
pl``, so this package

* derives the classes that Lightning type-checks (DataModules, the callback, the
  built-in models) from the matching class of *every* installed package
  (:func:`bases`), so either package's Trainer accepts them; and
* builds the inner Trainers of a search from the package of the objects the user
  passed (:func:`package_for`): the outer trainer, else the user's module.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from types import ModuleType
from typing import Any

#: Import names of the two distributions, preferred first when nothing else decides.
PACKAGE_NAMES = ("pytorch_lightning", "lightning.pytorch")


def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


#: The installed Lightning packages (at least one: the package depends on one).
PACKAGES: tuple[ModuleType, ...] = tuple(
    p for p in (_try_import(n) for n in PACKAGE_NAMES) if p is not None
)
if not PACKAGES:  # pragma: no cover - the install requires pytorch-lightning
    raise ImportError("vtss-lightning needs `pytorch-lightning` or `lightning` installed")
DEFAULT: ModuleType = PACKAGES[0]

_CHECKED = ("Trainer", "LightningModule", "LightningDataModule", "Callback")


def bases(name: str) -> tuple[type, ...]:
    """``name`` (e.g. ``"LightningDataModule"``) from every installed package."""
    return tuple(getattr(p, name) for p in PACKAGES)


class _AttachedPackageMethod:
    """A method both packages define, taken from the package of the attached Trainer.

    Lightning asks ``is_overridden(name, obj, parent)`` by comparing code objects with
    its own class; a class derived from both packages would otherwise always look
    overridden to one of them (e.g. "both ``configure_model`` and the deprecated
    ``configure_sharded_model`` are overridden").
    """

    def __init__(self, class_name: str, name: str) -> None:
        self.class_name, self.name = class_name, name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        trainer = None if obj is None else vars(obj).get("_trainer", vars(obj).get("trainer"))
        package = package_of(trainer) or DEFAULT
        func = getattr(getattr(package, self.class_name), self.name)
        return func if obj is None else func.__get__(obj, owner)


def _shared_methods(class_name: str) -> set[str]:
    """Plain (non-dunder) functions that every package's class ``class_name`` defines."""
    names = None
    for package in PACKAGES:
        cls = getattr(package, class_name)
        own = {
            n
            for klass in cls.__mro__
            if klass.__module__.split(".")[0]
            in ("lightning", "pytorch_lightning", "lightning_fabric")
            for n, v in vars(klass).items()
            if inspect.isfunction(v) and not n.startswith("__")
        }
        names = own if names is None else names & own
    return names or set()


@functools.cache
def dual_base(class_name: str) -> type:
    """A base class deriving from ``class_name`` of every installed Lightning package.

    Either package's Trainer accepts its instances, and methods both packages define
    resolve to those of the Trainer the instance is attached to.
    """
    classes = bases(class_name)
    if len(classes) == 1:
        return classes[0]
    namespace = {n: _AttachedPackageMethod(class_name, n) for n in _shared_methods(class_name)}
    namespace["__module__"] = __name__
    return type(f"Any{class_name}", classes, namespace)


def package_of(obj: Any) -> ModuleType | None:
    """The one Lightning package ``obj`` belongs to, or ``None`` (none, or both)."""
    owners = [p for p in PACKAGES if isinstance(obj, tuple(getattr(p, n) for n in _CHECKED))]
    return owners[0] if len(owners) == 1 else None


def package_for(*objs: Any) -> ModuleType:
    """The package of the first object that belongs to exactly one, else :data:`DEFAULT`."""
    for obj in objs:
        package = package_of(obj)
        if package is not None:
            return package
    return DEFAULT


def strategy_registry(package: ModuleType | None = None) -> Any:
    """Lightning's registry of strategy names (``"ddp"``, ``"ddp_spawn"``, ...)."""
    package = package or DEFAULT
    return importlib.import_module(f"{package.__name__}.strategies").StrategyRegistry


def class_from(package: ModuleType, dotted: str) -> type:
    """``class_from(pkg, "callbacks.ModelCheckpoint")``: a class of that package."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(f"{package.__name__}.{module}"), name)
