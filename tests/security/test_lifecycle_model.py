"""The PaymentIntent lifecycle against a model (hypothesis `RuleBasedStateMachine`).

Rules: create, confirm (approved or declined card), capture (whole, partial, too much),
cancel, refund (partial, the rest, too much), and offline forwarding of records a real vault
stored, each forwarded once or again. Every answer is predicted by the model: what is legal
succeeds with the predicted status, what is not is a 4xx that changes nothing. Invariants,
read back from the cloud after every step:
- each PaymentIntent's status is the model's (only legal transitions happened);
- amount_received (captured) <= amount, refunds <= captured, nothing captured after cancel;
- each forwarded record has exactly one PaymentIntent and one paid charge, however often it
  was forwarded.

The real app runs in process (ASGI) on one SQLite file; each example gets its own account
and reader. CI: derandomized, `STOWPAY_LIFECYCLE_EXAMPLES` (default 30) runs of up to
`STOWPAY_LIFECYCLE_STEPS` (default 30) steps.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from starlette.testclient import TestClient

from stowpay.cloud.app import create_app
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.settings import Settings
from stowpay.reader.cloud_link import forward_document
from stowpay.reader.vault import CardRead, OfflinePayment, SealingKey, StoredPayment, Vault
from stowpay.wire import formcodec
from stowpay.wire.clock import SystemClock

EXAMPLES = int(os.environ.get("STOWPAY_LIFECYCLE_EXAMPLES", "30"))
STEPS = int(os.environ.get("STOWPAY_LIFECYCLE_STEPS", "30"))
APPROVED, DECLINED = "pm_card_visa", "pm_card_chargeDeclined"
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "country": "US"}
CANCELABLE = {"requires_payment_method", "requires_confirmation", "requires_capture"}

#: Set once per test run: the app, its client, and where vaults go.
WORLD: dict[str, Any] = {}
SERIALS = itertools.count()
RUNS = {"examples": 0, "steps": 0, "forwards": 0}


class Lifecycle(RuleBasedStateMachine):
    intents = Bundle("intents")
    records = Bundle("records")

    @initialize()
    def account(self) -> None:
        client: TestClient = WORLD["client"]
        cloud = WORLD["cloud"]
        with cloud.store.write() as tx:
            self.key = create_account(tx, cloud.settings.clock, cloud.settings.ids).secret_key
        self.model: dict[str, dict[str, Any]] = {}
        self.forwarded: dict[int, str] = {}  # record sequence -> its PaymentIntent
        self.approved: dict[str, bool] = {}  # a forwarded record's PaymentIntent -> outcome
        self.vault: Vault | None = None
        self.client = client
        RUNS["examples"] += 1

    def teardown(self) -> None:
        if self.vault is not None:
            self.vault.close()

    # -- calls ---------------------------------------------------------------------------------

    def post(self, path: str, data: dict[str, Any]) -> Any:
        RUNS["steps"] += 1
        return self.client.post(
            path,
            content=formcodec.encode(data),
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )

    def refused(self, r: Any) -> None:
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error", r.text

    # -- rules ---------------------------------------------------------------------------------

    @rule(
        target=intents,
        amount=st.integers(50, 10_000),
        manual=st.booleans(),
    )
    def create(self, amount: int, manual: bool) -> str:
        method = "manual" if manual else "automatic"
        r = self.post(
            "/v1/payment_intents", {"amount": amount, "currency": "usd", "capture_method": method}
        )
        assert r.status_code == 200, r.text
        pi = r.json()
        assert pi["status"] == "requires_payment_method"
        self.model[pi["id"]] = {
            "amount": amount,
            "manual": manual,
            "status": pi["status"],
            "captured": 0,
            "refunded": 0,
        }
        return str(pi["id"])

    @rule(pi=intents, approved=st.booleans())
    def confirm(self, pi: str, approved: bool) -> None:
        m = self.model[pi]
        r = self.post(
            f"/v1/payment_intents/{pi}/confirm",
            {"payment_method": APPROVED if approved else DECLINED},
        )
        if m["status"] not in ("requires_payment_method", "requires_confirmation"):
            self.refused(r)
            return
        if not approved:
            assert r.status_code == 402, r.text
            assert r.json()["error"]["payment_intent"]["status"] == "requires_payment_method"
            return
        assert r.status_code == 200, r.text
        if m["manual"]:
            m["status"] = "requires_capture"
        else:
            m["status"], m["captured"] = "succeeded", m["amount"]
        assert r.json()["status"] == m["status"]

    @rule(pi=intents, part=st.sampled_from([None, 1, 0.5, 1.5]))
    def capture(self, pi: str, part: float | None) -> None:
        m = self.model[pi]
        data = {} if part is None else {"amount_to_capture": max(1, int(m["amount"] * part))}
        r = self.post(f"/v1/payment_intents/{pi}/capture", data)
        if m["status"] != "requires_capture" or (part is not None and part > 1):
            self.refused(r)
            return
        assert r.status_code == 200, r.text
        m["status"], m["captured"] = "succeeded", data.get("amount_to_capture", m["amount"])
        assert r.json()["amount_received"] == m["captured"]

    @rule(pi=intents)
    def cancel(self, pi: str) -> None:
        m = self.model[pi]
        r = self.post(f"/v1/payment_intents/{pi}/cancel", {})
        if m["status"] not in CANCELABLE:
            self.refused(r)
            return
        assert r.status_code == 200, r.text
        m["status"] = "canceled"
        assert r.json()["status"] == "canceled"

    @rule(pi=intents, part=st.sampled_from([None, 0.25, 0.5, 2.0]))
    def refund(self, pi: str, part: float | None) -> None:
        m = self.model[pi]
        left = m["captured"] - m["refunded"]
        amount = None if part is None else max(1, int(m["captured"] * part))
        data = {"payment_intent": pi} | ({} if amount is None else {"amount": amount})
        r = self.post("/v1/refunds", data)
        wanted = left if amount is None else amount
        if m["status"] != "succeeded" or left == 0 or wanted > left:
            self.refused(r)
            return
        assert r.status_code == 200, r.text
        m["refunded"] += wanted
        assert r.json()["amount"] == wanted

    # -- offline forwarding ------------------------------------------------------------------

    def _reader(self) -> Vault:
        if self.vault is None:
            serial = next(SERIALS)
            location = self.post(
                "/v1/terminal/locations", {"display_name": "Shop", "address": ADDRESS}
            ).json()["id"]
            device = {"device_type": "bbpos_wisepos_e", "serial_number": f"LM-{serial}"}
            code = self.client.post(
                "/device/v1/registration_codes", json=device | {"device_sw_version": "1"}
            ).json()["registration_code"]
            self.post("/v1/terminal/readers", {"registration_code": code, "location": location})
            got = self.client.post(
                "/device/v1/activations", json={"registration_code": code}
            ).json()
            self.device = got
            beat = self.device_call("/heartbeat", {"status": "online", "device_sw_version": "1"})
            self.vault = Vault.open(
                WORLD["tmp"] / f"vault{serial}",
                clock=SystemClock(),
                sealing_key=SealingKey.from_document(beat["sealing_key"]),
            )
        return self.vault

    def device_call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        RUNS["steps"] += 1
        r = self.client.post(
            "/device/v1" + path,
            json=body,
            headers={"Authorization": f"Bearer {self.device['device_key']}"},
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    @rule(target=records, amount=st.integers(100, 20_000))
    def store_offline(self, amount: int) -> StoredPayment:
        vault = self._reader()
        card = CardRead(
            number="4242424242424242",
            exp_month=12,
            exp_year=2031,
            brand="visa",
            read_method="contact_emv",
        )
        return vault.store(
            OfflinePayment(
                account=self.device["account"],
                reader=self.device["reader"],
                amount=amount,
                currency="usd",
                capture_method="automatic",
                card=card,
                metadata={},
                description=None,
            )
        )

    @rule(record=records)
    def forward(self, record: StoredPayment) -> None:
        RUNS["forwards"] += 1
        answer = self.device_call("/offline_payments", {"records": [forward_document(record)]})
        (outcome,) = answer["outcomes"]
        # Amounts ending in some digits are Stripe's card-present decline amounts.
        assert outcome["status"] in ("approved", "declined"), outcome
        pi = outcome["payment_intent"]
        pi_id = pi["id"] if isinstance(pi, dict) else pi
        again = record.sequence in self.forwarded
        # Forwarded again: the same PaymentIntent, answered as a replay.
        assert self.forwarded.setdefault(record.sequence, pi_id) == pi_id
        assert outcome["replayed"] is again, outcome
        approved = outcome["status"] == "approved"
        assert self.approved.setdefault(pi_id, approved) is approved  # the first outcome again
        if pi_id not in self.model:
            self.model[pi_id] = {
                "amount": record.amount,
                "manual": False,
                "status": "succeeded" if approved else "requires_payment_method",
                "captured": record.amount if approved else 0,
                "refunded": 0,
            }

    # -- invariants ----------------------------------------------------------------------------

    @precondition(lambda self: bool(self.model))
    @invariant()
    def matches_the_model(self) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        intents = self.client.get("/v1/payment_intents?limit=100", headers=auth).json()["data"]
        charges = self.client.get("/v1/charges?limit=100", headers=auth).json()["data"]
        by_pi: dict[str, list[dict[str, Any]]] = {}
        for charge in charges:
            by_pi.setdefault(charge["payment_intent"], []).append(charge)
        assert {pi["id"] for pi in intents} == set(self.model)
        for pi in intents:
            m = self.model[pi["id"]]
            assert pi["status"] == m["status"], (pi["id"], pi["status"], m)
            assert 0 <= pi["amount_received"] == m["captured"] <= pi["amount"] == m["amount"]
            paid = [c for c in by_pi.get(pi["id"], []) if c["paid"]]
            assert len(paid) <= 1, pi["id"]
            for charge in paid:
                # A partial capture releases the rest, and a cancel after authorization all of
                # it; Stripe shows what was released as refunded.
                released = (
                    m["amount"] - m["captured"] if m["status"] in ("succeeded", "canceled") else 0
                )
                assert charge["amount_refunded"] == m["refunded"] + released, (charge, m)
                assert m["refunded"] <= charge["amount_captured"] == m["captured"]
            if pi["status"] == "canceled":
                assert pi["amount_received"] == 0
        for pi_id in self.forwarded.values():
            paid = [c for c in by_pi.get(pi_id, []) if c["paid"]]
            assert len(paid) == (1 if self.approved[pi_id] else 0), pi_id
            assert len(by_pi.get(pi_id, [])) == 1, pi_id  # one charge per record, declined too


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    app = create_app(Settings(db=str(tmp / "cloud.db"), background=False))
    with TestClient(app) as client:
        WORLD.update(client=client, cloud=app.state.cloud, tmp=tmp)
        yield
    WORLD.clear()


@pytest.mark.slow
def test_the_payment_intent_lifecycle_matches_its_model(world: None) -> None:
    run = Lifecycle.TestCase
    run.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    run().runTest()
    print(
        f"lifecycle model: {RUNS['examples']} runs, {RUNS['steps']} API calls, "
        f"{RUNS['forwards']} forwards; violations = 0"
    )
    assert RUNS["examples"] >= EXAMPLES // 2
