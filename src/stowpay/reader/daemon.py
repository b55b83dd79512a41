"""The reader daemon: the core, the cloud link, the connectivity monitor and the LAN server.

`ReaderDaemon.run` is what `stowpay reader run` does: open the data directory (state and
vault), register with the cloud if need be (printing the code to show), heartbeat, forward,
and serve the LAN API until SIGTERM or SIGINT, then stop everything cleanly (the vault's tip
file is written on close).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn

from .. import __version__, logs
from ..wire.clock import Clock, SystemClock
from .cloud_link import CloudLink, CloudRefused, CloudUnreachable, HttpCloudLink
from .connectivity import ConnectivityMonitor
from .core import DEFAULT_DEVICE_TYPE, ReaderCore
from .lan import create_lan_app
from .state import ReaderState, StateError
from .vault import (
    DEFAULT_MAX_RECORDS,
    Vault,
    VaultError,
    VaultLockedError,
    VerifyReport,
    verify_directory,
)

log = structlog.get_logger("stowpay.reader.daemon")

DEFAULT_PORT = 4300
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DaemonError(Exception):
    """The reader cannot start (its data directory, its vault, its address); one line."""


@dataclass(frozen=True)
class ReaderConfig:
    """How to run a reader."""

    cloud_url: str
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device_type: str = DEFAULT_DEVICE_TYPE
    registration_code: str | None = None
    unattended_forwarding: bool = False
    #: seconds between heartbeats while online, and between probes while offline
    heartbeat_interval: float = 10.0
    offline_interval: float = 2.0
    #: seconds between activation polls while unregistered
    registration_interval: float = 1.0
    log_level: str = "warning"
    #: the most payments the vault holds before refusing with
    #: OFFLINE_PAYMENTS_DATABASE_TOO_LARGE (the device's storage budget)
    vault_max_records: int = DEFAULT_MAX_RECORDS


def _print(line: str) -> None:
    print(line, flush=True)


class _Server(uvicorn.Server):
    """uvicorn, ending the POS's event streams first so shutdown does not wait on them."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own version raises the signal again after shutdown, which would end the
        # process before the vault is closed; here a signal only asks for a clean stop.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


