"""SIGINT and SIGTERM for the command-line drivers: stop cleanly, say so in one line, and exit
128 + the signal (130 for Ctrl-C, 143 for SIGTERM), so that the same command resumes.

A driver wraps its work in `StopSignals`. The first signal either raises `Interrupted` where the
driver stands (the default) or, while a stage that can stop gracefully runs (a Tune `fit`), calls
that stage's `graceful` hook and lets it return (`fit_tuner` for a Tune fit); the driver then
reads `received` and stops. A second signal while shutting down raises `Interrupted` at once. Nothing here imports Ray.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A BaseException, so that no `except Exception` between the signal
    and the driver's main swallows it; a KeyboardInterrupt, because Ray's blocking calls
    (`ray.get`, a Train `fit`) stop only for that: they turn it, raised by the handler, into a
    plain KeyboardInterrupt (anything else ends there in a SystemError after the call returns).
    `StopSignals.translated` turns that back into an Interrupted."""

    def __init__(self, signum: int, detail: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.detail = detail  # what was done when it stopped, for the driver's one line

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by signal `signum`: 130 (SIGINT), 143 (SIGTERM)."""
    return 128 + signum


class StopSignals:
    """Handles SIGINT and SIGTERM inside a `with` block (main thread only; elsewhere it does
    nothing). `received` is the first signal's number, or None."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._graceful: Callable[[int], None] | None = None
        self._previous: dict[int, object] = {}
        self._entered = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second signal: stop at once
            raise Interrupted(signum)
        self.received = signum
        if self._graceful is None:
            raise Interrupted(signum)
        self._graceful(signum)

    @contextmanager
    def graceful(self, hook: Callable[[int], None]) -> Iterator[None]:
        """While the block runs, the first signal calls `hook(signum)` instead of raising: the
        block is expected to return soon after; the caller then checks `received`. A signal that
        arrived before the block raises at its start."""
        if self.received is not None:
            raise Interrupted(self.received)
        self._graceful = hook
        try:
            yield
        finally:
            self._graceful = None

    @contextmanager
    def translated(self) -> Iterator[None]:
        """Around Ray's blocking calls: the plain KeyboardInterrupt Ray raises for a signal that
        arrived meanwhile leaves the block as Interrupted(the first signal)."""
        try:
            yield
        except KeyboardInterrupt as exc:
            if isinstance(exc, Interrupted) or self.received is None:
                raise
            raise Interrupted(self.received) from None

    def check(self) -> None:
        """Raise `Interrupted` if a signal has arrived (between stages)."""
        if self.received is not None:
            raise Interrupted(self.received)

    def install(self) -> None:
        """(Re)install the handlers: call again after code that replaces them (ray.init sets
        its own SIGTERM handler). Only inside the `with` block."""
        if self._entered and threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                previous = signal.signal(s, self._handle)
                self._previous.setdefault(s, previous)

    def __enter__(self) -> StopSignals:
        self._entered = True
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        self._entered = False


def fit_tuner(tuner, stop: StopSignals):
    """tuner.fit(), where the first stop signal asks Tune to end the stage gracefully (Tune's own
    SIGUSR1 handler, installed by fit, stops the trials and saves the experiment state). Both
    search stages (the search, each confirmation round) run through it; the tuner comes in built,
    so nothing here imports Ray."""

    def ask_tune_to_stop(signum: int) -> None:
        if not callable(signal.getsignal(signal.SIGUSR1)):  # Tune's loop is not up yet
            raise Interrupted(signum)
        print(f"{signal.Signals(signum).name}: stopping the running trials and saving the "
              "search state (a second signal quits at once)", file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGUSR1)

    stop.install()  # ray.init replaced the SIGTERM handler
    with stop.graceful(ask_tune_to_stop), stop.translated():  # Ray's own KeyboardInterrupt too
        return tuner.fit()
