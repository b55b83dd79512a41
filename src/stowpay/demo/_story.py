"""`stowpay demo`: Stripe's offline guide as a story, with real processes on loopback.

A temporary SQLite cloud and one reader run as `stowpay` processes; a merchant backend (in this
process) hands out connection tokens and verifies webhooks; the POS is the Terminal SDK. The
internet is lost by stopping the cloud process, and comes back by starting it again.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import logs
from ..cloud.domain.accounts import create_account
from ..cloud.settings import Settings
from ..cloud.storage import Store
from ..terminal import (
    CollectConfiguration,
    ConnectionTokenProvider,
    CreateConfiguration,
    DiscoveryConfiguration,
    ErrorCode,
    NetworkStatus,
    OfflineBehavior,
    OfflineListener,
    OfflineStatus,
    PaymentIntent,
    PaymentIntentParameters,
    SimulatedCard,
    Terminal,
    TerminalException,
    format_receipt,
)
from ._backend import MerchantBackend
from ._mailbox import Mailbox
from ._services import Service, ServiceError, free_port, start_cloud, start_reader, wait_until

ADDRESS = {
    "address[line1]": "1 Main St",
    "address[city]": "Springfield",
    "address[state]": "IL",
    "address[postal_code]": "62701",
    "address[country]": "US",
}


#: The refusals the story provokes on purpose while offline.
_EXPECTED_REFUSALS = {
    ErrorCode.AMOUNT_EXCEEDS_MAX_OFFLINE_AMOUNT,
    ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET,
}


class DemoError(Exception):
    """The demo could not go on; the message says where to look."""


class _Tokens(ConnectionTokenProvider):
    def __init__(self, backend: MerchantBackend, location: str) -> None:
        self.backend = backend
        self.location = location

    def fetch_connection_token(self) -> str:
        return self.backend.connection_token(self.location)


@dataclass
class _Listener(OfflineListener):
    console: Console
    forwarded: dict[str, PaymentIntent] = field(default_factory=dict)
    failures: list[TerminalException] = field(default_factory=list)
    statuses: list[NetworkStatus] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_offline_status_change(self, status: OfflineStatus) -> None:
        with self.lock:
            self.statuses.append(status.sdk.network_status)

    def on_payment_intent_forwarded(
        self, payment_intent: PaymentIntent, error: TerminalException | None
    ) -> None:
        order = str(payment_intent.metadata.get("order_id", "?"))
        with self.lock:
            self.forwarded[order] = payment_intent

    def on_forwarding_failure(self, error: TerminalException) -> None:
        with self.lock:
            self.failures.append(error)

    def count(self) -> int:
        with self.lock:
            return len(self.forwarded)


@dataclass
class _Sale:
    order: str
    amount: int
    capture: str = "automatic"
    card: str = field(default="4242424242424242", repr=False)  # a test card, never shown
    read_method: str = "contact_emv"
    behavior: OfflineBehavior = OfflineBehavior.PREFER_ONLINE
    outcome: str = ""
    pi: PaymentIntent | None = None


def _money(amount: int, currency: str = "usd") -> str:
    return f"{amount / 100:,.2f} {currency.upper()}"


class Demo:
    """One run of the story. `run()` returns the exit status."""

    def __init__(self, *, payments: int = 0, keep: bool = False, console: Console) -> None:
        self.payments = payments
        self.keep = keep
        self.console = console
        self.workdir = Path(tempfile.mkdtemp(prefix="stowpay-demo-"))
        self.cloud_port, self.reader_port = free_port(), free_port()
        self.cloud_url = f"http://127.0.0.1:{self.cloud_port}"
        self.db = str(self.workdir / "cloud.db")
        self.cloud: Service | None = None
        self.reader: Service | None = None
        self.backend: MerchantBackend | None = None
        self.terminal: Terminal | None = None
        self.sales: list[_Sale] = []
        self.mailbox: Mailbox | None = None
        self.location_doc: dict[str, object] = {}

    # -- narration ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.console.print(text)

    def step(self, title: str) -> None:
        self.console.rule(f"[bold]{title}")

    # -- the story ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self._set_up()
            self._online_payment()
            self._lose_the_internet()
            self._offline_payments()
            self._internet_back()
            self._capture_and_reconcile()
            if self.keep:
                self._keep_running()
            return 0
        except (DemoError, ServiceError, TerminalException) as exc:
            self.console.print(f"[red]Demo stopped:[/] {exc}")
            self.console.print(f"Logs are in {self.workdir}")
            self.keep = True  # keep the logs for a look
            return 1
        finally:
            self._tear_down()

    def _set_up(self) -> None:
        self.step("1. A cloud, a merchant backend and a reader on loopback")
        logs.configure("warning")  # the story is the output; warnings still show
        store = Store(self.db)
        store.migrate()
        with store.write() as tx:
            new = create_account(tx, Settings().clock, Settings().ids)
        store.close()
        self.mailbox = Mailbox().start()
        self.cloud = start_cloud(self.db, self.cloud_port, self.workdir, self.mailbox.url)
        self.say(f"Cloud      {self.cloud_url}  (SQLite: {self.db})")
        self.say(f"Mailbox    {self.mailbox.url}  (where the customers' email receipts arrive)")
        self.backend = backend = MerchantBackend(self.cloud_url, new.secret_key).start()
        self.say(f"Backend    {backend.url}  (connection tokens, signed webhooks)")
        self.reader, code = start_reader(
            self.cloud_url, self.workdir / "reader", self.reader_port, self.workdir
        )
        self.say(f"Reader     http://127.0.0.1:{self.reader_port}  shows code [bold]{code}[/]")

        self.step("2. The merchant enables offline mode and registers the reader")
        config = backend.api("POST", "/v1/terminal/configurations", {"offline[enabled]": "true"})
        location = backend.api(
            "POST",
            "/v1/terminal/locations",
            {"display_name": "Main St", "configuration_overrides": config["id"], **ADDRESS},
        )
        self.location = str(location["id"])
        self.location_doc = location  # the POS keeps it: receipts name the shop offline too
        reader = backend.api(
            "POST",
            "/v1/terminal/readers",
            {"registration_code": code, "location": self.location, "label": "Till 1"},
        )
        self.say(
            f"Configuration {config['id']} (offline enabled) at Location {self.location}; "
            f"reader {reader['id']} registered"
        )
        self.listener = _Listener(self.console)
        self.terminal = terminal = Terminal(
            token_provider=_Tokens(backend, self.location),
            offline_listener=self.listener,
            api_base=self.cloud_url,
            data_dir=self.workdir / "pos",
        )
        found = wait_until(
            "the reader to come online",
            lambda: [
                r
                for r in terminal.discover_readers(DiscoveryConfiguration(location=self.location))
                if r.id == reader["id"] and r.lan_url
            ],
            30,
            self.workdir / "reader.log",
        )
        terminal.connect_reader(found[0], location=self.location)
        self.say(f"The POS discovered {reader['id']} and connected to it online")

    def _sell(self, sale: _Sale) -> PaymentIntent:
        assert self.terminal is not None
        self.terminal.simulated_card = SimulatedCard(number=sale.card, read_method=sale.read_method)
        pi = self.terminal.create_payment_intent(
            PaymentIntentParameters(
                amount=sale.amount,
                currency="usd",
                metadata={"order_id": sale.order},
                capture_method=sale.capture,
            ),
            CreateConfiguration(offline_behavior=sale.behavior),
        )
        pi = self.terminal.collect_payment_method(pi, CollectConfiguration())
        pi = self.terminal.confirm_payment_intent(pi)
        sale.pi = pi
        return pi

    def _online_payment(self) -> None:
        self.step("3. An online payment")
        sale = _Sale("A-1", 1299)
        pi = self._sell(sale)
        sale.outcome = f"{pi.status} online as {pi.id}"
        self.sales.append(sale)
        self.say(f"A-1  {_money(1299)}  [green]{sale.outcome}[/]")

    def _network(self) -> NetworkStatus:
        assert self.terminal is not None
        return self.terminal.get_offline_status().sdk.network_status

    def _lose_the_internet(self) -> None:
        self.step("4. The internet is lost (the cloud process is stopped)")
        assert self.cloud is not None
        self.cloud.stop()
        started = time.monotonic()
        wait_until(
            "the SDK to notice",
            lambda: self._network() == NetworkStatus.OFFLINE,
            30,
            None,
        )
        self.say(f"The SDK reports OFFLINE after {time.monotonic() - started:.1f} s")

    def _offline_payments(self) -> None:
        self.step("5. Payments while offline")
        planned = [
            _Sale("A-2", 2500),
            _Sale("A-3", 899, card="5555555555554444", read_method="contactless_emv"),
            _Sale("A-4", 7450, capture="manual"),
            _Sale("A-5", 1_200_000),  # above the 10,000 USD ceiling
            _Sale("A-6", 3000, behavior=OfflineBehavior.REQUIRE_ONLINE),
        ]
        for sale in planned:
            try:
                pi = self._sell(sale)
                assert pi.offline_details is not None
                sale.outcome = f"{pi.status}, stored offline"
                self.say(f"{sale.order}  {_money(sale.amount)}  [green]{sale.outcome}[/]")
                self.sales.append(sale)
                if sale.order == "A-2":
                    self._print_receipt(pi)
            except TerminalException as exc:
                if exc.code not in _EXPECTED_REFUSALS:
                    raise
                self.say(f"{sale.order}  {_money(sale.amount)}  [yellow]refused: {exc.code}[/]")
        if self.payments:
            self._backlog(self.payments)
        self._show_status()

    def _print_receipt(self, pi: PaymentIntent) -> None:
        self.say("The customer asks for a receipt; the till prints it at once:")
        receipt = format_receipt(pi, 42, location=self.location_doc)
        self.console.print(receipt, markup=False, highlight=False, end="")

    def _backlog(self, n: int) -> None:
        with self._progress() as progress:
            task = progress.add_task("Storing offline payments", total=n)
            for i in range(n):
                sale = _Sale(f"B-{i + 1}", 100 + i % 5000)
                pi = self._sell(sale)
                sale.outcome = f"{pi.status}, stored offline"
                self.sales.append(sale)
                progress.advance(task)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )

    def _show_status(self) -> None:
        assert self.terminal is not None
        status = self.terminal.get_offline_status()
        table = Table(title="Offline status")
        table.add_column("network")
        table.add_column("stored payments", justify="right")
        table.add_column("amounts by currency")
        amounts = status.reader.offline_payment_amounts_by_currency if status.reader else {}
        table.add_row(
            str(status.sdk.network_status.name),
            str(status.reader.offline_payments_count if status.reader else 0),
            ", ".join(_money(v, k) for k, v in sorted(amounts.items())) or "-",
        )
        self.console.print(table)

    def _internet_back(self) -> None:
        self.step("6. The internet is back: the reader forwards by itself")
        smtp = self.mailbox.url if self.mailbox is not None else None
        self.cloud = start_cloud(self.db, self.cloud_port, self.workdir, smtp)
        stored = [s for s in self.sales if s.pi is not None and s.pi.offline_details]
        with self._progress() as progress:
            task = progress.add_task("Forwarding", total=len(stored))
            deadline = time.monotonic() + 60 + len(stored) / 50
            while self.listener.count() < len(stored):
                progress.update(task, completed=self.listener.count())
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"{len(stored) - self.listener.count()} payments were not forwarded "
                        f"in time; see {self.workdir / 'reader.log'}"
                    )
                time.sleep(0.1)
            progress.update(task, completed=len(stored))
        self._show_status()

    def _capture_and_reconcile(self) -> None:
        self.step("7. The manual-capture payment is captured; reconciliation")
        backend = self.backend
        assert backend is not None
        for sale in self.sales:
            forwarded = self.listener.forwarded.get(sale.order)
            if forwarded is not None:
                sale.pi = forwarded
        # The offline payments carried no customer address (the reader keeps none): the
        # backend adds it once they are forwarded. A receipt goes out only for a capture.
        emailed = [s for s in self.sales if s.order.startswith("A-") and s.pi and s.pi.id]
        for sale in emailed:
            assert sale.pi is not None
            backend.api(
                "POST",
                f"/v1/payment_intents/{sale.pi.id}",
                {"receipt_email": f"{sale.order.lower()}@customer.example"},
            )
        manual = [s for s in self.sales if s.capture == "manual" and s.pi is not None]
        for sale in manual:
            assert sale.pi is not None and sale.pi.id is not None
            captured = backend.api("POST", f"/v1/payment_intents/{sale.pi.id}/capture")
            self.say(f"{sale.order}: captured from the backend ({captured['status']})")
        ids = {s.order: s.pi.id for s in self.sales if s.pi is not None and s.pi.id}
        wait_until(
            "the webhooks",
            lambda: all(backend.events_for(pi_id) for pi_id in ids.values()),
            30,
            None,
        )
        table = Table(title="Reconciliation")
        for column in ("order", "PaymentIntent", "status", "taken", "payment_intent.* webhooks"):
            table.add_column(column, overflow="fold")
        shown = self.sales if len(self.sales) <= 30 else self.sales[:20]
        for sale in shown:
            pi_id = ids.get(sale.order, "")
            status = backend.api("GET", f"/v1/payment_intents/{pi_id}")["status"] if pi_id else ""
            how = "offline" if sale.pi is not None and sale.pi.offline_details else "online"
            events = [e.removeprefix("payment_intent.") for e in backend.events_for(pi_id)]
            table.add_row(sale.order, pi_id, status, how, ", ".join(events))
        self.console.print(table)
        if len(shown) < len(self.sales):
            self.say(f"... and {len(self.sales) - len(shown)} more, all reconciled")
        self.say(
            f"{len(ids)} payments, each charged once; {len(backend.webhooks)} webhooks "
            f"verified, {backend.rejected} rejected"
        )
        self._report_receipts([str(s.pi.id) for s in emailed if s.pi is not None])

    def _report_receipts(self, pi_ids: list[str]) -> None:
        """How the email receipts of the captured payments went: one each, once captured."""
        backend = self.backend
        assert backend is not None

        def outbox() -> list[dict[str, object]]:
            found: list[dict[str, object]] = []
            for pi_id in pi_ids:
                pi = backend.api("GET", f"/v1/payment_intents/{pi_id}")
                charge = backend.api("GET", f"/v1/charges/{pi['latest_charge']}")
                found.extend(charge.get("receipt_emails") or [])
            return found

        def settled() -> list[dict[str, object]] | None:
            rows = outbox()
            done = len(rows) == len(pi_ids) and all(r["status"] != "pending" for r in rows)
            return rows if done else None

        rows = wait_until("the email receipts", settled, 30, self.workdir / "cloud.log")
        sent = [r for r in rows if r["status"] == "sent"]
        received = self.mailbox.received() if self.mailbox is not None else []
        self.say(
            f"{len(sent)} email receipts sent once the cloud was back, one per captured "
            f"payment; the mailbox holds {len(received)}"
        )

    def _keep_running(self) -> None:
        self.say(
            f"Services keep running (Ctrl-C stops them): cloud {self.cloud_url}, "
            f"reader http://127.0.0.1:{self.reader_port}, work directory {self.workdir}"
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()

    def _tear_down(self) -> None:
        if self.terminal is not None:
            self.terminal.close()
        for service in (self.reader, self.cloud):
            if service is not None:
                service.stop()
        if self.backend is not None:
            self.backend.stop()
        if self.mailbox is not None:
            self.mailbox.stop()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run_demo(*, payments: int = 0, keep: bool = False, console: Console | None = None) -> int:
    """Run the story; the exit status (0 when every step went as the guide says)."""
    return Demo(payments=payments, keep=keep, console=console or Console()).run()