class ReaderDaemon:
    """One reader process. `open`, then `run` (blocking) or `start` (a thread, for tests)."""

    def __init__(
        self,
        config: ReaderConfig,
        *,
        link: CloudLink | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        network_id: Callable[[], str | None] = lambda: None,
        out: Callable[[str], None] = _print,
    ) -> None:
        self.config = config
        self._link = link
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.rng = rng if rng is not None else random.Random()
        self._network_id = network_id
        self._out = out
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.state: ReaderState | None = None
        self.vault: Vault | None = None
        self.core: ReaderCore | None = None
        self.monitor: ConnectivityMonitor | None = None
        self._server: _Server | None = None
        self._socket: socket.socket | None = None
        self._owned_link: HttpCloudLink | None = None
        self.url = ""

    # -- opening -------------------------------------------------------------------------------

    def open(self) -> ReaderCore:
        """Open the data directory and the vault, bind the LAN address; `DaemonError` if not."""
        cfg = self.config
        try:
            state = ReaderState.open(cfg.data_dir, rng=self.rng)
        except StateError as exc:
            raise DaemonError(str(exc)) from None
        try:
            vault = Vault.open(state.vault_dir, clock=self.clock, max_records=cfg.vault_max_records)
        except VaultLockedError:
            raise DaemonError(f"a reader is already running on {cfg.data_dir}") from None
        except VaultError as exc:
            raise DaemonError(f"cannot open the vault in {state.vault_dir}: {exc}") from None
        try:
            self._socket = _bind(cfg.host, cfg.port)
        except OSError as exc:
            vault.close()
            raise DaemonError(
                f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
            ) from None
        if self._link is None:
            try:
                self._owned_link = _http_link(cfg.cloud_url)
            except DaemonError:
                vault.close()
                self._socket.close()
                raise
        link = self._link if self._link is not None else self._owned_link
        assert link is not None
        host = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else None
        # Reported in heartbeats for discovery; a reader on every interface names none.
        lan_url = None if host is None else self._listening_url()
        core = ReaderCore(
            state,
            vault,
            link,
            clock=self.clock,
            rng=self.rng,
            device_type=cfg.device_type,
            software_version=__version__,
            network_id=self._network_id,
            ip_address=lambda: host,
            lan_url=lambda: lan_url,
            unattended_forwarding=cfg.unattended_forwarding,
            registration_code=cfg.registration_code,
            on_registration_code=lambda code: self._out(f"Registration code: {code}"),
        )
        self.monitor = ConnectivityMonitor(
            core.heartbeat,
            on_change=core.set_online,
            interval=cfg.heartbeat_interval,
            offline_interval=cfg.offline_interval,
            clock=self.clock,
        )
        core.connectivity_check = self.monitor.check
        self.state, self.vault, self.core = state, vault, core
        return core

    # -- running -------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (uvicorn's handlers), then close everything."""
        core = self.core if self.core is not None else self.open()
        server = self._make_server(core)
        self._start_background(core)
        watcher = threading.Thread(target=self._announce, name="stowpay-announce", daemon=True)
        watcher.start()
        try:
            assert self._socket is not None
            server.run(sockets=[self._socket])
        finally:
            self.close()

    def start(self) -> str:
        """Serve in a background thread (tests); returns the LAN URL once it is listening."""
        core = self.core if self.core is not None else self.open()
        server = self._make_server(core)
        assert self._socket is not None
        sock = self._socket
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name="stowpay-reader-lan",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        self._start_background(core)
        self._wait_started(server)
        self.url = self._listening_url()
        return self.url

    def _make_server(self, core: ReaderCore) -> _Server:
        logs.configure(self.config.log_level)
        config = uvicorn.Config(
            create_lan_app(core),
            log_level=self.config.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config, on_exit=core.end_sessions)
        return self._server

    def _start_background(self, core: ReaderCore) -> None:
        core.start()
        thread = threading.Thread(
            target=self._registration_then_monitor, args=(core,), name="stowpay-register"
        )
        thread.daemon = True
        thread.start()
        self._threads.append(thread)

    def _registration_then_monitor(self, core: ReaderCore) -> None:
        """Poll activation quickly while unregistered; then heartbeat on the monitor's beat."""
        while not self._stop.is_set() and not core.registered:
            try:
                core.poll_registration()
            except CloudUnreachable:
                pass
            except CloudRefused as exc:
                log.warning("registration_refused", code=exc.code, message=exc.message)
            except Exception:
                log.error("registration_failed", exc_info=True)
            if not core.registered:
                self._stop.wait(self.config.registration_interval)
        if not self._stop.is_set() and self.monitor is not None:
            self.monitor.start()

    def _wait_started(self, server: _Server) -> None:
        while not server.started and not self._stop.is_set():
            if any(not t.is_alive() for t in self._threads[:1]):
                raise DaemonError("the LAN server did not start")
            self._stop.wait(0.01)

    def _listening_url(self) -> str:
        assert self._socket is not None
        host, port = self._socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def _announce(self) -> None:
        server = self._server
        assert server is not None
        while not server.started:
            if self._stop.wait(0.02) or server.should_exit:
                return
        self.url = self._listening_url()
        self._out(f"Reader listening on {self.url}")

    # -- stopping ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop a reader started with `start` and close everything."""
        if self.core is not None:
            self.core.end_sessions()
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        """Stop the monitor and the forwarder, close the vault (idempotent)."""
        self._stop.set()
        if self.monitor is not None:
            self.monitor.stop()
        if self.core is not None:
            self.core.close()
        if self.vault is not None:
            with contextlib.suppress(VaultError):
                self.vault.close()
            self.vault = None
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        if self._owned_link is not None:
            self._owned_link.close()
            self._owned_link = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _http_link(cloud_url: str) -> HttpCloudLink:
    if not cloud_url.startswith(("http://", "https://")):
        raise DaemonError(f"--cloud must be an http:// or https:// URL, not {cloud_url!r}")
    return HttpCloudLink(cloud_url)


