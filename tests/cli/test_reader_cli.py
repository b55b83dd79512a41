"""`stowpay reader`: run (a real process), status, forward-now, vault verify, and their answers
to an unreachable reader or a bad directory."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import stripe
from click.testing import CliRunner

from stowpay.cli import main
from stowpay.cloud.testing import LiveCloud
from stowpay.reader.vault import CardRead, OfflinePayment, SealingKey, Vault
from stowpay.wire.clock import ManualClock

SEALING = SealingKey("csk_test_cli", bytes(range(32)))


@pytest.fixture(autouse=True)
def logs_to_the_real_stderr() -> None:
    """Configure logging before CliRunner swaps the streams (it binds the stream it finds)."""
    from stowpay import logs

    logs.configure("warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line_error(result: object, *, code: int = 1) -> str:
    exit_code = getattr(result, "exit_code", None)
    output = str(getattr(result, "output", ""))
    assert exit_code == code, output
    assert "Traceback" not in output
    assert output.startswith("Error: "), output
    assert output.count("\n") == 1, output
    return output


def make_vault(directory: Path, amounts: tuple[int, ...] = (1299, 500)) -> None:
    """A stopped reader's vault holding a few payments."""
    with Vault.open(directory / "vault", clock=ManualClock(), sealing_key=SEALING) as vault:
        for amount in amounts:
            vault.store(
                OfflinePayment(
                    "acct_cli",
                    "tmr_cli",
                    amount,
                    "usd",
                    "automatic",
                    CardRead("4242424242424242", 12, 2031, "visa", "contact_emv"),
                )
            )


# -- without a running reader ------------------------------------------------------------------


def test_status_of_an_unreachable_reader_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["reader", "status", "--reader", url])
    assert "cannot reach the reader" in one_line_error(result)
    result = CliRunner().invoke(main, ["reader", "forward-now", "--reader", url])
    assert "cannot reach the reader" in one_line_error(result)
    result = CliRunner().invoke(main, ["reader", "status", "--reader", "not a url"])
    one_line_error(result)


def test_status_of_a_bad_directory_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["reader", "status", "--data", str(tmp_path / "nope")])
    assert "not a reader's data directory" in one_line_error(result)
    result = CliRunner().invoke(main, ["reader", "status", "--data", str(tmp_path)])
    assert "not a reader's data directory" in one_line_error(result)
    (tmp_path / "reader.json").write_text("{broken")
    result = CliRunner().invoke(main, ["reader", "status", "--data", str(tmp_path)])
    assert "damaged" in one_line_error(result)


