"""Stopping a run cleanly on SIGINT (Ctrl-C) and SIGTERM (``kill``, ``docker stop``, Slurm, Kubernetes).

``stop_on_signals()`` installs handlers that only record the request; the loop finishes the current step (and
its validation, when one is due), writes ``last.pt`` and raises ``TrainingInterrupted``, which ``fcnseg train``
turns into one line and exit code 130 (SIGINT) or 143 (SIGTERM). A second Ctrl-C raises ``KeyboardInterrupt`` at
once, without saving, except under ``torchrun``: its launcher forwards the terminal's Ctrl-C to the ranks, which
thus see every Ctrl-C twice (torchrun kills ranks that do not stop in time). The previous handlers come back when
the ``with`` block ends. Forked children (DataLoader workers) ignore SIGINT and die on SIGTERM, as they would
without these handlers: the main process decides when they stop.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing ``last.pt`` at ``step``; ``exit_code`` is 128 + the signal."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted at step {step}; add --resume to continue")


@dataclass
class StopRequest:
    """What the handlers recorded: the first signal received (None: keep training) and the Ctrl-Cs counted."""

    signum: int | None = None
    sigints: int = 0
    force_on_second_sigint: bool = True
    owner_pid: int = field(default_factory=os.getpid)

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.owner_pid:  # a forked worker: behave as if no handler had been installed
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT:
            self.sigints += 1
            if self.sigints > 1 and self.force_on_second_sigint:
                raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum


@contextmanager
def stop_on_signals(*, force_on_second_sigint: bool = True) -> Iterator[StopRequest]:
    """Record SIGINT and SIGTERM in the yielded StopRequest; outside the main thread, install nothing."""
    request = StopRequest(force_on_second_sigint=force_on_second_sigint)
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set from the main thread
        return
    previous = {signum: signal.signal(signum, request.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
