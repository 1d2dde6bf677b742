"""Progress: one path for every long phase, always on stderr, never silent.

Library functions take a ``progress`` argument (a ``Progress`` factory:
``progress(total, desc)`` -> a bar with ``update(n)`` and ``close()``); the
CLI chooses what it draws with ``bar()``:

* on a terminal, a tqdm bar, redrawn once a second by a timer thread, so the
  clock, the rate and the ETA keep moving during a stall (tqdm itself only
  redraws when bytes arrive, and a frozen bar looks like a hung program);
* when stderr is not a terminal (nohup, systemd, ``kubectl logs``, a pipe),
  one plain summary line every ``GROKFETCH_PROGRESS_INTERVAL`` seconds
  (default 30; ``0`` turns them off), like aria2c's periodic summaries;
* nothing with ``--quiet``, ``--json`` or ``GROKFETCH_NO_PROGRESS=1``.

Units are decimal everywhere (kB, MB, GB: what the summaries and ``df -H``
say), and a bar's rate counts only what this run did: bytes already on disk
(``initial``) are shown but not counted as speed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from grokfetch.units import format_bytes

REFRESH_EVERY = 1.0  # seconds between redraws of a terminal bar
DEFAULT_LINE_INTERVAL = 30.0  # seconds between plain progress lines when stderr is no terminal


class Bar(Protocol):
    def update(self, n: int) -> Any: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> Any: ...
    def close(self) -> Any: ...


# What a library function takes as ``progress``: (total bytes, description) -> a Bar.
ProgressFactory = Callable[[int, str], Bar]


class NullBar:
    """A bar that does nothing (for --quiet, tests and non-terminals)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def set_description_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SharedCounter:
    """A thread-safe byte counter in front of a bar: hashing threads share one bar, and
    ``done`` is what they counted (the bytes a report says were hashed)."""

    def __init__(self, bar: Bar) -> None:
        self.bar = bar
        self._lock = threading.Lock()
        self.done = 0

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.bar.update(n)


def no_progress(total: int, desc: str) -> Bar:
    """The default ProgressFactory: nothing shown."""
    return NullBar()


def human(n: float, unit: str = "B") -> str:
    """Decimal units, as every summary prints them (``units.format_bytes``); other units
    counted: ``3 layers``."""
    if unit != "B":
        return f"{n:,.0f} {unit}{'' if n == 1 else 's'}"
    return format_bytes(n)


def line_interval() -> float:
    """Seconds between plain progress lines (GROKFETCH_PROGRESS_INTERVAL; 0: none)."""
    text = os.environ.get("GROKFETCH_PROGRESS_INTERVAL", "")
    try:
        value = float(text) if text else DEFAULT_LINE_INTERVAL
    except ValueError:
        value = DEFAULT_LINE_INTERVAL
    return value if value == value and value >= 0 else DEFAULT_LINE_INTERVAL  # NaN, negative


class _Ticker:
    """A daemon thread calling ``fn`` every ``every`` seconds until stopped."""

    def __init__(self, every: float, fn: Any) -> None:
        self._stop = threading.Event()
        self._every = every
        self._fn = fn
        self._thread = threading.Thread(target=self._run, name="grokfetch-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._fn()
            except Exception:  # a redraw must never kill the run (closed stderr, say)
                return

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)


class LiveBar:
    """A tqdm bar with a timer: redrawn every second even when nothing arrives."""

    def __init__(self, total: int | None, desc: str, unit: str = "B", initial: int = 0) -> None:
        from tqdm import tqdm

        byte_unit = unit == "B"
        self._lock = threading.Lock()
        self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=byte_unit,
                         unit_divisor=1000, initial=initial, file=sys.stderr,
                         dynamic_ncols=True, leave=True)
        self._ticker = _Ticker(REFRESH_EVERY, self._tick)

    @property
    def n(self) -> int:
        return int(self._bar.n)

    @property
    def total(self) -> int | None:
        return self._bar.total

    def _tick(self) -> None:
        with self._lock:
            b = self._bar
            now = b._time()
            dt = now - b.last_print_t
            if b.n == b.last_print_n and dt >= REFRESH_EVERY / 2:
                # tqdm feeds its smoothed rate only with bytes, so in a stall the last
                # speed would stay on screen: feed it the empty interval instead.
                with contextlib.suppress(AttributeError, TypeError):  # tqdm internals
                    b._ema_dn(0)
                    b._ema_dt(dt)
                    b.last_print_t = now
            b.refresh()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self._bar.update(n)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        with self._lock:
            self._bar.set_postfix_str(s, refresh=refresh)

    def set_description_str(self, s: str, refresh: bool = True) -> None:
        with self._lock:
            self._bar.set_description_str(s, refresh=refresh)

    def write(self, text: str) -> None:
        """A message above the bar (not through it)."""
        with self._lock:
            self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self._ticker.stop()
        with self._lock:
            self._bar.close()

    def __enter__(self) -> LiveBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineBar:
    """Plain progress lines for logs: ``get: 1.2 GB of 318.2 GB (0.4%), 45.3 MB/s, ...``.

    One line every ``every`` seconds, whether or not anything moved (a stall
    shows as 0 B/s, not as silence); the rate is over the last interval.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "B", initial: int = 0,
                 every: float | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.postfix = ""
        self._lock = threading.Lock()
        self._t0 = self._t_last = time.monotonic()
        self._n_last = initial
        every = line_interval() if every is None else every
        self._ticker = _Ticker(every, self._tick) if every > 0 else None

    def line(self) -> str:
        now = time.monotonic()
        rate = (self.n - self._n_last) / max(now - self._t_last, 1e-9)
        self._t_last, self._n_last = now, self.n
        parts = [human(self.n, self.unit)]
        if self.total:
            parts[0] += f" of {human(self.total, self.unit)} ({100 * self.n / self.total:.1f}%)"
        parts.append(f"{human(rate, self.unit)}/s" if self.unit == "B"
                     else f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_clock(now - self._t0)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts)

    def _tick(self) -> None:
        with self._lock:
            text = self.line()
        print(text, file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def set_description_str(self, s: str, refresh: bool = True) -> None:
        self.desc = s

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()

    def __enter__(self) -> LineBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def bar(total: int | None, desc: str, enabled: bool | None = None, *, unit: str = "B",
        initial: int = 0) -> Any:
    """The bar for a long phase: a live tqdm bar on a terminal, plain lines otherwise.

    ``enabled=None``: decide from stderr (a terminal: LiveBar; anything else:
    LineBar) unless GROKFETCH_NO_PROGRESS is set; False: a NullBar; True: a
    LiveBar.  ``initial``: what was already done before this run (shown,
    not counted in the rate).
    """
    if enabled is False or (enabled is None and os.environ.get("GROKFETCH_NO_PROGRESS")):
        return NullBar()
    if enabled or sys.stderr.isatty():
        return LiveBar(total, desc, unit, initial)
    return LineBar(total, desc, unit, initial)


def bytes_bar(total: int | None, desc: str, enabled: bool | None = None, initial: int = 0) -> Any:
    """A byte-counting bar (see ``bar``)."""
    return bar(total, desc, enabled, initial=initial)