def test_vault_verify(tmp_path: Path) -> None:
    make_vault(tmp_path)
    result = CliRunner().invoke(main, ["reader", "vault", "verify", "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Checked 2 records: 2 valid" in result.output and "OK" in result.output
    # Alter a stored amount behind the vault's back.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "vault" / "vault.db")
    conn.execute("UPDATE records SET amount = 1 WHERE sequence = 2")
    conn.commit()
    conn.close()
    result = CliRunner().invoke(
        main, ["reader", "vault", "verify", "--data", str(tmp_path), "--json"]
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [f["kind"] for f in report["findings"]] == ["altered"]
    assert report["findings"][0]["sequence"] == 2


def test_vault_verify_of_a_bad_directory_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["reader", "vault", "verify", "--data", str(tmp_path)])
    assert "no vault" in one_line_error(result)
    assert not (tmp_path / "vault").exists()  # nothing was made
    make_vault(tmp_path)
    (tmp_path / "vault" / "device.key").unlink()
    result = CliRunner().invoke(main, ["reader", "vault", "verify", "--data", str(tmp_path)])
    assert "device key" in one_line_error(result)


def test_run_with_an_unusable_address_or_cloud_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main,
            [
                "reader",
                "run",
                "--cloud",
                "http://127.0.0.1:9",
                "--data",
                str(tmp_path / "a"),
                "--port",
                str(port),
            ],
        )
    assert "cannot listen" in one_line_error(result)
    result = CliRunner().invoke(
        main, ["reader", "run", "--cloud", "ftp://x", "--data", str(tmp_path / "b")]
    )
    assert "--cloud" in one_line_error(result)
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(
        main, ["reader", "run", "--cloud", "http://127.0.0.1:9", "--data", str(blocker / "x")]
    )
    one_line_error(result)


# -- a real reader process ---------------------------------------------------------------------


class ReaderProcess:
    """`stowpay reader run` as a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, cloud: str, data: Path, port: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stowpay.cli.main",
                "reader",
                "run",
                "--cloud",
                cloud,
                "--data",
                str(data),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        for line in self.seen:
            if line.startswith(prefix):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r}; saw {self.seen}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        assert self.proc.stderr is not None
        assert "Traceback" not in self.proc.stderr.read()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[ReaderProcess]]:
    started: list[ReaderProcess] = []
    yield started
    for p in started:
        p.kill()


def test_reader_run_registers_serves_and_restarts_registered(
    tmp_path: Path, cloud: LiveCloud, processes: list[ReaderProcess]
) -> None:
    data = tmp_path / "reader"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = ReaderProcess(cloud.url, data, port)
    processes.append(first)
    code = first.expect("Registration code: ").split(": ", 1)[1]
    assert first.expect("Reader listening on ") == f"Reader listening on {url}"
    status = httpx.get(url + "/v1/status").json()
    assert status["registered"] is False and status["registration_code"] == code
    # The merchant registers it at a Location.
    merchant = stripe.StripeClient(
        cloud.accounts[0].secret_key, base_addresses={"api": cloud.url}, max_network_retries=0
    )
    location = merchant.v1.terminal.locations.create(
        params={
            "display_name": "Shop",
            "address": {"line1": "1 Main", "city": "X", "postal_code": "1", "country": "US"},
        }
    )
    reader = merchant.v1.terminal.readers.create(
        params={"registration_code": code, "location": location.id}
    )
    deadline = time.monotonic() + 30
    while not httpx.get(url + "/v1/status").json()["registered"]:
        assert time.monotonic() < deadline, "the reader did not register"
        time.sleep(0.05)
    # Registration is seen first; the reader fetches its Location just after.
    while True:
        result = CliRunner().invoke(main, ["reader", "status", "--reader", url, "--json"])
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        if shown["location"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert shown["reader"] == reader.id and shown["location"] == location.id
    result = CliRunner().invoke(main, ["reader", "status", "--reader", url])
    assert result.exit_code == 0 and reader.id in result.output
    assert "stored payments" in result.output and "next retry" in result.output
    result = CliRunner().invoke(main, ["reader", "forward-now", "--reader", url])
    assert result.exit_code == 0 and "Forwarding started." in result.output
    # A second reader on the same directory is refused in one line.
    result = CliRunner().invoke(
        main, ["reader", "run", "--cloud", cloud.url, "--data", str(data), "--port", "0"]
    )
    assert "already running" in one_line_error(result)
    assert first.stop() == 0
    # Stopped: the directory tells the same story, and the vault verifies.
    result = CliRunner().invoke(main, ["reader", "status", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    offline = json.loads(result.stdout)
    assert offline["reader"] == reader.id and offline["network"] == "not running"
    assert offline["offline"]["count"] == 0
    result = CliRunner().invoke(main, ["reader", "vault", "verify", "--data", str(data)])
    assert result.exit_code == 0, result.output
    # Restarted, it is still registered: no new code.
    second = ReaderProcess(cloud.url, data, port)
    processes.append(second)
    second.expect("Reader listening on ")
    status = httpx.get(url + "/v1/status").json()
    assert status["registered"] is True and status["reader"] == reader.id
    assert second.stop() == 0
    assert not any(line.startswith("Registration code") for line in second.seen)


def test_status_from_a_directory_shows_the_backlog(tmp_path: Path) -> None:
    from stowpay.reader.state import ReaderState

    ReaderState.open(tmp_path, rng=__import__("random").Random(1))
    make_vault(tmp_path, (1299, 500, 700))
    result = CliRunner().invoke(main, ["reader", "status", "--data", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["registered"] is False
    assert status["offline"]["count"] == 3
    assert status["offline"]["amounts"] == {"usd": 2499}
    assert status["offline"]["quarantined"] == 0
    result = CliRunner().invoke(main, ["reader", "status", "--data", str(tmp_path)])
    assert result.exit_code == 0
    assert "2499 usd" in result.output and "stored payments" in result.output
