"""The SDK's network status: whether the cloud answers, from a light probe and from requests.

A background thread asks ``GET /device/v1/ping`` every `interval` seconds (each probe waits at
most `timeout`, longer than the gap, so a slow cloud still counts as there). The status turns
OFFLINE after `failures` probes in a row failed, or at once when a probe hung for the whole
`timeout`; it turns ONLINE at the first probe that answers. Requests the SDK makes for the app
report in too (`report`), so an outage seen by a request counts at once.

With a cloud that stops, connections are refused at once and the outage shows within about
``failures * interval`` seconds; a cloud that hangs shows after `timeout`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx2 as httpx
import structlog

from ._models import NetworkStatus

log = structlog.get_logger("stowpay.terminal.connectivity")

PING_PATH = "/device/v1/ping"


class CloudProbe:
    """Measures whether the cloud at `api_base` answers; `on_change(status)` on each change."""

    def __init__(
        self,
        api_base: str,
        *,
        on_change: Callable[[NetworkStatus], None],
        interval: float = 0.5,
        timeout: float = 1.5,
        failures: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if interval <= 0 or timeout <= 0 or failures < 1:
            raise ValueError("interval and timeout must be positive, failures at least 1")
        self._url = api_base.rstrip("/") + PING_PATH
        self._on_change = on_change
        self._interval = interval
        self._failures_needed = failures
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._lock = threading.Lock()
        self._status = NetworkStatus.UNKNOWN
        self._failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_probe = threading.Event()

    @property
    def status(self) -> NetworkStatus:
        """The latest verdict (UNKNOWN before the first probe)."""
        return self._status

    def start(self) -> None:
        """Probe in a background thread until `close`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="stowpay-terminal-probe", daemon=True
        )
        self._thread.start()

    def wait_first(self, timeout: float) -> NetworkStatus:
        """The status once the first probe finished (or UNKNOWN after `timeout` seconds)."""
        self._first_probe.wait(timeout)
        return self._status

    def close(self) -> None:
        """Stop probing."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._client.close()

    def check(self) -> NetworkStatus:
        """Probe once now (from the caller's thread); the resulting status."""
        try:
            response = self._client.get(self._url)
        except httpx.TimeoutException:
            self.report(False, hung=True)
        except httpx.HTTPError:
            self.report(False)
        else:
            # Any answer but a server failure shows the cloud there (a 404 from a cloud
            # without the ping route still is the cloud answering).
            self.report(response.status_code < 500)
        finally:
            self._first_probe.set()
        return self._status

    def report(self, reached: bool, *, hung: bool = False) -> None:
        """A request to the cloud succeeded (`reached`) or failed; updates the status."""
        with self._lock:
            if reached:
                self._failures = 0
                new = NetworkStatus.ONLINE
            else:
                self._failures += 1
                offline = hung or self._failures >= self._failures_needed
                if not offline and self._status is NetworkStatus.UNKNOWN:
                    # Nothing ever answered: no reason to keep saying "unknown".
                    offline = True
                new = NetworkStatus.OFFLINE if offline else self._status
            changed = new is not self._status
            self._status = new
        if changed:
            log.info("network_status_changed", status=new.value)
            self._on_change(new)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.check()
            wait = self._interval - (time.monotonic() - started)
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()