def run_reader(config: ReaderConfig, **kwargs: Any) -> None:
    """Run a reader in this process until a signal stops it (`stowpay reader run`)."""
    daemon = ReaderDaemon(config, **kwargs)
    daemon.open()
    daemon.run()
    sys.stdout.flush()


# --- the operator's side: `stowpay reader status | forward-now | vault verify` ----------------


class OperatorError(Exception):
    """A reader or a data directory could not be asked; one line for the operator."""


def fetch_status(url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """`GET /v1/status` of a running reader."""
    return _call_reader("GET", url, "/v1/status", timeout=timeout)


def request_forward(url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """`POST /v1/forward_now` on a running reader."""
    return _call_reader("POST", url, "/v1/forward_now", timeout=timeout)


def _call_reader(method: str, url: str, path: str, *, timeout: float) -> dict[str, Any]:
    import httpx2 as httpx

    base = url.rstrip("/")
    try:
        response = httpx.request(method, base + path, timeout=timeout)
    except httpx.HTTPError as exc:
        raise OperatorError(f"cannot reach the reader at {base}: {_first_line(exc)}") from None
    except ValueError as exc:  # a URL httpx cannot use
        raise OperatorError(f"{url!r} is not a reader URL: {_first_line(exc)}") from None
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise OperatorError(f"{base} did not answer as a reader (HTTP {response.status_code})")
    if response.status_code >= 400:
        raw = doc.get("error")
        error: dict[str, Any] = raw if isinstance(raw, dict) else {}
        raise OperatorError(
            f"the reader refused: {error.get('code', response.status_code)}: "
            f"{error.get('message', '')}".rstrip(": ")
        )
    return doc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def status_from_directory(directory: str | Path, *, clock: Clock) -> dict[str, Any]:
    """What a stopped reader's data directory holds (a running reader's vault is locked)."""
    try:
        state = ReaderState.inspect(directory)
    except StateError as exc:
        raise OperatorError(str(exc)) from None
    identity = state.identity
    context = state.context
    offline: dict[str, Any] = {
        "count": 0,
        "amounts": {},
        "oldest_stored_at": None,
        "oldest_age": None,
        "quarantined": 0,
        "next_retry_at": None,
    }
    if (state.vault_dir / "vault.db").exists():
        try:
            vault = Vault.open(state.vault_dir, clock=clock, salvage=True, check_integrity=False)
        except VaultLockedError:
            raise OperatorError(
                f"the reader on {directory} is running: ask it with --reader URL"
            ) from None
        except VaultError as exc:
            raise OperatorError(f"cannot open the vault in {state.vault_dir}: {exc}") from None
        try:
            summary = vault.summary()
        finally:
            vault.close()
        oldest = summary.oldest_stored_at
        offline.update(
            count=summary.count,
            amounts=dict(summary.amounts),
            oldest_stored_at=oldest,
            oldest_age=None if oldest is None else max(clock.now() - oldest, 0.0),
            quarantined=summary.quarantined,
        )
    registration = state.registration
    return {
        "registered": identity is not None,
        "registration_code": None if identity or registration is None else registration.code,
        "reader": None if identity is None else identity.reader,
        "account": None if identity is None else identity.account,
        "location": None if context is None else context.location_id,
        "network": "not running",
        "offline_enabled": context is not None and context.offline_enabled,
        "offline": offline,
        "connected_pos": None,
    }


def verify_vault(directory: str | Path, *, clock: Clock) -> VerifyReport:
    """Check the vault in a reader's data directory without decrypting anything.

    `directory` is the data directory (or the vault directory itself). `OperatorError` when
    it cannot be checked at all.
    """
    root = Path(directory)
    vault_dir = root / "vault" if (root / "vault").is_dir() else root
    if not (vault_dir / "vault.db").is_file():
        raise OperatorError(f"no vault in {directory} (expected {root / 'vault' / 'vault.db'})")
    try:
        return verify_directory(vault_dir, clock=clock)
    except VaultLockedError:
        raise OperatorError(
            f"the vault in {vault_dir} is open in a running reader; stop it to verify"
        ) from None
    except VaultError as exc:
        raise OperatorError(f"cannot check the vault in {vault_dir}: {exc}") from None
