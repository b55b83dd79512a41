"""Real processes on loopback: a cloud and readers started by `stowpay` commands."""

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something true; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (httpx.TransportError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Process:
    """A `stowpay` command run as a child process, its output collected line by line."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        *,
        program: list[str] | None = None,
    ) -> None:
        """Run `stowpay <args>` (or `program <args>`), its output appended to `log`."""
        self.args = args
        self.log_path = log
        self.lines: queue.Queue[str] = queue.Queue()
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [*(program or [sys.executable, "-m", "stowpay.cli"]), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            self.lines.put(line.rstrip("\n"))

    def finished(self) -> bool:
        """The process has exited and every line it wrote has been read.

        (Its exit alone is not enough: the pipe may still hold lines the reader thread has
        not queued yet.)
        """
        return self.proc.poll() is not None and not self._pump.is_alive() and self.lines.empty()

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """The first output line (from now) starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.args[:2]}: no line starting with {prefix!r}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.finished():
                    raise AssertionError(
                        f"{self.args[:2]} exited ({self.proc.returncode}) before {prefix!r}; "
                        f"see {self.log_path}"
                    ) from None
                continue
            if line.startswith(prefix):
                return line

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def create_account(db: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "stowpay.cli", "cloud", "create-account", "--db", db, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def start_cloud(db: str, port: int, logs: Path) -> Process:
    cloud = Process(
        ["cloud", "serve", "--db", db, "--port", str(port), "--log-level", "warning"],
        logs / "cloud.log",
    )
    url = f"http://127.0.0.1:{port}"
    cloud.expect("Stowpay cloud on")
    wait_for("the cloud", lambda: httpx.get(url + "/openapi.json").status_code == 200)
    return cloud


def start_reader(
    cloud_url: str, data: Path, port: int, logs: Path, *extra: str, fresh: bool = False
) -> tuple[Process, str | None]:
    """Start a reader; with `fresh`, the registration code it printed."""
    reader = Process(
        ["reader", "run", "--cloud", cloud_url, "--data", str(data), "--port", str(port), *extra],
        logs / "reader.log",
    )
    code = reader.expect("Registration code:").split(":", 1)[1].strip() if fresh else None
    url = f"http://127.0.0.1:{port}"
    wait_for("the reader's LAN API", lambda: httpx.get(url + "/v1/status").status_code == 200)
    return reader, code


# --- a merchant's site: a cloud process, its account, a Location that takes offline payments ---

ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "62701", "country": "US"}


class Site:
    """A cloud process with one account and an offline-enabled Location, seen through the
    official `stripe` client (the merchant's backend)."""

    def __init__(self, root: Path, *, cloud_log_level: str = "warning") -> None:
        import stripe

        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.db_dir = root / "cloud"
        self.db_dir.mkdir(exist_ok=True)
        self.db = str(self.db_dir / "cloud.db")
        self.account = create_account(self.db)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cloud = Process(
            [
                "cloud",
                "serve",
                "--db",
                self.db,
                "--port",
                str(self.port),
                "--log-level",
                cloud_log_level,
            ],
            self.logs / "cloud.log",
        )
        self.cloud.expect("Stowpay cloud on")
        wait_for("the cloud", lambda: httpx.get(self.url + "/openapi.json").status_code == 200)
        self.merchant = stripe.StripeClient(
            self.account["secret_key"], base_addresses={"api": self.url}, max_network_retries=0
        )
        config = self.merchant.v1.terminal.configurations.create(
            params={"offline": {"enabled": True}}
        )
        location = self.merchant.v1.terminal.locations.create(
            params={
                "display_name": "Main St",
                "address": ADDRESS,
                "configuration_overrides": config.id,
            }
        )
        self.location = str(location.id)

    def token(self) -> str:
        """A fresh connection token, as the merchant's backend makes one for its POS."""
        token = self.merchant.v1.terminal.connection_tokens.create(
            params={"location": self.location}
        )
        return str(token.secret)

    def register(self, code: str) -> str:
        """Register a reader showing `code` at the Location; its id."""
        reader = self.merchant.v1.terminal.readers.create(
            params={"registration_code": code, "location": self.location, "label": "Till"}
        )
        return str(reader.id)

    def payment_intents(self) -> list[Any]:
        """Every PaymentIntent of the account (all pages)."""
        page = self.merchant.v1.payment_intents.list(params={"limit": 100})
        return list(page.auto_paging_iter())

    def close(self) -> None:
        self.cloud.stop()


class Pos:
    """A POS app on the reader's LAN API."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout)

    def call(self, method: str, path: str, **body: Any) -> dict[str, Any]:
        r = self.http.request(method, path, json=body if method != "GET" else None)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/status")

    def connect(self, token: str, pos_id: str = "till-1") -> dict[str, Any]:
        answer = self.call(
            "POST", "/v1/connect", connection_token=token, pos_id=pos_id, fail_if_in_use=False
        )
        self.http.headers["Authorization"] = f"Bearer {answer['session']}"
        return answer

    def sell(
        self,
        order: str,
        amount: int = 1299,
        number: str = "4242424242424242",
        *,
        cvm: str | None = "offline_pin",
        on_started: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Create, collect and confirm a force_offline payment; the confirmed intent.

        `on_started` runs once the intent exists (from then on the order may be stored).
        """
        intent = self.call(
            "POST",
            "/v1/payment_intents",
            amount=amount,
            currency="usd",
            metadata={"order_id": order},
            offline_behavior="force_offline",
        )
        if on_started is not None:
            on_started()
        local = intent["local_id"]
        card: dict[str, Any] = {
            "number": number,
            "exp_month": 12,
            "exp_year": 2034,
            "read_method": "contact_emv",
            "cardholder_name": "Ada Lovelace",
        }
        if cvm is not None:
            card["cvm"] = cvm
        self.call("POST", f"/v1/payment_intents/{local}/collect", card=card)
        return self.call("POST", f"/v1/payment_intents/{local}/confirm")

    def close(self) -> None:
        self.http.close()


