"""``vtss``: LightningCLI with the VTSS callback wired in (``vtss fit --config …``)."""

from __future__ import annotations

import errno
import functools
import importlib
import io
import json
import re
import sys
from pathlib import Path
from types import ModuleType, TracebackType

from vtss_lightning import _lightning
from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule
from vtss_lightning.errors import VTSSError, VTSSFileError
from vtss_lightning.search.callback import VTSSCallback


class _VTSSCLI:
    """LightningCLI whose ``vtss:`` section configures the always-present VTSSCallback.

    The callback may instead be listed in ``trainer.callbacks`` (the usual LightningCLI
    way to add one); then that one runs, and setting both is an error. Built on the
    LightningCLI of the package the config's classes come from (:func:`cli_package`).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(VTSSCallback, "vtss")

    def instantiate_trainer(self, **kwargs):
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        listed = [c for c in (config.get("callbacks") or []) if isinstance(c, VTSSCallback)]
        if not listed:
            return super().instantiate_trainer(**kwargs)
        if len(listed) > 1 or self._vtss_section_set():
            raise VTSSError(
                "VTSSCallback is configured twice (in trainer.callbacks and in the vtss: "
                "section); keep one of them"
            )
        return self._instantiate_trainer(config, [])

    def _vtss_section_set(self) -> bool:
        """Whether the ``vtss:`` section differs from VTSSCallback's defaults."""
        parser = self._parser(self.subcommand)
        given = self._get(self.config, "vtss", default=None)
        defaults = parser.get_defaults().get("vtss")
        return given is not None and _as_dict(given) != _as_dict(defaults)

    def fit(self, model, **kwargs) -> None:
        """``trainer.fit``; a file fault becomes a :class:`VTSSFileError` naming the
        path, the cause and the progress file a rerun resumes from.

        ``--ckpt_path`` is read with ``weights_only=True`` unless ``--weights_only
        false`` is given (torch < 2.6 would otherwise unpickle arbitrary objects).
        """
        if kwargs.get("weights_only", False) is None:
            kwargs["weights_only"] = True
        try:
            self.trainer.fit(model, **kwargs)
        except Exception as exc:
            line = file_fault(exc)
            if line is None:
                raise
            raise VTSSFileError(line + _progress_note(self.trainer)) from exc


@functools.cache
def cli_class(package_name: str) -> type:
    """The VTSS CLI on ``package_name``'s LightningCLI (``"lightning.pytorch"`` or
    ``"pytorch_lightning"``): a Trainer of one package refuses the other's callbacks
    and loggers, so the CLI's Trainer must come from the package the config names."""
    base = importlib.import_module(f"{package_name}.cli").LightningCLI
    return type("VTSSLightningCLI", (_VTSSCLI, base), {"__module__": __name__})


VTSSLightningCLI = cli_class(_lightning.DEFAULT.__name__)

_CLASS_PATH = {name: re.compile(rf"\b{re.escape(name)}\.") for name in _lightning.PACKAGE_NAMES}


def cli_package(args: list[str]) -> ModuleType:
    """The Lightning package whose classes the command names (its config files and
    arguments), the default one when it names neither.

    A YAML written for ``import lightning as L`` lists ``lightning.pytorch.callbacks...``;
    run on ``pytorch_lightning``'s Trainer those are refused with a page of jsonargparse
    alternatives, so the CLI follows the config instead.
    """
    text = "\n".join([*args, *(_read_quietly(p) for p in _config_paths(args))])
    named = [n for n, pattern in _CLASS_PATH.items() if pattern.search(text)]
    if len(named) > 1:
        raise VTSSError(
            "the config names classes of both lightning.pytorch and pytorch_lightning; "
            "a Trainer takes one package's callbacks and loggers: use one of them"
        )
    if not named:
        return _lightning.DEFAULT
    package = next((p for p in _lightning.PACKAGES if p.__name__ == named[0]), None)
    if package is None:
        dist = "lightning" if named[0] == "lightning.pytorch" else "pytorch-lightning"
        raise VTSSError(f"the config names {named[0]} classes: pip install {dist}")
    return package


