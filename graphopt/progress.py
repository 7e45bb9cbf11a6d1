"""Progress a person and a CI log can both read, and library noise kept off the screen.

Why: ``make demo-backends`` printed nothing to a log for seven minutes per tuned model (a rich
spinner draws only on a terminal) while TVM's C++ warnings (``Unknown schedule rule
"meta_schedule.pool_max"``, repeated) went straight to the screen. So:

- :class:`Progress` is a spinner on a terminal and, anywhere else, one plain line per step that
  lasts longer than a second (sub-second steps would only be noise, and a bad input that fails
  at once stays a single error line) plus a heartbeat line every few seconds while a step runs
  (``GRAPHOPT_PROGRESS_SECONDS``, default 10);
- :func:`counted` is the one helper for counted loops (calibration batches, training steps,
  tuning trials): inside a run it shows ``what done/total`` through the run's ``Progress``
  (spinner text on a terminal, the heartbeat line in a log); outside one, a rich bar on a
  terminal and nothing otherwise;
- :func:`library_noise_to` points file descriptor 2 at a log file for the duration of a run, so
  whatever torch, TVM or ONNX Runtime print from C++ or Python lands in the output folder's
  ``graphopt.log``; graphopt's own messages go to the real stderr it hands back.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar, Token
from pathlib import Path
from typing import TextIO

__all__ = ["Progress", "counted", "library_noise_to"]

_ACTIVE: ContextVar[Progress | None] = ContextVar("graphopt_progress", default=None)


def _heartbeat_seconds() -> float:
    try:
        return max(0.5, float(os.environ.get("GRAPHOPT_PROGRESS_SECONDS", "10")))
    except ValueError:
        return 10.0


class Progress:
    """``with Progress(stream) as say: say("tuning")`` — spinner or plain, timestamped lines."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        heartbeat_s: float | None = None,
        announce_after_s: float = 1.0,
    ) -> None:
        self.stream = stream or sys.stderr
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else _heartbeat_seconds()
        self.announce_after_s = announce_after_s
        self._announced = True  # nothing pending
        self._start = time.monotonic()
        self._message = ""
        self._since = self._beaten = self._start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = None
        self._detail = ""
        self._token: Token | None = None
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> Progress:
        self._token = _ACTIVE.set(self)
        if self._interactive:
            from rich.console import Console

            self._status = Console(file=self.stream).status("starting")
            self._status.__enter__()
        else:
            self._thread = threading.Thread(
                target=self._beat, name="graphopt-progress", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._status is not None:
            self._status.__exit__(None, None, None)

    def __call__(self, message: str) -> None:
        with self._lock:
            if message == self._message:
                return
            self._message, self._since = message, time.monotonic()
            self._detail = ""
            self._announced = False
            self._beaten = self._since
        if self._status is not None:
            self._status.update(message)

    def detail(self, text: str) -> None:
        """A sub-step count (``12/64``) that does not start a new step: the spinner shows it,
        the next heartbeat line carries it."""
        with self._lock:
            self._detail = text
            message = self._message
        if self._status is not None:
            self._status.update(f"{message} {text}".strip())

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self._start
        try:
            self.stream.write(f"[graphopt {elapsed:6.1f}s] {text}\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe: progress is best effort
            pass

    def _beat(self) -> None:
        """Announce a step once it has lasted ``announce_after_s``; then every heartbeat."""
        tick = min(0.25, self.announce_after_s, self.heartbeat_s)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                message, since = self._message, self._since
                if self._detail:
                    message = f"{message}: {self._detail}"
                if not message:
                    continue
                if not self._announced and now - since >= self.announce_after_s:
                    self._announced, self._beaten, text = True, now, message
                elif self._announced and now - self._beaten >= self.heartbeat_s:
                    self._beaten, text = now, f"… still {message} ({now - since:.0f} s)"
                else:
                    continue
            self._line(text)


@contextmanager
def counted(what: str, total: int, *, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """``advance(note="")`` once per item of a loop of ``total`` items (see the module doc)."""
    active = _ACTIVE.get()
    if not enabled:
        yield lambda note="": None
    elif active is not None:
        done = 0

        def advance(note: str = "") -> None:
            nonlocal done
            done += 1
            active.detail(f"{what} {done}/{total}" + (f" {note}" if note else ""))

        yield advance
    elif sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), "{task.description}")
        with Bar(what, *columns, transient=True) as bar:
            task = bar.add_task("", total=total)
            yield lambda note="": bar.update(task, advance=1, description=note)
    else:
        yield lambda note="": None


@contextmanager
def library_noise_to(log_path: Path, *, enabled: bool = True) -> Iterator[TextIO]:
    """Send file descriptor 2 (C++ and Python library output) to ``log_path``; yield a stream
    writing to the real stderr for graphopt's own messages. Disabled: yield ``sys.stderr``."""
    if not enabled:
        yield sys.stderr
        return
    with suppress(OSError, ValueError):
        sys.stderr.flush()
    saved = os.dup(2)
    real = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(log_path, "ab")  # noqa: SIM115 - its descriptor is dup'ed over fd 2
    try:
        os.dup2(log.fileno(), 2)
        yield real
    finally:
        with suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        log.close()
        real.close()
