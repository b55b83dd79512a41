"""The cloud in the simulator: the real device API handlers over the real SQLite store, called
in-process without HTTP or threads, with restarts that reopen the store from its file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ..cloud.api import Context
from ..cloud.app import Cloud
from ..cloud.domain import offline_ingest
from ..cloud.domain import terminal as terminal_domain
from ..cloud.routes.device import Call, DeviceApi, bearer_token, json_response
from ..cloud.routes.device_payments import DevicePayments
from ..cloud.settings import Settings
from ..cloud.storage import Store
from ..wire.clock import Clock, ManualClock
from ..wire.errors import ApiError, StripeError

log = structlog.get_logger("stowpay.sim.cloud")

BASE = "/device/v1"
_INTENT_CALL = re.compile(r"^/payment_intents/([A-Za-z0-9_\-]+)/(confirm|cancel|capture)$")


class SimIds:
    """Deterministic ids, distinct per cloud incarnation (`epoch`), so a restarted cloud never
    reuses an id its predecessor gave out."""

    def __init__(self, epoch: int) -> None:
        self._epoch = epoch
        self._n = 0

    def new(self, prefix: str) -> str:
        self._n += 1
        # Letters between the numbers: a long run of digits could pass for a card number.
        return f"{prefix}_sim{self._epoch}e{self._n}n"


class SimCloud:
    """One cloud process over `db`; `restart` abandons it and opens the file again."""

    def __init__(self, db: Path, clock: Clock, *, account: str, location: str) -> None:
        self.db = db
        self.clock = clock
        self.account_id = account
        self.location = location
        self.epoch = 0
        #: unexpected exceptions the cloud answered with a 500 (each is a bug)
        self.errors: list[str] = []
        #: a planted bug: forget the forwarding dedup records at each restart
        self.forget_on_restart = False
        self._open()

    def _open(self) -> None:
        self.epoch += 1
        self.settings = Settings(
            db=str(self.db), clock=self.clock, ids=SimIds(self.epoch), background=False
        )
        self.store = Store(str(self.db))
        self.cloud = Cloud(self.settings, self.store)
        self.device = DeviceApi(self.cloud)
        self.payments = DevicePayments(self.device)

    def close(self) -> None:
        """Stop this cloud process (its store's connections closed)."""
        self.device.executor.shutdown(wait=False)
        self.store.close()

    def restart(self) -> None:
        """Crash and start again: nothing in memory survives, the store is reopened."""
        self.close()
        if self.forget_on_restart:
            self._forget_records()
        self._open()

    def _forget_records(self) -> None:
        store = Store(str(self.db))
        try:
            with store.write() as tx:
                page = tx.list_page(self.account_id, offline_ingest.RECORD, limit=1_000_000)
                for record in [] if page is None else page.data:
                    tx.delete(self.account_id, record["id"])
        finally:
            store.close()

    # -- the device API ----------------------------------------------------------------------

    def serve(
        self, method: str, path: str, authorization: str | None, body: bytes
    ) -> tuple[int, bytes]:
        """Answer one device API request as the HTTP routes would: status and JSON body."""
        request_id = self.settings.ids.new("req")
        call = Call(request_id, body, bearer_token(authorization), "127.0.0.1")
        try:
            status, answer = self._route(method, path, call)
        except StripeError as err:
            status, answer = err.http_status, err.to_body(request_id)
        except Exception as exc:
            # The routes answer this with a 500; in a simulation it is a finding.
            log.error("sim_cloud_error", path=path, exc_info=True)
            self.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            status = 500
            answer = ApiError("An unknown error occurred. Please try again.").to_body(request_id)
        return status, bytes(json_response(status, answer, {}).body)

    def _route(self, method: str, path: str, call: Call) -> tuple[int, dict[str, Any]]:
        if not path.startswith(BASE):
            return 404, {"error": {"type": "invalid_request_error", "message": "no such path"}}
        rest = path[len(BASE) :]
        if method == "GET" and rest == "/ping":
            return 200, {"ok": True, "server_time": self.clock.now()}
        simple: dict[str, Callable[[Call], tuple[dict[str, Any], int]]] = {
            "/registration_codes": self.device.registration_code,
            "/activations": self.device.activation,
            "/heartbeat": self.device.heartbeat,
            "/connection_tokens/redeem": self.device.redeem,
            "/offline_payments": self.device.offline_payments,
        }
        if method == "POST" and rest in simple:
            answer, _queued = simple[rest](call)
            return 200, answer
        if method == "POST" and rest == "/payment_intents":
            status, answer, _ = self.payments.create(call, {})
            return status, answer
        found = _INTENT_CALL.match(rest)
        if method == "POST" and found is not None:
            work = {
                "confirm": self.payments.confirm,
                "cancel": self.payments.cancel,
                "capture": self.payments.capture,
            }[found.group(2)]
            status, answer, _ = work(call, {"intent": found.group(1)})
            return status, answer
        return 404, {"error": {"type": "invalid_request_error", "message": "no such path"}}

    # -- the merchant's backend ----------------------------------------------------------------

    def _context(self, tx: Any, clock: Clock) -> Context:
        account = tx.account(self.account_id)
        assert account is not None
        return Context(
            account=account,
            tx=tx,
            clock=clock,
            ids=self.settings.ids,
            request_id=self.settings.ids.new("req"),
            idempotency_key=None,
            settings=self.settings,
        )

    def connection_token(self, *, age: float = 0.0) -> str:
        """A connection token as the merchant's backend makes it (`age` seconds old)."""
        clock = self.clock if not age else ManualClock(self.clock.now() - age)
        with self.store.write() as tx:
            token = terminal_domain.create_connection_token(self._context(tx, clock), self.location)
        return str(token["secret"])

    def register_reader(self, code: str) -> str:
        """Register a reader at the Location with the code it shows; its id."""
        with self.store.write() as tx:
            reader = terminal_domain.register_reader(
                self._context(tx, self.clock),
                registration_code=code,
                location_id=self.location,
                label=None,
                metadata=None,
            )
        return str(reader["id"])

    def objects(self, type_: str) -> list[dict[str, Any]]:
        """Every object of a type in the account (for the checker)."""
        with self.store.read() as tx:
            page = tx.list_page(self.account_id, type_, limit=1_000_000)
        return [] if page is None else page.data