def register_reader(site: Site, data: Path, *extra: str) -> tuple[Process, str, str]:
    """Start a new reader on `data`, register it at the site's Location and wait until it is
    online; (the process, its LAN URL, the reader id)."""
    port = free_port()
    reader, code = start_reader(site.url, data, port, site.logs, *extra, fresh=True)
    assert code is not None
    reader_id = site.register(code)
    url = f"http://127.0.0.1:{port}"
    wait_for(
        "the reader to activate and report online",
        lambda: httpx.get(url + "/v1/status").json()["network"] == "online",
    )
    return reader, url, reader_id


def restart_reader(site: Site, data: Path, *extra: str) -> tuple[Process, str]:
    """Start the registered reader on `data` again (a fresh port); (the process, its URL)."""
    port = free_port()
    reader, _ = start_reader(site.url, data, port, site.logs, *extra)
    return reader, f"http://127.0.0.1:{port}"


def wait_drained(url: str, timeout: float = 120.0, left: int = 0) -> dict[str, Any]:
    """Wait until the reader at `url` is idle holding `left` records (quarantined ones); its
    status."""
    status: dict[str, Any] = wait_for(
        "the reader's backlog to drain",
        lambda: (
            (s := httpx.get(url + "/v1/status").json())["offline"]["count"] == left
            and not s["offline"]["forwarding"]
            and s
        ),
        timeout=timeout,
    )
    return status


def integrity_check(vault_dir: Path, scratch: Path) -> str:
    """`PRAGMA integrity_check` of a stopped reader's vault, run on a copy (database + WAL,
    as the dead process left them) so nothing of the original is touched or recovered."""
    import shutil
    import sqlite3

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for name in ("vault.db", "vault.db-wal"):
        if (vault_dir / name).exists():
            shutil.copy2(vault_dir / name, scratch / name)
    conn = sqlite3.connect(str(scratch / "vault.db"))
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


# --- the money check: every acknowledged order charged once, nothing else charged -----------


class Ledger:
    """What the POS saw: orders started (an intent was created) and acknowledged (confirm
    answered 200)."""

    def __init__(self) -> None:
        #: order id -> amount, for every order whose intent was created
        self.started: dict[str, int] = {}
        self.acknowledged: set[str] = set()


def order_of(pi: Any) -> str:
    """The POS's order id in a PaymentIntent's metadata (from the `stripe` client)."""
    metadata = pi.metadata.to_dict() if pi.metadata is not None else {}
    return str(metadata.get("order_id"))


class Verdict:
    """What the cloud holds against a `Ledger`."""

    def __init__(self, ledger: Ledger, intents: list[Any]) -> None:
        by_order: dict[str, list[str]] = {}
        for pi in intents:
            by_order.setdefault(order_of(pi), []).append(str(pi.id))
        self.intents = len(intents)
        self.by_order = by_order
        #: acknowledged orders with no PaymentIntent: payments lost
        self.lost = sorted(ledger.acknowledged - by_order.keys())
        #: orders with more than one PaymentIntent: charged twice
        self.doubled = sorted(o for o, ids in by_order.items() if len(ids) > 1)
        #: PaymentIntents for orders the POS never started
        self.strangers = sorted(by_order.keys() - ledger.started.keys())
        #: PaymentIntents whose amount is not the order's
        self.wrong_amount = sorted(
            order_of(pi)
            for pi in intents
            if ledger.started.get(order_of(pi), pi.amount) != pi.amount
        )
        #: started, not acknowledged (the kill came first), and charged anyway: allowed
        self.unacknowledged_charged = len(
            by_order.keys() & (ledger.started.keys() - ledger.acknowledged)
        )

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.strangers or self.wrong_amount)

    def __str__(self) -> str:
        return (
            f"{self.intents} PaymentIntents; lost {len(self.lost)} {self.lost[:5]}, "
            f"doubled {len(self.doubled)} {self.doubled[:5]}, "
            f"strangers {len(self.strangers)} {self.strangers[:5]}, "
            f"wrong amount {len(self.wrong_amount)} {self.wrong_amount[:5]}, "
            f"unacknowledged but charged {self.unacknowledged_charged}"
        )


# --- card numbers at rest --------------------------------------------------------------------


def card_number_forms(number: str) -> list[bytes]:
    """How a card number could be written down: digits, groups of 4 (and Amex's 4-6-5) with
    spaces or dashes, and the digits as UTF-16."""
    groupings = [[number[i : i + 4] for i in range(0, len(number), 4)]]
    if len(number) == 15:
        groupings.append([number[:4], number[4:10], number[10:]])
    forms = [number.encode(), number.encode("utf-16-le"), number.encode("utf-16-be")]
    for groups in groupings:
        for sep in (" ", "-"):
            forms.append(sep.join(groups).encode())
    return forms


def scan_for_card_numbers(roots: list[Path], numbers: list[str]) -> list[str]:
    """Every (file, card number) where one of `numbers` appears in a file under `roots`."""
    hits: list[str] = []
    forms = {n: card_number_forms(n) for n in numbers}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            data = path.read_bytes()
            for number, patterns in forms.items():
                if any(p in data for p in patterns):
                    hits.append(f"{path}: {number[:4]}…{number[-4:]}")
    return hits
