"""The connectivity monitor: whether the cloud can be reached, measured by a heartbeat.

The reader decides online or offline per payment from this, and wakes the forwarder when the
cloud comes back. A probe that raises `CloudUnreachable` means offline; one that returns, or
that the cloud answered with a refusal (`CloudRefused`: it is there, it said no), means online.
The monitor starts offline and reports each transition once, in order.

A library: the probe is injected (the reader daemon passes its heartbeat call), so is the clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from ..wire.clock import Clock
from .cloud_link import CloudRefused, CloudUnreachable

log = structlog.get_logger("stowpay.reader.connectivity")

#: The background thread re-reads the clock at least this often (real seconds).
_MAX_WAIT = 5.0


class ConnectivityMonitor:
    """Calls `probe()` (the heartbeat) every `interval` s while online, `offline_interval` while
    offline; a probe raising CloudUnreachable means offline. Calls on_change(online: bool) on
    each transition.
    """

    def __init__(
        self,
        probe: Callable[[], object],
        *,
        on_change: Callable[[bool], None],
        interval: float = 10.0,
        offline_interval: float = 2.0,
        clock: Clock,
    ) -> None:
        if interval <= 0 or offline_interval <= 0:
            raise ValueError("intervals must be positive")
        self._probe = probe
        self._on_change = on_change
        self._interval = interval
        self._offline_interval = offline_interval
        self._clock = clock
        # Checks run one at a time, and on_change is called inside, so transitions are
        # reported once each and in the order they happened. Re-entrant: on_change may check.
        self._checking = threading.RLock()
        self._online = False
        self._last_ok_at: float | None = None
        self._next_check_at: float | None = None
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def online(self) -> bool:
        """The result of the latest probe (False before the first)."""
        return self._online

    @property
    def last_ok_at(self) -> float | None:
        """When (on the injected clock) a probe last reached the cloud."""
        return self._last_ok_at

    @property
    def next_check_at(self) -> float | None:
        """When the background thread probes next: `interval` or `offline_interval` after the
        latest probe, by its result; None before the first."""
        return self._next_check_at

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def check(self) -> bool:
        """Probe once now (synchronously); returns whether the cloud was reached."""
        with self._checking:
            online = self._reached()
            now = self._clock.now()
            changed = online != self._online
            self._online = online
            if online:
                self._last_ok_at = now
            self._next_check_at = now + (self._interval if online else self._offline_interval)
            if changed:
                log.info("connectivity_changed", online=online)
                try:
                    self._on_change(online)
                except Exception:
                    log.error("connectivity_listener_failed", online=online, exc_info=True)
            return online

    def _reached(self) -> bool:
        try:
            self._probe()
        except CloudUnreachable:
            return False
        except CloudRefused:
            return True
        except Exception:
            # A probe that fails in an unforeseen way has not shown the cloud to be there.
            log.error("connectivity_probe_failed", exc_info=True)
            return False
        return True

    def start(self) -> None:
        """Probe now, then on schedule, in a background thread."""
        with self._checking:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="stowpay-connectivity", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background thread (at once unless a probe is under way)."""
        self._stopping.set()
        self._wakeup.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        first = True
        while not self._stopping.is_set():
            due = self._next_check_at
            now = self._clock.now()
            if first or due is None or now >= due:
                first = False
                self.check()
                continue
            self._wakeup.wait(min(due - now, _MAX_WAIT))
            self._wakeup.clear()
