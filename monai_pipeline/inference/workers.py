"""Helper processes that run a batch's per-case step (:func:`~monai_pipeline.inference.case.predict_case`) side
by side on a CPU; the batch runner calls the same step in its own process.

Why processes: on a CPU, PyTorch's threads scale poorly on one 3D sliding window at a time (1.6-1.9x from one to
two threads on this project's 2-core machine), so several single-threaded processes, each predicting its own
case, finish a batch sooner than one process using every core (``docs/performance.md``). Helpers are
*spawned* (fresh interpreters), never forked: a forked child of a process whose OpenMP thread pool has run hangs
in its first parallel region. Every process takes its next case when it is free, so a long case never idles the
others.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from typing import Any

import SimpleITK as sitk
import torch

from monai_pipeline.environment import available_memory_gib
from monai_pipeline.errors import PipelineError
from monai_pipeline.inference.case import Case, CaseOptions, CaseOutcome, predict_case
from monai_pipeline.inference.predictor import Predictor
from monai_pipeline.runtime import end_process, keep_freed_memory

logger = logging.getLogger(__name__)

#: memory set aside per process when ``workers="auto"`` picks the number of processes (GiB): a
#: 512 x 512 x 600 CT peaks at 2.1 GB in one process (docs/performance.md)
WORKER_MEMORY_GIB = 3.0

def resolve_workers(requested: int | str, n_cases: int, device: torch.device) -> int:
    """How many processes predict a batch of ``n_cases``: ``"auto"`` is one per CPU thread PyTorch would use
    (``torch.get_num_threads()``, which honours ``OMP_NUM_THREADS``), at most one per case and one per
    :data:`WORKER_MEMORY_GIB` of available memory; always 1 on a GPU and under torchrun (one process per rank
    already). An explicit number is capped at ``n_cases``; more than 1 on a GPU is refused."""
    if requested != "auto" and (not isinstance(requested, int) or requested < 1):
        raise PipelineError(f"workers must be 'auto' or a positive integer, got {requested!r}")
    if device.type != "cpu":
        if requested != "auto" and requested > 1:
            raise PipelineError(f"--workers {requested} runs several CPU processes; on {device.type} one process "
                                "drives the device (use torchrun for several devices)")
        return 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or n_cases < 2:
        return 1
    if requested != "auto":
        return min(int(requested), n_cases)
    memory = available_memory_gib()
    by_memory = n_cases if memory is None else max(1, int(memory // WORKER_MEMORY_GIB))
    return max(1, min(n_cases, torch.get_num_threads(), by_memory))


# --------------------------------------------------------------------------------------------- helper side
def _quiet_settings() -> dict[str, Any]:
    """What this process says and hides -- logging levels (the root's and each named logger's), the warning
    filters and SimpleITK's warning display -- for a spawned helper to repeat (a spawn inherits none of it)."""

    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET}
    return {"root": logging.getLogger().level, "levels": levels, "warnings": list(warnings.filters),
            "sitk_warnings": bool(sitk.ProcessObject.GetGlobalWarningDisplay())}


def _apply_quiet_settings(settings: dict[str, Any]) -> None:

    logging.basicConfig(level=settings["root"], format="%(levelname)s %(name)s: %(message)s")
    for name, level in settings["levels"].items():
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = settings["warnings"]
    sitk.ProcessObject.SetGlobalWarningDisplay(settings["sitk_warnings"])


