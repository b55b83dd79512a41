"""The `stowpay` command: accounts, serving, and its answers to bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
from click.testing import CliRunner

from stowpay.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_create_account_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["cloud", "create-account", "--db", str(tmp_path / "a.db"), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["account"].startswith("acct_")
    assert out["secret_key"].startswith("sk_test_")
    assert out["publishable_key"].startswith("pk_test_")
    # Only a hash of the secret key is stored.
    assert out["secret_key"].encode() not in (tmp_path / "a.db").read_bytes()


def test_bad_option_is_one_line_and_exit_2() -> None:
    result = CliRunner().invoke(main, ["cloud", "serve", "--port", "many"])
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output
    assert "Traceback" not in result.output


def test_unopenable_database_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["cloud", "create-account", "--db", str(tmp_path / "missing" / "dir" / "a.db")]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot open database")
    assert "Traceback" not in result.output


def test_serve_makes_a_test_account_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stowpay.cli.main",
            "cloud",
            "serve",
            "--db",
            str(tmp_path / "s.db"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        key = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("Secret key:"):
                key = line.split()[-1]
            if line.startswith("Stowpay cloud on"):
                break
        assert key.startswith("sk_test_")
        url = f"http://127.0.0.1:{port}/v1/payment_intents"
        for _ in range(100):
            try:
                r = httpx.post(url, data={"amount": "1000", "currency": "usd"}, auth=(key, ""))
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["object"] == "payment_intent"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