def _config_paths(args: list[str]) -> list[str]:
    """The files after ``--config``/``-c`` (or ``--config=FILE``)."""
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def _read_quietly(path: str) -> str:
    """A config's text; a file that cannot be read is left to the CLI to report."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def main(args: list[str] | None = None) -> None:
    """Entry point; user-fixable errors print one line and exit with status 2, file
    faults (with the path and the cause) with status 1.

    CPython ignores SIGXFSZ at start-up, so a write past ``ulimit -f`` fails with
    EFBIG (reported like a full disk) instead of killing the process.
    """
    try:
        package = cli_package(sys.argv[1:] if args is None else list(args))
        cli_class(package.__name__)(
            model_class=package.LightningModule,
            datamodule_class=SyntheticAugmentationDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            auto_configure_optimizers=False,
            # with ``logger: false`` every run saves config.yaml into the same folder;
            # rerunning a command must not fail on the previous run's copy
            save_config_kwargs={"overwrite": True},
        )
    except VTSSError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:  # jsonargparse wraps errors raised while instantiating
        cause = _vtss_cause(exc)
        if cause is not None:
            _fail(str(cause), cause.exit_code)
        line = file_fault(exc)
        if line is None:
            raise
        _fail(line, VTSSFileError.exit_code)


def _fail(line: str, code: int) -> None:
    print(f"vtss: error: {line}", file=sys.stderr)
    sys.exit(code)


def _as_dict(namespace) -> dict:
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace or {})


def _vtss_cause(exc: BaseException) -> VTSSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, VTSSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# ------------------------------------------------------------------ file faults

_HINTS = {
    errno.EISDIR: "a file belongs there, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EACCES: "check its permissions or choose another --trainer.default_root_dir",
    errno.EPERM: "check its permissions or choose another --trainer.default_root_dir",
    errno.EROFS: "choose another --trainer.default_root_dir",
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space",
    errno.EFBIG: "the file-size limit (ulimit -f) was reached; raise it",
}


def file_fault(exc: BaseException) -> str | None:
    """One line naming the path and the cause when ``exc`` is a file fault, else None.

    File faults are an ``OSError`` or jsonargparse's ``PathError`` (raised, or the
    explicit ``__cause__`` of what was raised) and any error raised while Lightning
    reads the ``ckpt_path`` checkpoint (corrupt, truncated, not a checkpoint, or
    refused by the weights-only loader).
    Anything else is a bug and keeps its traceback.
    """
    ckpt = _checkpoint_being_read(exc)
    if ckpt is not None:
        return f"cannot load the checkpoint '{ckpt}': {_checkpoint_cause(exc)}"
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return _os_fault(exc)
        if _is_path_error(exc):  # e.g. config.yaml cannot be saved: it names the path
            hint = "; make the folder writable or choose another --trainer.default_root_dir"
            return f"{exc}{hint}" if "writable" in str(exc) else str(exc)
        seen.add(id(exc))
        exc = exc.__cause__  # not __context__: an error raised while handling one is a bug
    return None


def _is_path_error(exc: BaseException) -> bool:
    """jsonargparse's ``PathError`` (a ``TypeError``; not public API, so by name)."""
    kind = type(exc)
    return kind.__name__ == "PathError" and kind.__module__.startswith("jsonargparse")


def _os_fault(exc: OSError) -> str:
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        paths = [p for p in [_file_in_traceback(exc.__traceback__)] if p is not None]
    where = " -> ".join(f"'{p}'" for p in paths)
    return f"{where}: {_os_cause(exc)}" if where else _os_cause(exc)


def _os_cause(exc: OSError) -> str:
    if exc.errno is None or exc.strerror is None:  # e.g. FileNotFoundError("... not found")
        return "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
    cause = f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
    hint = _HINTS.get(exc.errno)
    return cause if hint is None or hint == exc.strerror.lower() else f"{cause}; {hint}"


def _file_in_traceback(tb: TracebackType | None) -> str | None:
    """The name of the innermost open file a frame of the traceback holds (the file
    being written when, e.g., PIL's or json's write failed without naming it)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            name = getattr(value, "name", None) if isinstance(value, io.IOBase) else None
            if isinstance(name, str):
                return name
    return None


#: Functions that read a checkpoint, by (name, a package folder in their file's
#: path): the local that holds the path. Lightning's LightningCLI (hyperparameters) and
#: checkpoint connector (the fit's state) read ``ckpt_path``; both call ``torch.load``.
_LIGHTNING = frozenset({"lightning", "pytorch_lightning"})
_CHECKPOINT_READERS = {
    ("_parse_ckpt_path", _LIGHTNING): "ckpt_path",
    ("resume_start", _LIGHTNING): "checkpoint_path",
    ("load", frozenset({"torch"})): "f",
}


def _checkpoint_being_read(exc: BaseException) -> str | None:
    """The checkpoint a frame of ``exc``'s traceback was reading (outermost first)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        folders = set(Path(code.co_filename).parts)
        for (name, packages), local in _CHECKPOINT_READERS.items():
            if code.co_name == name and packages & folders:
                value = tb.tb_frame.f_locals.get(local)
                return str(getattr(value, "name", value))  # a path, or an open file
        tb = tb.tb_next
    return None


def _checkpoint_cause(exc: BaseException) -> str:
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused is not None:
        return (
            f"it asks to import {refused.group(1)}, which the weights-only loader refuses: "
            "a checkpoint holds tensors and plain data, not code (nothing was run)"
        )
    if isinstance(exc, OSError):
        return _os_cause(exc)
    if isinstance(exc, KeyError):
        return f"not a Lightning checkpoint (it has no {text} entry)"
    if isinstance(exc, EOFError):
        return "the file is empty or cut short (corrupt)"
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text) or re.search(r"[^.\n]+", text)
    reason = detail.group(detail.lastindex or 0).strip() if detail else type(exc).__name__
    return f"the file is corrupt or not a torch checkpoint ({type(exc).__name__}: {reason})"


def _progress_note(trainer) -> str:
    found = _kept_progress(trainer)
    if found is None:
        return ""
    path, fits = found
    return f"; rerunning the same command resumes from the {fits} finished fit(s) kept in {path}"


def _kept_progress(trainer) -> tuple[Path, int] | None:
    """The newest progress file of the run's VTSSCallback that holds finished fits."""
    callback = next((c for c in trainer.callbacks if isinstance(c, VTSSCallback)), None)
    if callback is None or not callback.config.progress:
        return None
    given = callback.config.progress_path
    if given:  # as given, with its search tag, or next to another search's file
        name = Path(given.replace("{search}", "*"))
        found = name.parent.glob(f"{name.stem}*{name.suffix}")
    else:
        found = Path(trainer.default_root_dir).glob("vtss_progress*.jsonl")
    try:
        kept = [(p.stat().st_mtime, p, n) for p in found if p.is_file() and (n := _fits(p))]
    except OSError:
        return None
    return max(kept)[1:] if kept else None


def _fits(path: Path) -> int:
    """Finished fits recorded in a progress file (not a strategy's notes)."""
    n = 0
    for line in path.read_text(errors="replace").splitlines()[1:]:
        try:
            n += "loss" in json.loads(line)
        except (ValueError, TypeError):
            continue
    return n


if __name__ == "__main__":
    main()
