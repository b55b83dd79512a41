"""What the SDK's tests run against, all real and on loopback: a cloud process that can be
stopped and started again on the same address, a reader daemon, a merchant backend (the
official `stripe` client) and an offline listener that records what it heard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import stripe

from stowpay.reader.daemon import ReaderConfig, ReaderDaemon
from stowpay.terminal import (
    ConnectionTokenProvider,
    DiscoveryMethod,
    NetworkStatus,
    OfflineListener,
    OfflineStatus,
    PaymentIntent,
    Reader,
    TerminalException,
)

CLI = [sys.executable, "-m", "stowpay.cli"]
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Wait for something another thread or process brings about (the deadline only stops a
    hang; nothing is asserted about how long it took)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.02)


class Cloud:
    """`stowpay cloud serve` as a child process on a fixed port: stop it, start it again."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = str(root / "cloud.db")
        self.log = root / "cloud.log"
        out = subprocess.run(
            [*CLI, "cloud", "create-account", "--db", self.db, "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        self.account: dict[str, str] = json.loads(out.stdout)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [
            "cloud",
            "serve",
            "--db",
            self.db,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_until(self._answers, "the cloud to answer", timeout=60)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the cloud exited; see {self.log}")
        try:
            return httpx.get(self.url + "/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Stop the process (the internet is gone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Merchant:
    """The merchant's backend: the official `stripe` client on the cloud's account."""

    cloud: Cloud
    client: stripe.StripeClient
    location: str

    def register(self, code: str, label: str = "Till") -> str:
        """Register a reader showing `code` at the Location; its id."""
        reader = self.client.v1.terminal.readers.create(
            params={"registration_code": code, "location": self.location, "label": label}
        )
        return str(reader.id)

    def by_order(self, order: str) -> list[Any]:
        """The PaymentIntents whose metadata names `order`."""
        found = self.client.v1.payment_intents.search(
            params={"query": f"metadata['order_id']:'{order}'"}
        )
        return list(found.data)


def make_merchant(cloud: Cloud, *, offline: bool = True) -> Merchant:
    """A Location whose Configuration enables offline payments (or not)."""
    client = stripe.StripeClient(
        cloud.account["secret_key"], base_addresses={"api": cloud.url}, max_network_retries=0
    )
    config = client.v1.terminal.configurations.create(params={"offline": {"enabled": offline}})
    location = client.v1.terminal.locations.create(
        params={"display_name": "Main St", "address": ADDRESS, "configuration_overrides": config.id}
    )
    return Merchant(cloud, client, str(location.id))


class BackendTokens(ConnectionTokenProvider):
    """The app's token provider: asks the merchant's backend (the `stripe` client) each time.

    `fail` makes it raise, as a backend out of reach would."""

    def __init__(self, merchant: Merchant) -> None:
        self.merchant = merchant
        self.fail = False
        self.calls = 0

    def fetch_connection_token(self) -> str:
        self.calls += 1
        if self.fail:
            raise RuntimeError("the backend is down")
        token = self.merchant.client.v1.terminal.connection_tokens.create(
            params={"location": self.merchant.location}
        )
        return str(token.secret)


@dataclass
class Recorder(OfflineListener):
    """An offline listener that keeps everything it hears, and which thread it heard it on."""

    statuses: list[OfflineStatus] = field(default_factory=list)
    forwarded: list[tuple[PaymentIntent, TerminalException | None]] = field(default_factory=list)
    failures: list[TerminalException] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_offline_status_change(self, status: OfflineStatus) -> None:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.statuses.append(status)

    def on_payment_intent_forwarded(
        self, payment_intent: PaymentIntent, error: TerminalException | None
    ) -> None:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.forwarded.append((payment_intent, error))

    def on_forwarding_failure(self, error: TerminalException) -> None:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.failures.append(error)

    def saw_network(self, status: NetworkStatus) -> bool:
        """The latest status heard has the SDK's network at `status`."""
        with self.lock:
            return bool(self.statuses) and self.statuses[-1].sdk.network_status is status

    def forwarded_orders(self) -> dict[str, list[PaymentIntent]]:
        with self.lock:
            out: dict[str, list[PaymentIntent]] = {}
            for pi, _ in self.forwarded:
                out.setdefault(pi.metadata.get("order_id", ""), []).append(pi)
            return out


class ReaderBox:
    """A smart reader daemon in this process (its LAN API on a fixed port), restartable."""

    def __init__(self, cloud: Cloud, data: Path, *, offline_interval: float = 0.5) -> None:
        self.cloud = cloud
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.codes: list[str] = []
        self.offline_interval = offline_interval
        self.daemon: ReaderDaemon | None = None
        self.start()

    def start(self) -> None:
        config = ReaderConfig(
            cloud_url=self.cloud.url,
            data_dir=self.data,
            port=self.port,
            heartbeat_interval=2.0,
            offline_interval=self.offline_interval,
            registration_interval=0.2,
        )
        self.daemon = ReaderDaemon(config, out=self._out)
        self.daemon.start()

    def _out(self, line: str) -> None:
        if line.startswith("Registration code:"):
            self.codes.append(line.split(":", 1)[1].strip())

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.daemon = None

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/v1/status", timeout=5).json())

    def register(self, merchant: Merchant) -> str:
        """Register at the merchant's Location and wait until the reader reports online."""
        code = wait_until(lambda: self.codes and self.codes[-1], "a registration code")
        reader_id = merchant.register(code)
        wait_until(
            lambda: self.status()["registered"] and self.status()["network"] == "online",
            "the reader to activate and report online",
        )
        return reader_id

    def as_reader(self, reader_id: str) -> Reader:
        """The reader as an app knows it without discovery (its id and LAN address)."""
        return Reader(id=reader_id, lan_url=self.url, discovery_method=DiscoveryMethod.INTERNET)
