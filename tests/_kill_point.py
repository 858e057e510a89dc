"""Run the ``vtss`` CLI in forked children and SIGKILL them at exact points.

``tests/test_faults.py`` needs dozens of CLI runs; each fresh process would spend
~8 s importing torch and Lightning on a 2-core machine. ``python _kill_point.py``
imports :mod:`vtss_lightning.cli` once, then, for each JSON job line on stdin, forks
a child that runs :func:`vtss_lightning.cli.main` on the job's arguments (what the
``vtss`` console script runs), its stdout and stderr in the job's log file. Each
finished child is answered with one JSON line ``{"id": ..., "rc": ...}`` (``rc`` as
:mod:`subprocess` gives it: ``-9`` for SIGKILL).

A job's ``kill`` is ``["record", n]``: the child kills itself with SIGKILL as it opens
the progress file (``vtss_progress*.jsonl``) to write more while ``n`` records (lines
after the header: finished fits, and a strategy's own notes) are already on disk, so
the fit or note being written is lost; or ``["report", 1]``: as it opens the report
for writing (every fit and the final fit done). An audit hook on ``open`` sees those
opens; ``SIGKILL`` leaves no cleanup, flush or checkpoint, as ``kill -9`` would.
Nothing here runs a torch op before forking (single-threaded;
``OMP_NUM_THREADS=1``), so the children start clean.
"""

from __future__ import annotations

import fnmatch
import json
import os
import select
import signal
import sys
import time
import traceback

_WRITE = os.O_WRONLY | os.O_RDWR
_TARGETS = {"record": "vtss_progress*.jsonl", "report": "vtss_report*.json*"}


def progress_lines(path) -> int:
    """Whole JSON lines after the header of a progress file (a torn last line is not)."""
    n = 0
    with open(path, "rb") as fh:
        for line in fh.read().decode("utf-8", errors="replace").split("\n")[1:]:
            try:
                n += isinstance(json.loads(line), dict)
            except ValueError:
                continue
    return n


def install_kill(target: str, n: int) -> None:
    """SIGKILL this process as it opens the target file for writing: the report, or
    the progress file once it holds ``n`` records."""

    def hook(event: str, args: tuple) -> None:
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        flags = args[2] if isinstance(args[2], int) else 0
        path = os.fsdecode(args[0])
        if not flags & _WRITE or not fnmatch.fnmatch(os.path.basename(path), _TARGETS[target]):
            return
        if target == "report" or (os.path.exists(path) and progress_lines(path) >= n):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def _child(job: dict, main) -> None:
    code = 1
    try:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.chdir(job.get("cwd") or os.getcwd())
        if job.get("kill"):
            install_kill(*job["kill"])
        sys.argv = ["vtss", *job["argv"]]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _answer(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def serve() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot  # noqa: F401  (the report's curve)

    from vtss_lightning.cli import main  # the import every child shares

    running: dict[int, tuple[object, float]] = {}
    buffer, stdin_open = b"", True
    _answer({"ready": os.getpid()})
    while stdin_open or running:
        if stdin_open and select.select([0], [], [], 0.01)[0]:
            chunk = os.read(0, 65536)
            stdin_open = bool(chunk)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in filter(None, lines):
                job = json.loads(line)
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:
                    _child(job, main)
                running[pid] = (job["id"], time.monotonic() + job.get("timeout", 300))
        elif not stdin_open:
            time.sleep(0.01)
        _reap(running)


def _reap(running: dict[int, tuple[object, float]]) -> None:
    for pid, (job_id, deadline) in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            del running[pid]
            _answer({"id": job_id, "rc": os.waitstatus_to_exitcode(status)})
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            del running[pid]
            _answer({"id": job_id, "rc": "timeout"})


if __name__ == "__main__":
    serve()
