"""Stopping a run cleanly: Ctrl-C and SIGTERM in the main process, workers that die with it.

A terminal's Ctrl-C sends SIGINT to the whole process group; `timeout`, containers, Slurm and
systemd send SIGTERM to the main process. Either way the main process stops within seconds:
the signal becomes `RunInterrupted`, which unwinds the runner (finished cells are already in
the store, cells in flight are abandoned and recomputed on resume), the executor kills its
workers without waiting for their cells, and the command exits 128 + the signal's number
(130, 143). Workers ignore SIGINT (the main process decides) and end themselves when their
parent is gone, however it went (kill -9 included): the kernel's parent-death signal on Linux,
and a watchdog thread that notices being re-parented everywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

PR_SET_PDEATHSIG = 1
WATCHDOG_SECONDS = 1.0


class RunInterrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal (SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def exit_code_of(exc: BaseException) -> int:
    """128 + the signal for RunInterrupted, 130 for a plain KeyboardInterrupt."""
    return exc.exit_code if isinstance(exc, RunInterrupted) else 130


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise RunInterrupted in the main thread, once:
    further signals are ignored while the run unwinds (a second Ctrl-C is never needed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: FrameType | None) -> None:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        raise RunInterrupted(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def init_worker_process(parent: int, threads: int) -> None:
    """In a worker process of main process `parent`: leave SIGINT to it and die with it (also
    when it died while this process was still starting); then `threads` intra-op threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(WATCHDOG_SECONDS):
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="ueb-parent-watchdog", daemon=True).start()
    import torch

    torch.set_num_threads(threads)
