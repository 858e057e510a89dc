"""The Tune side of ``strategy="ray"``: a quiet local or cluster session, and one
Tune run whose trials' reports reach the search as they arrive."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vtss_lightning.errors import VTSSError

#: The Tune run's environment (official Tune variables): the legacy console engine,
#: silent at ``verbose=0`` (the default engine prints its setup box and the results
#: folder whatever the verbosity), and no CSV/JSON/TensorBoard result files.
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
#: Loggers of the Tune run: silent unless the search is verbose, and then without
#: the INFO records that name the results folder (removed after the run).
TUNE_LOGGERS = ("ray.tune", "ray.train", "ray.air")
#: What complains only of the result files that :data:`TUNE_ENV` turns off.
RESULT_FILES_LOGGER = "ray.tune.analysis.experiment_analysis"


def import_ray():
    try:
        import ray
        from ray import tune
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise VTSSError(
            'strategy="ray" needs Ray Tune: pip install "vtss-lightning[ray]" (or "ray[tune]")'
        ) from err
    return ray, tune


def ray_session():
    """Ray (started locally, quietly, when no cluster is connected) and Tune."""
    ray, tune = import_ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return ray, tune


# ------------------------------------------------------------------ Tune run
class TuneRun:
    """``tuner.fit()`` in a thread, each trial's report handed on as it arrives.

    Iterating starts the run and yields ``(trial, report)``; afterwards ``grid`` is
    Tune's result grid. Leaving the loop early (an error or interrupt in the search)
    stops the remaining trials through a Tune stopper.
    """

    def __init__(self, tune, build) -> None:
        self.reports: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.tuner = build(tune_hooks(tune, self.reports, self.stop))
        self.grid = None
        self._error: BaseException | None = None

    def _fit(self) -> None:
        try:
            self.grid = self.tuner.fit()
        except BaseException as err:  # noqa: BLE001 - re-raised in the search's thread
            self._error = err
        finally:
            self.reports.put(None)

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        thread = threading.Thread(target=self._fit, name="vtss-ray-tune", daemon=True)
        thread.start()
        try:
            while (item := self.reports.get()) is not None:
                yield item
        finally:
            self.stop.set()  # a no-op once every trial has ended
            thread.join()
        if self._error is not None:
            raise self._error


def tune_hooks(tune, reports: queue.Queue, stop: threading.Event) -> list:
    """A Tune callback passing each trial's report on, and a stopper watching ``stop``.

    Tune pickles its run configuration; the queue and event stay out of that copy.
    """

    class Reports(tune.Callback):
        def __init__(self, out: queue.Queue) -> None:
            self.out = out

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.out.put((trial.config["trial"], result))

        def __getstate__(self) -> dict:
            return {}

    class StopAll(tune.Stopper):
        def __init__(self, event: threading.Event) -> None:
            self.event = event

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.event.is_set()

        def __getstate__(self) -> dict:
            return {}

    return [Reports(reports), StopAll(stop)]


@contextmanager
def quiet_tune(verbose: bool) -> Iterator[None]:
    """Tune's environment (:data:`TUNE_ENV`) and its loggers' levels for the run."""
    saved = {k: os.environ.get(k) for k in TUNE_ENV}
    os.environ.update(TUNE_ENV)
    levels = {n: logging.CRITICAL for n in TUNE_LOGGERS}
    if verbose:  # Tune's warnings (e.g. a cluster too small for a trial) and errors
        levels = {n: logging.WARNING for n in TUNE_LOGGERS} | {RESULT_FILES_LOGGER: logging.ERROR}
    loggers = {logging.getLogger(n): level for n, level in levels.items()}
    before = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, level in before.items():
            lg.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def trial_failure(result) -> str:
    """The status of the jobs of a trial that gave no report."""
    if result is None:
        return "failed: the Ray trial did not run"
    if result.error is not None:
        lines = str(result.error).strip().splitlines() or [type(result.error).__name__]
        return f"failed: Ray trial error: {lines[-1][:300]}"
    return "failed: the Ray trial reported no loss"
