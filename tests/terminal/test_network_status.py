"""The SDK's network status comes from the cloud really answering: an outage is noticed and
reported, so is the recovery; a slow cloud is not an outage; a hung one is."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal_kit import BackendTokens, Cloud, Merchant, Recorder, wait_until

from stowpay.terminal import (
    ConnectionTokenProvider,
    NetworkStatus,
    OfflineStatus,
    Terminal,
)


class NoTokens(ConnectionTokenProvider):
    def fetch_connection_token(self) -> str:
        raise RuntimeError("no backend in this test")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_outage_and_recovery_are_noticed_and_reported(
    tmp_path: Path, cloud: Cloud, merchant: Merchant
) -> None:
    events = Recorder()
    with Terminal(
        BackendTokens(merchant), events, api_base=cloud.url, data_dir=tmp_path / "pos"
    ) as terminal:
        assert terminal.get_offline_status().reader is None
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "online")
        cloud.stop()
        wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "offline")
        assert terminal.get_offline_status().sdk.network_status is NetworkStatus.OFFLINE
        cloud.start()
        wait_until(lambda: events.saw_network(NetworkStatus.ONLINE), "online again")
        seen = [s.sdk.network_status for s in events.statuses]
        assert seen == [NetworkStatus.ONLINE, NetworkStatus.OFFLINE, NetworkStatus.ONLINE]
        assert events.threads == {"stowpay-terminal-listener"}


class _SlowPing(http.server.BaseHTTPRequestHandler):
    delay = 0.0
    served = 0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        body = b'{"ok": true, "server_time": 0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        type(self).served += 1

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def slow_cloud() -> Iterator[tuple[str, type[_SlowPing]]]:
    """A server that answers the probe, slower than the gap between probes."""
    handler = type("Slow", (_SlowPing,), {"delay": 0.9, "served": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)
def test_a_slow_cloud_is_not_an_outage(
    tmp_path: Path, slow_cloud: tuple[str, type[_SlowPing]]
) -> None:
    url, handler = slow_cloud
    events = Recorder()
    with Terminal(NoTokens(), events, api_base=url, data_dir=tmp_path / "pos"):
        wait_until(lambda: handler.served >= 8, "eight slow answers")
        seen = [s.sdk.network_status for s in events.statuses]
        assert seen == [NetworkStatus.ONLINE]


@pytest.fixture
def hung_cloud() -> Iterator[str]:
    """A server that takes connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    sock.close()


@pytest.mark.timeout(60)
def test_a_hung_cloud_is_an_outage(tmp_path: Path, hung_cloud: str) -> None:
    events = Recorder()
    with Terminal(NoTokens(), events, api_base=hung_cloud, data_dir=tmp_path / "pos") as terminal:
        wait_until(lambda: events.saw_network(NetworkStatus.OFFLINE), "offline")
        assert terminal.get_offline_status() == OfflineStatus(
            sdk=events.statuses[-1].sdk, reader=None
        )


def test_api_base_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hung_cloud: str
) -> None:
    monkeypatch.setenv("STOWPAY_API_BASE", hung_cloud + "/")
    with Terminal(NoTokens(), data_dir=tmp_path / "pos") as terminal:
        assert terminal.api_base == hung_cloud
