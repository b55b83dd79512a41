"""The forwarder: every stored payment reaches the cloud once, and leaves only with its outcome."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from structlog.testing import capture_logs
from vault_kit import ACCOUNT, CLOUD_PRIVATE, READER, SEALING, TEST_CARDS, OpenVault, payment

from stowpay.reader.cloud_link import CloudRefused, CloudUnreachable, ForwardOutcome
from stowpay.reader.forwarder import (
    DrainResult,
    Forwarder,
    ForwardingError,
    TokenUnavailable,
)
from stowpay.reader.vault import SealingKey, StoredPayment, Vault, forward_key_for
from stowpay.wire import sealed
from stowpay.wire.cards import CARDS
from stowpay.wire.clock import ManualClock
from stowpay.wire.terminal_codes import ErrorCode

DEVICE_KEY = "rdk_test_forwarder"
DECLINED_CARD = "4000000000000002"
#: How long a test waits for the background thread before it gives up (never asserted on).
PATIENCE = 30.0

# -- the cloud's side of forwarding, as docs/reader-protocol.md promises it ---------------------


class Cloud:
    """The device API's forwarding endpoint, with faults on demand.

    It keeps a permanent record per (reader, sequence): a record sent again gets its first
    outcome back with `replayed`, and money moves only the first time. A batch commits whole or
    not at all. Faults: ``"down"`` fails before anything commits, ``"drop"`` commits and then
    loses the answer, ``"short"`` commits and answers all but the last record.
    """

    def __init__(self, account: str = ACCOUNT, reader: str = READER) -> None:
        self.account = account
        self.reader = reader
        self.down = False
        self.faults: deque[str] = deque()
        #: permanent: (reader, sequence) -> (content digest, first outcome)
        self.ledger: dict[tuple[str, int], tuple[str, ForwardOutcome]] = {}
        #: how many times money moved for each (reader, sequence)
        self.charges: Counter[tuple[str, int]] = Counter()
        #: the forward keys of every request that arrived, in order
        self.requests: list[list[str]] = []
        #: single-use connection tokens -> their account
        self.tokens: dict[str, str] = {}
        self.tokens_used: list[str | None] = []
        #: called after a batch committed, before the answer leaves
        self.after_commit: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def token(self, account: str | None = None) -> str:
        """Issue a connection token (as POST /v1/terminal/connection_tokens would)."""
        value = f"pst_test_{len(self.tokens) + len(self.tokens_used)}"
        self.tokens[value] = account or self.account
        return value

    def forward(
        self, device_key: str, records: Sequence[StoredPayment], *, connection_token: str | None
    ) -> list[ForwardOutcome]:
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
            if self.down or fault == "down":
                raise CloudUnreachable("connection refused")
            self.requests.append([r.forward_key for r in records])
            self.tokens_used.append(connection_token)
            if device_key != DEVICE_KEY:
                raise CloudRefused(401, "device_key_invalid", "unknown device key")
            if len(records) > 500:
                raise CloudRefused(400, "parameter_invalid", "at most 500 records")
            if connection_token is not None:
                owner = self.tokens.pop(connection_token, None)
                if owner is None:
                    raise CloudRefused(401, "connection_token_invalid", "token invalid")
                if owner != self.account:
                    raise CloudRefused(403, "account_id_mismatch", "token of another account")
            # One transaction: stage everything, then commit all of it at once.
            staged: dict[tuple[str, int], tuple[str, ForwardOutcome]] = {}
            charged: list[tuple[str, int]] = []
            outcomes = []
            for record in records:
                key = (self.reader, record.sequence)
                digest = _digest(record)
                first = staged.get(key) or self.ledger.get(key)
                if first is not None:
                    if first[0] == digest:
                        outcome = _replay(first[1])
                    else:
                        outcome = _outcome(record.sequence, "rejected", "sequence_conflict")
                else:
                    outcome = self._decide(record)
                    staged[key] = (digest, outcome)
                    if outcome.status == "approved":
                        charged.append(key)
                outcomes.append(outcome)
            self.ledger.update(staged)
            self.charges.update(charged)
            if self.after_commit is not None:
                self.after_commit()
            if fault == "drop":
                raise CloudUnreachable("the answer was lost")
            if fault == "short":
                return outcomes[:-1]
            return outcomes

    def _decide(self, record: StoredPayment) -> ForwardOutcome:
        expected = forward_key_for(self.account, self.reader, record.sequence)
        if record.account != self.account or record.forward_key != expected:
            return _outcome(record.sequence, "rejected", "forward_key_invalid")
        try:
            aad = sealed.associated_data(record.account, record.reader, record.sequence)
            card = json.loads(sealed.open_sealed(CLOUD_PRIVATE, record.sealed, aad))
        except sealed.SealError:
            return _outcome(record.sequence, "rejected", "sealed_data_invalid")
        test_card = CARDS.get(card["number"])
        if test_card is not None and test_card.decline is not None:
            return _outcome(record.sequence, "declined", test_card.decline)
        return _outcome(record.sequence, "approved", None)

    # The rest of the CloudLink protocol is not used by the forwarder.
    def request_registration_code(self, device: Any) -> Any:
        raise NotImplementedError

    def activate(self, code: str) -> Any:
        raise NotImplementedError

    def heartbeat(self, device_key: str, **kw: Any) -> Any:
        raise NotImplementedError

    def redeem_connection_token(self, device_key: str, token: str) -> Any:
        raise NotImplementedError


def _digest(record: StoredPayment) -> str:
    content = json.dumps(
        [
            record.amount,
            record.currency,
            record.capture_method,
            record.metadata,
            record.local_id,
            record.stored_at,
            record.sealed.hex(),
        ]
    )
    return hashlib.sha256(content.encode()).hexdigest()


def _outcome(sequence: int, status: str, code: str | None) -> ForwardOutcome:
    pi_status = {"approved": "succeeded", "declined": "requires_payment_method"}.get(status)
    return ForwardOutcome(
        sequence=sequence,
        status=status,
        payment_intent=None if pi_status is None else {"id": f"pi_{sequence}", "status": pi_status},
        error=None if code is None else {"code": code},
        replayed=False,
    )


def _replay(first: ForwardOutcome) -> ForwardOutcome:
    return ForwardOutcome(
        first.sequence, first.status, first.payment_intent, first.error, replayed=True
    )


class Listener:
    """Records what the forwarder reports; can be told to raise."""

    def __init__(self, *, raises: bool = False) -> None:
        self.forwarded: list[tuple[StoredPayment, ForwardOutcome]] = []
        self.failures: list[ForwardingError] = []
        self.raises = raises
        self.changed = threading.Condition()
        self.removed_before_callback: list[bool] = []
        self.vault: Vault | None = None

    def on_payment_forwarded(self, record: StoredPayment, outcome: ForwardOutcome) -> None:
        if self.vault is not None:
            held = {r.sequence for r in self.vault.pending()}
            self.removed_before_callback.append(record.sequence not in held)
        with self.changed:
            self.forwarded.append((record, outcome))
            self.changed.notify_all()
        if self.raises:
            raise RuntimeError("the POS app's callback failed")

    def on_forwarding_failure(self, error: ForwardingError) -> None:
        with self.changed:
            self.failures.append(error)
            self.changed.notify_all()
        if self.raises:
            raise RuntimeError("the POS app's callback failed")

    def wait_for(self, condition: Callable[[], bool]) -> bool:
        with self.changed:
            return self.changed.wait_for(condition, timeout=PATIENCE)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


@pytest.fixture
def vault(open_vault: OpenVault) -> Vault:
    return open_vault()


@pytest.fixture
def listener() -> Listener:
    return Listener()


@pytest.fixture
def make_forwarder(
    vault: Vault, cloud: Cloud, clock: ManualClock, listener: Listener
) -> Iterator[Callable[..., Forwarder]]:
    made: list[Forwarder] = []

    def _make(**kw: Any) -> Forwarder:
        kw.setdefault("device_key", lambda: DEVICE_KEY)
        kw.setdefault("unattended", True)
        kw.setdefault("clock", clock)
        kw.setdefault("rng", random.Random(1))
        kw.setdefault("listener", listener)
        forwarder = Forwarder(kw.pop("vault", vault), kw.pop("link", cloud), **kw)
        made.append(forwarder)
        return forwarder

    yield _make
    for forwarder in made:
        forwarder.stop()


def store(vault: Vault, n: int, **kw: Any) -> list[StoredPayment]:
    return [vault.store(payment(amount=100 + i, **kw)) for i in range(n)]


def held(vault: Vault) -> list[int]:
    return [r.sequence for r in vault.pending()]


# -- draining ----------------------------------------------------------------------------------


def test_drains_250_records_in_sequence_order_in_batches(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    records = store(vault, 250)
    listener.vault = vault
    result = make_forwarder(batch_size=100).drain()

    assert result == DrainResult(
        forwarded=250, approved=250, declined=0, rejected=0, remaining=0, error=None
    )
    assert [len(r) for r in cloud.requests] == [100, 100, 50]
    sent = [key for request in cloud.requests for key in request]
    assert sent == [r.forward_key for r in records]
    assert vault.summary().count == 0
    assert [r.sequence for r, _ in listener.forwarded] == [r.sequence for r in records]
    assert all(o.status == "approved" and not o.replayed for _, o in listener.forwarded)
    # Each callback came after its record had left the vault.
    assert listener.removed_before_callback == [True] * 250
    assert set(cloud.charges.values()) == {1} and len(cloud.charges) == 250


def test_cloud_down_keeps_everything_and_backs_off_with_full_jitter(
    vault: Vault,
    cloud: Cloud,
    clock: ManualClock,
    listener: Listener,
    make_forwarder: Callable[..., Forwarder],
) -> None:
    store(vault, 5)
    cloud.down = True
    forwarder = make_forwarder(rng=random.Random(42), base_delay=1.0, max_delay=20.0)
    twin = random.Random(42)  # draws what the forwarder's random source will draw
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    for ceiling in ceilings:
        clock.advance(100.0)
        result = forwarder.drain()
        assert result.error is not None
        assert result.error.code == ErrorCode.STRIPE_API_CONNECTION_ERROR
        assert result.error.sequences == (1, 2, 3, 4, 5)
        assert (result.forwarded, result.remaining) == (0, 5)
        assert held(vault) == [1, 2, 3, 4, 5]
        retry_at = forwarder.next_retry_at
        assert retry_at is not None
        delay = retry_at - clock.now()
        assert 0.0 <= delay <= ceiling
        assert delay == pytest.approx(twin.uniform(0.0, ceiling), abs=1e-6)
        assert forwarder.last_error == result.error
    assert [e.code for e in listener.failures] == [ErrorCode.STRIPE_API_CONNECTION_ERROR] * 7
    assert cloud.charges == Counter()

    cloud.down = False
    result = forwarder.drain()
    assert (result.forwarded, result.remaining, result.error) == (5, 0, None)
    assert forwarder.next_retry_at is None and forwarder.last_error is None
    # Success reset the backoff: the next failure starts again from base_delay.
    store(vault, 1)
    cloud.down = True
    forwarder.drain()
    retry_at = forwarder.next_retry_at
    assert retry_at is not None
    assert retry_at - clock.now() == pytest.approx(twin.uniform(0.0, 1.0), abs=1e-6)


def test_jitter_stays_within_bounds_for_many_draws(
    vault: Vault, cloud: Cloud, clock: ManualClock, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 1)
    cloud.down = True
    forwarder = make_forwarder(rng=random.Random(7), base_delay=0.5, max_delay=30.0)
    delays = []
    for failures in range(1, 41):
        forwarder.drain()
        retry_at = forwarder.next_retry_at
        assert retry_at is not None
        delay = retry_at - clock.now()
        assert -1e-6 <= delay <= min(30.0, 0.5 * 2 ** (failures - 1)) + 1e-6
        delays.append(delay)
    # Jitter: the capped draws are spread out, not one fixed value.
    assert len({round(d, 3) for d in delays[10:]}) > 20


def test_lost_answer_after_commit_is_retried_with_the_same_keys_and_charged_once(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    records = store(vault, 5)
    cloud.faults.append("drop")
    forwarder = make_forwarder()

    first = forwarder.drain()
    assert first.error is not None
    assert first.error.code == ErrorCode.STRIPE_API_CONNECTION_ERROR
    assert held(vault) == [1, 2, 3, 4, 5]  # the cloud committed, but the reader cannot know
    assert listener.forwarded == []
    assert forwarder.next_retry_at is not None

    second = forwarder.drain()
    assert (second.forwarded, second.approved, second.error) == (5, 5, None)
    assert cloud.requests[0] == cloud.requests[1] == [r.forward_key for r in records]
    assert all(o.replayed for _, o in listener.forwarded)
    assert cloud.charges == Counter({(READER, r.sequence): 1 for r in records})
    assert vault.summary().count == 0


def test_a_short_answer_removes_only_the_answered_records(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 4)
    cloud.faults.append("short")
    forwarder = make_forwarder()

    result = forwarder.drain()
    assert (result.forwarded, result.remaining) == (3, 1)
    assert result.error is not None
    assert result.error.code == ErrorCode.STRIPE_API_ERROR
    assert result.error.sequences == (4,)
    assert held(vault) == [4]
    assert forwarder.next_retry_at is not None

    result = forwarder.drain()
    assert (result.forwarded, result.remaining, result.error) == (1, 0, None)
    assert [(r.sequence, o.replayed) for r, o in listener.forwarded][-1] == (4, True)
    assert sum(cloud.charges.values()) == 4


def test_declines_and_rejections_leave_the_vault(
    vault: Vault, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    vault.store(payment(number="4242424242424242"))
    vault.store(payment(number=DECLINED_CARD))
    # Sealed to a key that is not the cloud's: the cloud cannot open it, ever.
    stranger = X25519PrivateKey.generate().public_key()
    raw = stranger.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    vault.set_sealing_key(SealingKey("csk_stranger", raw))
    vault.store(payment())
    vault.set_sealing_key(SEALING)

    result = make_forwarder().drain()
    assert (result.approved, result.declined, result.rejected) == (1, 1, 1)
    assert (result.forwarded, result.remaining, result.error) == (3, 0, None)
    assert vault.summary().count == 0
    statuses = {r.sequence: o.status for r, o in listener.forwarded}
    assert statuses == {1: "approved", 2: "declined", 3: "rejected"}
    assert listener.failures == []


def test_without_a_pos_and_not_unattended_nothing_is_sent(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 3)
    for forwarder in (
        make_forwarder(unattended=False, token_source=lambda: None),
        make_forwarder(unattended=False),
    ):
        result = forwarder.drain()
        assert (result.forwarded, result.remaining, result.error) == (0, 3, None)
        assert forwarder.next_retry_at is None  # it waits for a POS, not for a timer
    assert cloud.requests == []
    assert listener.failures == []
    assert held(vault) == [1, 2, 3]


def test_unattended_forwards_with_the_device_key_alone(
    vault: Vault, cloud: Cloud, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 3)
    result = make_forwarder(unattended=True, token_source=lambda: None).drain()
    assert (result.forwarded, result.remaining) == (3, 0)
    assert cloud.tokens_used == [None]


def test_a_connected_pos_gives_a_fresh_token_per_batch(
    vault: Vault, cloud: Cloud, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 5)
    forwarder = make_forwarder(unattended=False, token_source=cloud.token, batch_size=2)
    result = forwarder.drain()
    assert (result.forwarded, result.remaining, result.error) == (5, 0, None)
    assert len(cloud.tokens_used) == 3 and len(set(cloud.tokens_used)) == 3
    assert cloud.tokens == {}  # every token issued was spent, none twice


def test_token_provider_failure_keeps_the_records(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 2)

    def failing() -> str | None:
        raise TokenUnavailable("the backend answered 503")

    def buggy() -> str | None:
        raise KeyError("token")

    for source in (failing, buggy):
        forwarder = make_forwarder(token_source=source)
        result = forwarder.drain()
        assert result.error is not None
        assert result.error.code == ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING
        assert result.error.sequences == (1, 2)
        assert (result.forwarded, result.remaining) == (0, 2)
        assert forwarder.next_retry_at is not None
    assert "503" in listener.failures[0].message
    assert [e.code for e in listener.failures] == [
        ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING
    ] * 2
    assert cloud.requests == []
    assert held(vault) == [1, 2]


def test_a_token_of_another_account_is_refused_and_the_records_kept(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 2)
    forwarder = make_forwarder(token_source=lambda: cloud.token("acct_someone_else"))
    result = forwarder.drain()
    assert result.error is not None
    assert result.error.code == ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING
    assert (result.forwarded, result.remaining) == (0, 2)
    assert [e.code for e in listener.failures] == [ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING]
    assert forwarder.last_error == result.error
    assert cloud.charges == Counter() and cloud.ledger == {}
    assert held(vault) == [1, 2]

    # With a token of the right account they go.
    result = make_forwarder(token_source=cloud.token).drain()
    assert (result.forwarded, result.remaining, result.error) == (2, 0, None)


def test_records_of_another_account_are_not_sent(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    vault.store(payment(account="acct_before_reregistration"))
    store(vault, 3)
    vault.store(payment(account="acct_before_reregistration"))
    forwarder = make_forwarder(account=lambda: ACCOUNT, batch_size=2)

    result = forwarder.drain()
    assert (result.forwarded, result.remaining) == (3, 2)
    assert result.error is not None
    assert result.error.code == ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING
    assert result.error.sequences == (1, 5)
    assert held(vault) == [1, 5]
    sent = {key for request in cloud.requests for key in request}
    assert forward_key_for("acct_before_reregistration", READER, 1) not in sent
    assert len(sent) == 3
    assert listener.failures == [result.error]
    assert forwarder.next_retry_at is None  # no timer fixes this; it is reported instead


def test_unregistered_reader_sends_nothing(
    vault: Vault, cloud: Cloud, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 2)
    result = make_forwarder(device_key=lambda: None).drain()
    assert (result.forwarded, result.remaining, result.error) == (0, 2, None)
    assert cloud.requests == []


def test_a_refused_device_key_keeps_the_records(
    vault: Vault, cloud: Cloud, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 2)
    result = make_forwarder(device_key=lambda: "rdk_test_deleted").drain()
    assert result.error is not None
    assert result.error.code == ErrorCode.STRIPE_API_ERROR
    assert "device_key_invalid" in result.error.message
    assert held(vault) == [1, 2]


def test_listener_errors_are_logged_and_forwarding_goes_on(
    vault: Vault, cloud: Cloud, make_forwarder: Callable[..., Forwarder]
) -> None:
    for number in TEST_CARDS[:3]:
        vault.store(payment(number=number))
    listener = Listener(raises=True)
    with capture_logs() as logs:
        result = make_forwarder(listener=listener).drain()
    assert (result.forwarded, result.remaining, result.error) == (3, 0, None)
    assert len(listener.forwarded) == 3
    failed = [e for e in logs if e["event"] == "forwarding_listener_failed"]
    assert len(failed) == 3
    # Nothing from the card or the credentials in any log line.
    text = repr(logs)
    assert not any(number in text for number in TEST_CARDS)
    assert DEVICE_KEY not in text


def test_records_whose_removal_committed_are_reported_despite_a_tip_failure(
    vault: Vault,
    vault_dir: Path,
    cloud: Cloud,
    listener: Listener,
    make_forwarder: Callable[..., Forwarder],
) -> None:
    store(vault, 3)
    # The tip file cannot be replaced (its temporary name is taken by a directory): the
    # removal commits, then the vault reports the failed tip write.
    blocker = vault_dir / "vault.tip.tmp"
    blocker.mkdir()
    result = make_forwarder().drain()
    assert result.error is not None
    assert result.error.code == ErrorCode.UNEXPECTED_SDK_ERROR
    assert (result.forwarded, result.remaining) == (3, 0)
    assert [r.sequence for r, _ in listener.forwarded] == [1, 2, 3]
    blocker.rmdir()


def test_a_vault_that_fails_after_the_cloud_answered_forwards_again_on_reopen(
    open_vault: OpenVault,
    vault: Vault,
    cloud: Cloud,
    listener: Listener,
    make_forwarder: Callable[..., Forwarder],
) -> None:
    store(vault, 3)
    cloud.after_commit = vault.close  # the vault goes away while the answer is on its way
    result = make_forwarder().drain()
    assert result.error is not None
    assert result.error.code == ErrorCode.UNEXPECTED_SDK_ERROR
    assert (result.forwarded, result.remaining) == (0, 0)
    assert listener.forwarded == []
    assert listener.failures == [result.error]

    cloud.after_commit = None
    reopened = open_vault()
    assert held(reopened) == [1, 2, 3]
    result = make_forwarder(vault=reopened).drain()
    assert (result.forwarded, result.remaining, result.error) == (3, 0, None)
    assert [(r.sequence, o.replayed) for r, o in listener.forwarded] == [
        (1, True),
        (2, True),
        (3, True),
    ]
    assert sum(cloud.charges.values()) == 3


# -- the background thread ---------------------------------------------------------------------


def test_background_thread_drains_after_wake_and_stops(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    forwarder = make_forwarder()
    forwarder.start()
    assert forwarder.running
    store(vault, 7)
    forwarder.wake()
    assert listener.wait_for(lambda: len(listener.forwarded) == 7)
    store(vault, 3)
    forwarder.wake()
    assert listener.wait_for(lambda: len(listener.forwarded) == 10)
    forwarder.stop(timeout=PATIENCE)
    assert not forwarder.running
    assert vault.summary().count == 0
    assert sum(cloud.charges.values()) == 10


def test_background_thread_backs_off_and_stops_promptly_while_waiting(
    vault: Vault,
    cloud: Cloud,
    clock: ManualClock,
    listener: Listener,
    make_forwarder: Callable[..., Forwarder],
) -> None:
    store(vault, 2)
    cloud.down = True
    # A retry due in an hour of the (manual) clock: the thread must not sleep through stop().
    forwarder = make_forwarder(base_delay=3600.0, max_delay=3600.0, rng=random.Random(3))
    forwarder.start()
    forwarder.wake()
    # The backoff is recorded before the listener hears of the failure.
    assert listener.wait_for(lambda: len(listener.failures) == 1)
    retry_at = forwarder.next_retry_at
    assert retry_at is not None and retry_at > clock.now()

    cloud.down = False
    forwarder.wake()  # the cloud is back: no need to wait for the retry
    assert listener.wait_for(lambda: len(listener.forwarded) == 2)
    forwarder.stop(timeout=PATIENCE)
    assert not forwarder.running


def test_background_thread_retries_when_the_backoff_is_due(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 2)
    cloud.faults.extend(["down", "down"])
    # Tiny delays on the manual clock: each retry is due at once, without a wake().
    forwarder = make_forwarder(base_delay=1e-9, max_delay=1e-9)
    forwarder.start()
    forwarder.wake()
    assert listener.wait_for(lambda: len(listener.forwarded) == 2)
    assert len(listener.failures) == 2
    forwarder.stop(timeout=PATIENCE)


def test_background_thread_survives_listener_errors(
    vault: Vault, cloud: Cloud, make_forwarder: Callable[..., Forwarder]
) -> None:
    listener = Listener(raises=True)
    forwarder = make_forwarder(listener=listener)
    forwarder.start()
    for want in (2, 4):
        store(vault, 2)
        forwarder.wake()
        assert listener.wait_for(lambda: len(listener.forwarded) == want)  # noqa: B023
    assert forwarder.running
    forwarder.stop(timeout=PATIENCE)
    assert vault.summary().count == 0


def test_drain_and_background_thread_never_overlap(
    vault: Vault, cloud: Cloud, listener: Listener, make_forwarder: Callable[..., Forwarder]
) -> None:
    store(vault, 40)
    forwarder = make_forwarder(batch_size=3)
    forwarder.start()
    forwarder.wake()
    forwarder.drain()
    assert listener.wait_for(lambda: len(listener.forwarded) == 40)
    forwarder.stop(timeout=PATIENCE)
    # Each record went out once: the two drains took turns instead of racing.
    sent = [key for request in cloud.requests for key in request]
    assert len(sent) == len(set(sent)) == 40
    assert [r.sequence for r, _ in listener.forwarded] == list(range(1, 41))


# -- property: whatever happens, every stored record is charged exactly once -------------------


class ForwardingMachine(RuleBasedStateMachine):
    """Stores, lost answers, outages and drains in any order; then the cloud comes back."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = ManualClock()
        self.vault = Vault.open(Path(self.tmp.name), clock=self.clock, sealing_key=SEALING)
        self.cloud = Cloud()
        self.listener = Listener()
        self.forwarder = Forwarder(
            self.vault,
            self.cloud,
            device_key=lambda: DEVICE_KEY,
            unattended=True,
            clock=self.clock,
            rng=random.Random(0),
            batch_size=3,
            listener=self.listener,
        )
        self.stored: dict[int, StoredPayment] = {}

    @rule(n=st.integers(1, 4), declined=st.booleans())
    def store(self, n: int, declined: bool) -> None:
        for _ in range(n):
            number = DECLINED_CARD if declined else "4242424242424242"
            record = self.vault.store(payment(number=number))
            self.stored[record.sequence] = record

    @rule(fault=st.sampled_from(["down", "drop", "short"]))
    def fault(self, fault: str) -> None:
        self.cloud.faults.append(fault)

    @rule(down=st.booleans())
    def outage(self, down: bool) -> None:
        self.cloud.down = down

    @rule()
    def drain(self) -> None:
        before = set(held(self.vault))
        result = self.forwarder.drain()
        after = set(held(self.vault))
        assert after <= before
        assert result.remaining == len(after)
        self.clock.advance(1.0)

    @precondition(lambda self: bool(self.stored))
    @rule(data=st.data())
    def reopen(self, data: st.DataObject) -> None:
        # A restart between attempts: the same records, the same keys.
        self.vault.close()
        self.vault = Vault.open(Path(self.tmp.name), clock=self.clock, sealing_key=SEALING)
        self.forwarder = Forwarder(
            self.vault,
            self.cloud,
            device_key=lambda: DEVICE_KEY,
            unattended=True,
            clock=self.clock,
            rng=random.Random(data.draw(st.integers(0, 9))),
            batch_size=data.draw(st.integers(1, 5)),
            listener=self.listener,
        )

    @invariant()
    def never_charged_twice_and_nothing_lost(self) -> None:
        assert all(n == 1 for n in self.cloud.charges.values())
        # A record is out of the vault only if the cloud holds its outcome.
        for sequence in set(self.stored) - set(held(self.vault)):
            assert (READER, sequence) in self.cloud.ledger

    def teardown(self) -> None:
        try:
            self.cloud.down = False
            self.cloud.faults.clear()
            result = self.forwarder.drain()
            assert result.error is None and result.remaining == 0
            assert self.vault.summary().count == 0
            approved = {s for s, r in self.stored.items() if r.display.last4 == "4242"}
            assert self.cloud.charges == Counter({(READER, s): 1 for s in approved})
            assert set(self.cloud.ledger) == {(READER, s) for s in self.stored}
            # The POS heard of each payment once it had left the vault, and a final status
            # for every one of them.
            heard = sorted(r.sequence for r, _ in self.listener.forwarded)
            assert heard == sorted(self.stored)
        finally:
            self.vault.close()
            self.tmp.cleanup()


ForwardingMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_every_stored_record_is_charged_exactly_once = ForwardingMachine.TestCase


def test_logs_never_carry_card_numbers_or_keys(
    vault: Vault, cloud: Cloud, make_forwarder: Callable[..., Forwarder]
) -> None:
    for number in TEST_CARDS:
        vault.store(payment(number=number))
    cloud.faults.extend(["drop", "short"])
    forwarder = make_forwarder(token_source=cloud.token)
    with capture_logs() as logs:
        results = [forwarder.drain() for _ in range(3)]
    assert [r.remaining for r in results] == [7, 1, 0]
    assert [e["event"] for e in logs].count("forwarding_failed") == 2
    text = repr(logs)
    assert not any(number in text for number in TEST_CARDS)
    assert DEVICE_KEY not in text and "pst_test" not in text