def _helper_main(conn: Connection, arguments: dict[str, Any], model_sha256: str, threads: int, keep_memory: bool,
                 quiet: dict[str, Any], opts: CaseOptions) -> None:
    """A helper process: load the same model with the same settings, then predict the cases the parent sends
    over ``conn`` until it sends None. Sends ``("ready", None)``, ``("done", CaseOutcome)`` per case,
    ``("unavailable", reason)`` when it cannot start, or ``("error", text)`` on an internal error."""
    try:
        if keep_memory:
            keep_freed_memory()
        _apply_quiet_settings(quiet)
        torch.set_num_threads(threads)
        predictor = Predictor(**arguments)
        if predictor.model_sha256 != model_sha256:
            raise PipelineError(f"{arguments['model_path']} changed since the batch started")
    except Exception as err:  # noqa: BLE001 - reported to the parent, which goes on without this helper
        conn.send(("unavailable", f"{err.__class__.__name__}: {err}"))
        return
    try:
        conn.send(("ready", None))
        while (task := conn.recv()) is not None:
            conn.send(("done", predict_case(predictor, task, opts)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return  # interrupted, or the parent is gone
    except Exception as err:  # noqa: BLE001 - a bug: the parent stops the batch with this text
        conn.send(("error", f"{err.__class__.__name__}: {err}"))
        return
    conn.close()
    end_process(0)  # every case it took is written; the parent waits for this process to end


# --------------------------------------------------------------------------------------------- parent side
@contextmanager
def _helpers_ignore_ctrl_c() -> Iterator[None]:
    """Ignore SIGINT while helpers start, so that they inherit "ignored" through the spawn's fork and exec.

    Ctrl-C reaches every process of the terminal's group; a helper still importing its modules would print a
    KeyboardInterrupt traceback. With SIGINT ignored in the helpers, only the parent handles Ctrl-C, and it
    stops the helpers itself (:meth:`HelperProcesses.__exit__`). Only "ignored" survives an exec (a blocked
    mask is reset by the spawn), so a Ctrl-C in the milliseconds the starts take is dropped and must be
    pressed again. Handlers can only be set from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class HelperError(Exception):
    """A helper process stopped on an internal error (a bug, not a bad case)."""


_FINISHED = object()


class HelperProcesses:
    """``n`` spawned processes predicting cases with the parent's model and settings.

    The cases wait in one queue of the parent; the parent takes its own from it (:meth:`take`) while a
    dispatcher thread hands the next case to each helper that reports one done, over a pipe of its own (no
    lock is shared between processes, so a helper killed at any moment cannot block the others). A helper that
    dies (killed, out of memory) fails the case it was predicting; one that cannot start is reported and the
    others take its share. Use as a context manager; :meth:`outcomes` returns the helpers' finished cases.
    """

    def __init__(self, n: int, predictor: Predictor, cases: list[Case], opts: CaseOptions,
                 threads: int, keep_memory: bool):
        self.cases: queue.Queue = queue.Queue()
        for case in cases:
            self.cases.put(Case(*case))
        self.done: queue.Queue = queue.Queue()
        ctx = multiprocessing.get_context("spawn")
        quiet = _quiet_settings()
        self.links: list[tuple[multiprocessing.process.BaseProcess, Connection, Connection]] = []
        for i in range(n):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_helper_main, daemon=True, name=f"monai-pipeline-helper-{i}",
                               args=(child_end, predictor.arguments, predictor.model_sha256, threads, keep_memory,
                                     quiet, opts))
            self.links.append((proc, parent_end, child_end))
        self.dispatcher = threading.Thread(target=self._dispatch, daemon=True, name="monai-pipeline-dispatcher")
        self.finished = False
        self.closing = False

    def __enter__(self) -> HelperProcesses:
        with _helpers_ignore_ctrl_c():
            for proc, _, child_end in self.links:
                proc.start()
                child_end.close()  # the helper's end lives in the helper: its death closes the pipe
        self.dispatcher.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing = True  # helpers stopped from here on (an interrupt, an error) did not die on a case
        for proc, _, _ in self.links:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        self.dispatcher.join(timeout=10)  # it sees every pipe close, then ends; only then are the pipes closed here
        for _, conn, _ in self.links:
            conn.close()

    @property
    def pids(self) -> list[int | None]:
        """Process ids of the helpers (None before they start)."""
        return [proc.pid for proc, _, _ in self.links]

    def take(self) -> Case | None:
        """The next case nobody has taken yet, or None."""
        try:
            return self.cases.get_nowait()
        except queue.Empty:
            return None

    def outcomes(self, wait: bool) -> list[CaseOutcome]:
        """The helpers' outcomes since the last call; ``wait``: until every helper has finished."""
        found: list[CaseOutcome] = []
        while not self.finished:
            try:
                item = self.done.get() if wait else self.done.get_nowait()
            except queue.Empty:
                break
            if item is _FINISHED:
                self.finished = True
            elif isinstance(item, HelperError):
                raise item
            else:
                found.append(item)
        return found

    def _dispatch(self) -> None:
        """Runs in a thread: answer each helper's message with its next case (None when there are none left)
        until every helper has gone; a pipe closing under a case fails that case."""
        procs = {conn: proc for proc, conn, _ in self.links}
        current: dict[Connection, Case | None] = dict.fromkeys(procs)
        while current:
            for conn in wait_for(list(current)):
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):  # the helper has exited: normally after None, or it died
                    self._gone(procs[conn], current.pop(conn))
                    continue
                if kind == "done":
                    self.done.put(value)
                elif kind == "unavailable":
                    logger.warning("a helper process could not start (%s); the other processes take its cases", value)
                    continue
                elif kind == "error":
                    self.done.put(HelperError(f"helper process: {value}"))
                    continue
                case = self.take()
                try:
                    conn.send(case)
                    current[conn] = case
                except OSError:  # died before it could take it: back in the queue for the others
                    if case is not None:
                        self.cases.put(case)
                    current[conn] = None
        self.done.put(_FINISHED)

    def _gone(self, proc: multiprocessing.process.BaseProcess, case: Case | None) -> None:
        proc.join()
        if case is None or self.closing:
            return
        reason = f"its helper process died (exit code {proc.exitcode}: killed, or out of memory?)"
        logger.error("%s: failed: %s", case.case_id, reason)
        self.done.put(CaseOutcome(case.case_id, case.path, reason=reason))
