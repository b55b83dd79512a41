"""The demo's services as real processes on loopback: a cloud and a reader.

Each is the `stowpay` command itself in a child process, its output in a log file of the work
directory, so stopping the cloud is a real outage: the process is gone, its port refuses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx2 as httpx


class ServiceError(Exception):
    """A service did not start or answer in time; the message names its log file."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], timeout: float, log: Path | None) -> Any:
    """Poll `check` until it returns something true, else raise `ServiceError`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (httpx.TransportError, OSError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            where = f" (see {log})" if log else ""
            raise ServiceError(f"timed out waiting for {what}{where}")
        time.sleep(0.05)


class Service:
    """One `stowpay ...` child process."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = args
        self.log = log
        self._out: IO[str] | None = None
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Service:
        """Start the process; its output goes to the log file."""
        self._out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stowpay.cli", *self.args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return self

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        """Raise `ServiceError` if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceError(f"the {self.name} exited ({self.proc.returncode}); see {self.log}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after `timeout`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out is not None:
            self._out.close()
            self._out = None

    def log_text(self) -> str:
        """What the process wrote so far."""
        return self.log.read_text() if self.log.exists() else ""


def start_cloud(db: str, port: int, workdir: Path, smtp_url: str | None = None) -> Service:
    """`stowpay cloud serve` on loopback (emailing receipts through `smtp_url`, if given);
    returns once it answers."""
    args = ["cloud", "serve", "--db", db, "--port", str(port)]
    if smtp_url is not None:
        args += ["--smtp-url", smtp_url]
    cloud = Service("cloud", args, workdir / "cloud.log").start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        cloud.check_alive()
        return httpx.get(url + "/device/v1/ping", timeout=2).status_code == 200

    wait_until("the cloud to answer", ready, 30, cloud.log)
    return cloud


def start_reader(cloud_url: str, data: Path, port: int, workdir: Path) -> tuple[Service, str]:
    """`stowpay reader run`; returns once its LAN API answers, with its registration code
    (empty when it was registered already)."""
    reader = Service(
        "reader",
        ["reader", "run", "--cloud", cloud_url, "--data", str(data), "--port", str(port)],
        workdir / "reader.log",
    ).start()
    url = f"http://127.0.0.1:{port}"

    def status() -> dict[str, Any] | None:
        reader.check_alive()
        answer = httpx.get(url + "/v1/status", timeout=2)
        body = dict(answer.json())
        return body if body.get("registered") or body.get("registration_code") else None

    found = wait_until("the reader to start", status, 30, reader.log)
    return reader, "" if found.get("registered") else str(found["registration_code"])
