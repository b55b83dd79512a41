"""The reader's core: registration, POS sessions, offline payments, forwarding, events.

No HTTP inside. The reader daemon serves it on the LAN (`stowpay.reader.lan`); the SDK can run
it in-process. It talks to the cloud through a `CloudLink`, keeps its memory in `ReaderState`,
stores offline payments in the `Vault` and forwards them with a `Forwarder` it owns.

Every refusal is a `ReaderError` carrying a Terminal `ErrorCode`. The money rule that shapes
`confirm`: a payment is answered "stored" only after `Vault.store` returned; once it returned,
nothing may turn the answer into a failure (the payment will be charged).

While the cloud answers, PaymentIntents are created and confirmed at the cloud (the card read
sealed as a stored record's). A confirm whose answer is lost may have charged: a
`prefer_online` payment is then stored under its PaymentIntent's id, and the cloud settles the
forwarded record against that PaymentIntent without charging twice (`docs/reader-protocol.md`).

Events go to subscribers (the LAN server's SSE streams) as ``(name, data)``:
``offline_status``, ``payment_intent_forwarded``, ``forwarding_failure`` and
``connection_token_request`` (the forwarder asking the connected POS for a token).
"""

from __future__ import annotations

import contextlib
import hmac
import random
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from .. import __version__
from ..wire import metadata as metadata_limits
from ..wire.clock import Clock
from ..wire.terminal_codes import ErrorCode, message_for
from .cloud_link import (
    CloudDeclined,
    CloudLink,
    CloudRefused,
    CloudUnreachable,
    DeviceDescription,
    ForwardOutcome,
    OnlinePayment,
    ReaderContext,
    RegistrationCode,
)
from .forwarder import Forwarder, ForwardingError, TokenUnavailable
from .online import seal_for_online
from .presentment import CardReading, Presentment, card_present_details, read_card
from .rules import RuleError, check_amount, check_card, check_connect_offline, check_stored
from .state import CachedContext, Identity, ReaderState, StateError
from .vault import (
    CAPTURE_METHODS,
    FindingKind,
    OfflinePayment,
    SealingKey,
    StoredPayment,
    Vault,
    VaultConfigError,
    VaultError,
    VaultFullError,
    VaultInputError,
    VaultWriteError,
    new_local_id,
)

log = structlog.get_logger("stowpay.reader.core")

DEFAULT_DEVICE_TYPE = "simulated_wisepos_e"
OFFLINE_BEHAVIORS = frozenset({"prefer_online", "require_online", "force_offline"})
#: How long the forwarder waits for the POS to answer a connection token request.
TOKEN_WAIT = 10.0
#: A code given on the command line has no known expiry; the cloud keeps codes 24 h.
_GIVEN_CODE_LIFETIME = 86400.0
#: States in which a card may be collected for an intent.
_COLLECTABLE = ("requires_payment_method", "requires_confirmation")
#: States of a charged intent (a confirm again answers it as it is).
_CHARGED = ("succeeded", "requires_capture")
#: Intents kept in memory (open ones, and confirmed ones so a retried confirm gets the same
#: answer rather than a second payment).
_MAX_INTENTS = 1000

#: An event for subscribers: (name, data); None ends the subscriber's stream.
Event = tuple[str, dict[str, Any]]
Deliver = Callable[[Event | None], None]


class ReaderError(Exception):
    """A refused reader operation, with its Terminal error code."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        param: str | None = None,
        api_code: str | None = None,
        decline_code: str | None = None,
        payment_intent: Mapping[str, Any] | None = None,
    ) -> None:
        text = message or message_for(code)
        super().__init__(text)
        self.code = code
        self.message = text
        self.param = param
        #: the cloud's error code, when the cloud refused
        self.api_code = api_code
        #: the issuer's reason, for an online decline (`DECLINED_BY_STRIPE_API`)
        self.decline_code = decline_code
        #: the PaymentIntent as it is after an online decline
        self.payment_intent = payment_intent

    @classmethod
    def from_rule(cls, exc: RuleError) -> ReaderError:
        """The same refusal, from an offline rule."""
        return cls(exc.code, exc.message)


def _invalid(message: str, param: str | None = None) -> ReaderError:
    return ReaderError(ErrorCode.INVALID_REQUIRED_PARAMETER, message, param=param)


def _unheld(pi: Mapping[str, Any]) -> dict[str, Any]:
    """A cloud's PaymentIntent the reader holds no intent for, as the LAN API serves one."""
    return dict(pi) | {"local_id": None, "offline_behavior": None, "offline_details": None}


def _from_cloud(exc: CloudRefused, what: str) -> ReaderError:
    """A cloud's refusal of an online call: a bad parameter, or the API's error."""
    code = ErrorCode.INVALID_REQUIRED_PARAMETER if exc.status == 400 else ErrorCode.STRIPE_API_ERROR
    param = exc.error.get("param")
    return ReaderError(
        code,
        f"{what}: {exc.message}",
        param=param if isinstance(param, str) else None,
        api_code=exc.code,
    )


@dataclass
class Session:
    """A connected POS."""

    token: str = field(repr=False)
    pos_id: str
    account: str
    location: str | None
    offline: bool
    connected_at: float


@dataclass
class LocalIntent:
    """A PaymentIntent made on the reader: online, the cloud's (`payment_intent`); offline, a
    local one with no cloud id until forwarded."""

    local_id: str
    account: str
    amount: int
    currency: str
    capture_method: str
    metadata: dict[str, str]
    description: str | None
    offline_behavior: str
    created: float
    status: str = "requires_payment_method"
    #: the card read between collect and confirm; dropped (with its number) once stored
    reading: CardReading | None = field(default=None, repr=False)
    details: dict[str, Any] | None = None
    stored: StoredPayment | None = field(default=None, repr=False)
    #: the cloud's PaymentIntent as last seen, for one created online
    payment_intent: dict[str, Any] | None = None

    @property
    def id(self) -> str | None:
        """The cloud's id (`pi_...`), for one created online; None offline."""
        return None if self.payment_intent is None else str(self.payment_intent["id"])

    def as_dict(self) -> dict[str, Any]:
        """The intent as the LAN API serves it: the cloud's PaymentIntent while online; the
        local one (no `payment_method`) offline, and once stored offline."""
        if self.payment_intent is not None and self.stored is None:
            answer = dict(self.payment_intent)
            answer.update(
                local_id=self.local_id,
                offline_behavior=self.offline_behavior,
                status=self.status,
                offline_details=None,
            )
            return answer
        offline: dict[str, Any] | None = None
        if self.details is not None:
            offline = {
                "stored_at": None if self.stored is None else self.stored.stored_at,
                "requires_upload": True,
                "card_present_details": self.details,
            }
        capturable = self.amount if self.status == "requires_capture" else 0
        return {
            "id": self.id,
            "object": "payment_intent",
            "local_id": self.local_id,
            "amount": self.amount,
            "amount_capturable": capturable,
            "amount_received": self.amount if self.status == "succeeded" else 0,
            "capture_method": self.capture_method,
            "created": int(self.created),
            "currency": self.currency,
            "description": self.description,
            "livemode": False,
            "metadata": dict(self.metadata),
            "offline_behavior": self.offline_behavior,
            "status": self.status,
            "offline_details": offline,
        }


@dataclass
class _TokenRequest:
    session: str
    done: threading.Event = field(default_factory=threading.Event)
    token: str | None = field(default=None, repr=False)
    error: str | None = None


class ReaderCore:
    """The smart reader's logic; thread-safe. `start` runs its forwarder in the background."""

    def __init__(
        self,
        state: ReaderState,
        vault: Vault,
        link: CloudLink,
        *,
        clock: Clock,
        rng: random.Random | None = None,
        device_type: str = DEFAULT_DEVICE_TYPE,
        software_version: str = __version__,
        network_id: Callable[[], str | None] = lambda: None,
        ip_address: Callable[[], str | None] = lambda: None,
        lan_url: Callable[[], str | None] = lambda: None,
        unattended_forwarding: bool = False,
        registration_code: str | None = None,
        on_registration_code: Callable[[str], None] | None = None,
        token_wait: float = TOKEN_WAIT,
        forwarder_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.state = state
        self.vault = vault
        self.link = link
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.device_type = device_type
        self.software_version = software_version
        self._network_id = network_id
        self._ip_address = ip_address
        self._lan_url = lan_url
        self._given_code = registration_code
        self._on_code = on_registration_code
        self._shown_code: str | None = None
        self._token_wait = token_wait
        self._lock = threading.RLock()
        # Confirms run one at a time: the stored-payment limits are checked against the vault
        # as it is, and the store must follow before another confirm looks.
        self._confirming = threading.Lock()
        self._online = False
        self._session: Session | None = None
        self._subscribers: dict[int, Deliver] = {}
        self._next_subscriber = 0
        self._intents: OrderedDict[str, LocalIntent] = OrderedDict()
        self._token_requests: dict[str, _TokenRequest] = {}
        #: the latest refusal from the cloud (a deleted reader, a bad sealing key), for status
        self.cloud_problem: str | None = None
        #: probes the cloud now and returns whether it answered (the daemon sets the
        #: connectivity monitor's `check`); used before refusing a payment as "online"
        self.connectivity_check: Callable[[], bool] | None = None
        # Offline payments wait, after a start, until the vault's counter is known to be past
        # every sequence the cloud holds from this reader (a heartbeat answered), or the cloud
        # is known to be unreachable (then the vault's own rollback check is all there is).
        self._sequence_known = False
        #: why the counter could not be moved past the cloud's high water (payments wait)
        self._sequence_blocked: str | None = None
        #: the latest move of the counter past the cloud's high water, for status
        self._sequence_advanced: dict[str, float] | None = None
        context = state.context
        if context is not None:
            self._use_sealing_key(context)
        self._move_legacy_card_uses()
        self.forwarder = Forwarder(
            vault,
            link,
            device_key=lambda: state.device_key,
            token_source=self._token_from_pos,
            unattended=unattended_forwarding,
            clock=clock,
            rng=self.rng,
            listener=self,
            account=self._account,
            **dict(forwarder_options or {}),
        )

    def _move_legacy_card_uses(self) -> None:
        """Move per-card uses an older version kept in the state file into the vault: noted
        there first, then dropped here, so a crash in between only notes them again."""
        uses = self.state.legacy_card_uses()
        try:
            if uses:
                self.vault.note_card_uses(uses)
            self.state.drop_legacy_card_uses()
        except (VaultError, StateError) as exc:
            log.error("card_uses_not_moved", error=str(exc))

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start forwarding in the background."""
        self.forwarder.start()

    def close(self) -> None:
        """Stop forwarding and end every POS session (the vault is closed by its opener)."""
        self.end_sessions()
        self.forwarder.stop()

    def end_sessions(self) -> None:
        """Disconnect the POS and end every event stream (the server is shutting down)."""
        with self._lock:
            self._end_session()
            for deliver in list(self._subscribers.values()):
                _safe(deliver, None)
            self._subscribers.clear()
            for request in self._token_requests.values():
                request.error = "the reader is shutting down"
                request.done.set()

    @property
    def registered(self) -> bool:
        """True once a merchant registered this reader."""
        return self.state.identity is not None

    @property
    def online(self) -> bool:
        """Whether the cloud was reachable at the latest check."""
        return self._online

    def _account(self) -> str | None:
        identity = self.state.identity
        return None if identity is None else identity.account

    # -- registration and heartbeat ------------------------------------------------------------

    @property
    def registration_code(self) -> str | None:
        """The code to show while unregistered (None once registered or before one is known)."""
        if self.registered:
            return None
        code = self.state.registration
        return None if code is None else code.code

    def poll_registration(self) -> bool:
        """One registration step: get a code if needed, ask whether it was registered.

        Returns True once registered (the identity is saved before anything uses it, then a
        heartbeat fetches the context). Raises `CloudUnreachable` when the cloud is not there.
        """
        if self.registered:
            return True
        code = self._current_code()
        try:
            activation = self.link.activate(code.code)
        except CloudRefused as exc:
            # Expired or unknown: show a fresh one next time round.
            log.warning("registration_code_refused", code=exc.code)
            self.state.save_registration(None)
            self._given_code = None
            return False
        if activation is None:
            return False
        identity = self.state.save_identity(activation)
        log.info("reader_registered", reader=identity.reader, account=identity.account)
        self.cloud_problem = None
        self._emit_status()
        with contextlib.suppress(CloudUnreachable):
            self.heartbeat()
        return True

    def _current_code(self) -> RegistrationCode:
        now = self.clock.now()
        code = self.state.registration
        if code is None or code.expires_at <= now:
            if self._given_code is not None:
                code = RegistrationCode(self._given_code, now + _GIVEN_CODE_LIFETIME)
            else:
                code = self.link.request_registration_code(
                    DeviceDescription(
                        device_type=self.device_type,
                        serial_number=self.state.serial_number,
                        device_sw_version=self.software_version,
                        ip_address=self._ip_address(),
                    )
                )
            self.state.save_registration(code)
        if code.code != self._shown_code:
            self._shown_code = code.code
            if self._on_code is not None:
                self._on_code(code.code)
            self._emit_status()
        return code

    def heartbeat(self) -> ReaderContext | None:
        """Report in and refresh the cached context; the connectivity monitor's probe.

        Unregistered, it takes a registration step instead. Raises `CloudUnreachable` when the
        cloud cannot be reached; a refusal (a deleted reader) is kept in `cloud_problem`.
        """
        identity = self.state.identity
        if identity is None:
            self.poll_registration()
            identity = self.state.identity
            if identity is None:
                return None
        lan_url = self._lan_url()
        try:
            ctx = self._report_in(identity, lan_url)
        except CloudUnreachable:
            # Offline: the vault's own rollback check is all there is to go on.
            self._sequence_known = True
            raise
        except CloudRefused as exc:
            self.cloud_problem = f"{exc.code}: {exc.message}"
            log.warning("heartbeat_refused", code=exc.code)
            return None
        if ctx.account != identity.account:
            self.cloud_problem = "account_mismatch: the cloud answered for another account"
            log.error("heartbeat_account_mismatch")
            return None
        now = self.clock.now()
        cached = CachedContext.from_context(ctx, now=now)
        self.state.save_context(cached)
        self.state.record_software_check(now)
        self.cloud_problem = None if self._use_sealing_key(cached) else self.cloud_problem
        self._catch_up(ctx.highest_sequence, now)
        return ctx

    def _report_in(self, identity: Identity, lan_url: str | None) -> ReaderContext:
        extra: dict[str, Any] = {}
        backlog = self._backlog()
        if backlog is not None:
            extra["offline"] = backlog
        if lan_url is not None:
            # Only when there is one: links made before discovery take no `lan_url`.
            extra["lan_url"] = lan_url
        return self.link.heartbeat(
            identity.device_key,
            status="online",
            ip_address=self._ip_address(),
            device_sw_version=self.software_version,
            **extra,
        )

    def _backlog(self) -> dict[str, Any] | None:
        """What the vault holds, as the heartbeat reports it (the merchant's money at risk);
        None when the vault cannot say (the heartbeat goes without it)."""
        try:
            summary = self.vault.summary()
        except VaultError:
            return None
        return {
            "stored_count": summary.count,
            "amounts": dict(summary.amounts),
            "oldest_stored_at": summary.oldest_stored_at,
        }

    def _catch_up(self, highest: int | None, now: float) -> None:
        """Move the vault's counter past the highest sequence the cloud holds from this reader.

        A vault behind it was restored from an older copy (locally undetectable when the
        whole directory was): its next payments would reuse sequences the cloud has taken,
        be rejected as conflicts and never be charged. A cloud that does not say (None)
        leaves the counter as it is.
        """
        if highest is not None:
            try:
                skipped = self.vault.advance_sequence(highest)
            except VaultError as exc:
                self._sequence_blocked = (
                    f"the vault is behind the cloud's sequence {highest}: {exc}"
                )
                log.error("vault_sequence_not_advanced", highest_sequence=highest, error=str(exc))
                return
            if skipped:
                self._sequence_advanced = {"from": highest - skipped, "to": highest, "at": now}
                log.warning(
                    "vault_behind_the_cloud",
                    head_sequence=highest - skipped,
                    highest_sequence=highest,
                    skipped=skipped,
                )
        self._sequence_blocked = None
        self._sequence_known = True

    def _sequence_checked(self) -> None:
        """Refuse to store until the counter is known to be past the cloud's sequences (or the
        cloud to be unreachable); asks with a heartbeat the first time after a start."""
        if not self._sequence_known:
            try:
                self.heartbeat()
            except CloudUnreachable:
                pass
            except Exception:
                log.error("sequence_check_failed", exc_info=True)
        if self._sequence_known and self._sequence_blocked is None:
            return
        why = self._sequence_blocked or self.cloud_problem or "no heartbeat has been answered"
        raise ReaderError(
            ErrorCode.OFFLINE_TRANSACTION_DECLINED,
            "The reader cannot store offline payments until its sequence is checked with the "
            f"cloud ({why}); nothing was kept. Try again shortly, or take another form of "
            "payment.",
        )

    def _use_sealing_key(self, context: CachedContext) -> bool:
        try:
            self.vault.set_sealing_key(SealingKey.from_document(context.sealing_key))
        except VaultConfigError as exc:
            self.cloud_problem = f"sealing_key: {exc}"
            log.error("sealing_key_unusable", error=str(exc))
            return False
        return True

    def set_online(self, online: bool) -> None:
        """The connectivity monitor saw the cloud come or go."""
        self._online = online
        if not online:
            self._sequence_known = True
        self._emit_status()
        if online:
            self.forwarder.wake()

    # -- sessions ------------------------------------------------------------------------------

    def connect(
        self,
        *,
        pos_id: str,
        connection_token: str | None = None,
        pairing_secret: str | None = None,
        fail_if_in_use: bool = False,
        network_id: str | None = None,
    ) -> dict[str, Any]:
        """Connect a POS: online with a connection token, offline with its pairing secret."""
        identity = self.state.identity
        if identity is None:
            code = self.registration_code
            raise ReaderError(
                ErrorCode.MISSING_PREREQUISITE,
                "The reader is not registered yet"
                + (f": register it with the code {code}." if code else "."),
            )
        if not connection_token and not pairing_secret:
            raise _invalid("Give a connection_token (online) or a pairing_secret (offline).")
        with self._lock:
            current = self._session
            if current is not None and current.pos_id != pos_id and fail_if_in_use:
                raise ReaderError(
                    ErrorCode.READER_BUSY,
                    f"The reader is in use by another POS ({current.pos_id}). Disconnect it there, "
                    "or connect without fail_if_in_use to take the reader over.",
                )
        network = network_id if network_id is not None else self._network_id()
        now = self.clock.now()
        online_session: Session | None = None
        if connection_token:
            try:
                online_session = self._connect_online(identity, connection_token, pos_id, network)
            except CloudUnreachable:
                if not pairing_secret:
                    raise ReaderError(
                        ErrorCode.STRIPE_API_CONNECTION_ERROR,
                        "The cloud cannot be reached to check the connection token; connect "
                        "with the pairing secret to work offline.",
                    ) from None
        if online_session is not None:
            secret = "rps_" + secrets.token_urlsafe(24)
            self.state.save_pairing(pos_id, secret, now=now)
            session = online_session
        else:
            assert pairing_secret is not None
            session = self._connect_offline(identity, pairing_secret, pos_id, network)
            secret = pairing_secret
        with self._lock:
            current = self._session
            if current is not None and current.pos_id != pos_id and fail_if_in_use:
                raise ReaderError(
                    ErrorCode.READER_BUSY,
                    f"The reader is in use by another POS ({current.pos_id}). Disconnect it there, "
                    "or connect without fail_if_in_use to take the reader over.",
                )
            self._end_session()
            self._session = session
        log.info("pos_connected", pos_id=pos_id, offline=session.offline)
        self._emit_status()
        return {
            "session": session.token,
            "pairing_secret": secret,
            "account": session.account,
            "location": session.location,
            "offline": session.offline,
        }

    def _connect_online(
        self, identity: Identity, token: str, pos_id: str, network: str | None
    ) -> Session:
        try:
            grant = self.link.redeem_connection_token(identity.device_key, token)
        except CloudRefused as exc:
            if exc.code == "connection_token_invalid":
                raise ReaderError(
                    ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR,
                    f"The connection token was refused: {exc.message}",
                    api_code=exc.code,
                ) from None
            raise ReaderError(
                ErrorCode.STRIPE_API_ERROR,
                f"The cloud refused the connection token: {exc.message}",
                api_code=exc.code,
            ) from None
        if grant.account != identity.account:
            raise ReaderError(
                ErrorCode.STRIPE_API_ERROR,
                "The connection token belongs to another account than the reader's.",
                api_code="account_mismatch",
            )
        context = self.state.context
        if context is None:
            with contextlib.suppress(CloudUnreachable):
                self.heartbeat()
            context = self.state.context
        location = (context.location_id if context is not None else None) or grant.location
        now = self.clock.now()
        if location is not None:
            self.state.record_online_connection(
                device_type=self.device_type,
                location=location,
                account=grant.account,
                network_id=network,
                now=now,
            )
        return Session(
            token="rss_" + secrets.token_urlsafe(24),
            pos_id=pos_id,
            account=grant.account,
            location=location,
            offline=False,
            connected_at=now,
        )

    def _connect_offline(
        self, identity: Identity, secret: str, pos_id: str, network: str | None
    ) -> Session:
        if not self.state.pairing_matches(pos_id, secret):
            raise ReaderError(
                ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE,
                "This POS has no pairing with the reader, or the pairing secret is wrong: "
                "connect online (with a connection token) first.",
            )
        context = self.state.context
        location = context.location_id if context is not None else None
        now = self.clock.now()
        try:
            account = check_connect_offline(
                self.state.history,
                device_type=self.device_type,
                location=location or "",
                network_id=network,
                now=now,
            )
        except RuleError as exc:
            raise ReaderError.from_rule(exc) from None
        if account != identity.account:
            raise ReaderError(
                ErrorCode.NO_LAST_SEEN_ACCOUNT,
                "The reader's last online connection was for another account.",
            )
        return Session(
            token="rss_" + secrets.token_urlsafe(24),
            pos_id=pos_id,
            account=account,
            location=location,
            offline=True,
            connected_at=now,
        )

    def session(self, token: str | None) -> Session:
        """The session a bearer token names; `NOT_CONNECTED_TO_READER` if none."""
        with self._lock:
            current = self._session
            if (
                token is None
                or current is None
                or not hmac.compare_digest(token.encode(), current.token.encode())
            ):
                raise ReaderError(
                    ErrorCode.NOT_CONNECTED_TO_READER,
                    "No POS session: connect first (POST /v1/connect) and send the session as "
                    "a bearer token.",
                )
            return current

    def disconnect(self, token: str | None) -> None:
        """End the POS's session."""
        session = self.session(token)
        with self._lock:
            if self._session is session:
                self._end_session()
        log.info("pos_disconnected", pos_id=session.pos_id)
        self._emit_status()

    def _end_session(self) -> None:
        # Caller holds self._lock.
        if self._session is None:
            return
        self._session = None
        for deliver in list(self._subscribers.values()):
            _safe(deliver, None)
        self._subscribers.clear()
        for request in self._token_requests.values():
            request.error = "the POS disconnected"
            request.done.set()

    # -- payments ------------------------------------------------------------------------------

    def create_payment_intent(
        self,
        token: str | None,
        *,
        amount: int,
        currency: str,
        capture_method: str = "automatic",
        metadata: Mapping[str, str] | None = None,
        description: str | None = None,
        offline_behavior: str = "prefer_online",
    ) -> dict[str, Any]:
        """Create a PaymentIntent: at the cloud when online (see `_goes_online`), else a local
        (offline) one."""
        session = self.session(token)
        if type(amount) is not int or not 0 < amount < (1 << 53):
            raise _invalid("amount must be a positive integer in minor units", "amount")
        if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
            raise _invalid("currency must be a three-letter ISO code", "currency")
        currency = currency.lower()
        if capture_method not in CAPTURE_METHODS:
            raise _invalid(
                f"capture_method must be one of {', '.join(sorted(CAPTURE_METHODS))}",
                "capture_method",
            )
        if offline_behavior not in OFFLINE_BEHAVIORS:
            raise _invalid(
                f"offline_behavior must be one of {', '.join(sorted(OFFLINE_BEHAVIORS))}",
                "offline_behavior",
            )
        # Stripe's limits, checked before anything is stored: metadata is kept in the clear
        # in the vault and at the cloud, so a card number in it is refused here.
        problem = metadata_limits.problem(dict(metadata or {}))
        if problem is not None:
            raise _invalid(*problem)
        local_id = new_local_id(lambda: self.rng.getrandbits(128))
        created: dict[str, Any] | None = None
        if self._goes_online(offline_behavior):
            payment = OnlinePayment(
                amount=amount,
                currency=currency,
                capture_method=capture_method,
                metadata=dict(metadata or {}),
                description=description,
                local_id=local_id,
            )
            created = self._create_online(payment, offline_behavior)
        if created is None:
            context = self._offline_context(offline_behavior)
            try:
                check_amount(amount, currency, offline_currencies=None, policy=context.policy)
            except RuleError as exc:
                raise ReaderError.from_rule(exc) from None
        intent = LocalIntent(
            local_id=local_id,
            account=session.account,
            amount=amount,
            currency=currency,
            capture_method=capture_method,
            metadata=dict(metadata or {}),
            description=description,
            offline_behavior=offline_behavior,
            created=self.clock.now(),
            payment_intent=created,
        )
        if created is not None:
            intent.status = str(created["status"])
        with self._lock:
            self._intents[intent.local_id] = intent
            while len(self._intents) > _MAX_INTENTS:
                self._intents.popitem(last=False)
        return intent.as_dict()

    def _goes_online(self, offline_behavior: str) -> bool:
        """Whether a new PaymentIntent is asked of the cloud first.

        `require_online` always tries (as Stripe's SDKs do, whatever the network status says);
        `prefer_online` when the cloud was reachable at the latest check, or when the payment
        could not be taken offline anyway; `force_offline` never.
        """
        if offline_behavior == "require_online":
            return True
        if offline_behavior != "prefer_online":
            return False
        context = self.state.context
        return self._online or context is None or not context.offline_enabled

    def _create_online(
        self, payment: OnlinePayment, offline_behavior: str
    ) -> dict[str, Any] | None:
        """The PaymentIntent the cloud created; None when it cannot be reached (prefer_online).

        Creating is safe to lose: a PaymentIntent nobody confirms is never charged.
        """
        identity = self.state.identity
        if identity is None:
            raise ReaderError(ErrorCode.MISSING_PREREQUISITE, "The reader is not registered.")
        try:
            return dict(self.link.create_payment_intent(identity.device_key, payment))
        except CloudUnreachable:
            if offline_behavior == "require_online":
                raise ReaderError(
                    ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET,
                    "The cloud cannot be reached and the PaymentIntent requires online "
                    "processing. Retry when online, or use prefer_online.",
                ) from None
            self._cloud_lost()
            return None
        except CloudRefused as exc:
            raise _from_cloud(exc, "The cloud refused the PaymentIntent") from None

    def _cloud_lost(self) -> None:
        """A call found the cloud gone: check now, so status and later payments know."""
        check = self.connectivity_check
        if check is not None:
            check()  # the monitor reports the change through set_online
        else:
            self.set_online(False)

    def _offline_context(self, offline_behavior: str) -> CachedContext:
        """The context an offline payment is taken under, or why none may be taken now."""
        context = self.state.context
        if offline_behavior == "require_online":
            raise ReaderError(ErrorCode.NOT_CONNECTED_TO_INTERNET_AND_REQUIRE_ONLINE_SET)
        if offline_behavior == "force_offline":
            if context is None or not context.offline_enabled:
                raise ReaderError(ErrorCode.FORCE_OFFLINE_WITH_FEATURE_DISABLED)
            return context
        if context is None or not context.offline_enabled:
            raise ReaderError(
                ErrorCode.STRIPE_API_CONNECTION_ERROR,
                "The cloud cannot be reached and offline payments are not enabled on this "
                "reader's Configuration.",
            )
        return context

    def _intent(self, session: Session, local_id: str) -> LocalIntent:
        """The session's intent by its `local_id`, or by its cloud id (`pi_...`)."""
        with self._lock:
            intent = self._intents.get(local_id)
            if intent is None and local_id.startswith("pi_"):
                intent = next((i for i in self._intents.values() if i.id == local_id), None)
        if intent is None or intent.account != session.account:
            raise ReaderError(
                ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND,
                f"No PaymentIntent {local_id!r} on this reader. Create a new PaymentIntent.",
                param="local_id",
            )
        return intent

    def collect(self, token: str | None, local_id: str, card: Presentment) -> dict[str, Any]:
        """Read the presented card for the intent; offline, apply the offline card rules."""
        session = self.session(token)
        intent = self._intent(session, local_id)
        if intent.stored is not None or intent.status not in _COLLECTABLE:
            raise _invalid(f"This PaymentIntent is {intent.status}.", "local_id")
        now = self.clock.now()
        reading = read_card(
            card, amount=intent.amount, currency=intent.currency, now=now, rng=self.rng
        )
        if intent.payment_intent is None:
            # Online, the issuer decides; a payment that falls back offline is checked then.
            self._check_card(reading, now)
        with self._lock:
            intent.reading = reading
            intent.details = card_present_details(reading.card)
            intent.status = "requires_confirmation"
            return intent.as_dict()

    def _check_card(self, reading: CardReading, now: float) -> None:
        """The offline card rules (`rules.check_card`), as a `ReaderError`."""
        context = self.state.context
        day = datetime.fromtimestamp(now, UTC)
        try:
            check_card(
                brand=reading.brand,
                read_method=reading.card.read_method,
                cvm=reading.cvm,
                exp_month=reading.card.exp_month,
                exp_year=reading.card.exp_year,
                location_country=None if context is None else context.country,
                now_year=day.year,
                now_month=day.month,
            )
        except RuleError as exc:
            raise ReaderError.from_rule(exc) from None

    def confirm(self, token: str | None, local_id: str) -> dict[str, Any]:
        """Confirm the collected payment.

        Created online: the cloud charges the card at once (a decline is
        `DECLINED_BY_STRIPE_API`). When the cloud does not answer, the card may or may not
        have been charged: a `prefer_online` payment is then stored offline under its
        PaymentIntent's id (forwarding settles it, never charging twice); a `require_online`
        one fails with `STRIPE_API_CONNECTION_ERROR` and may be confirmed again.
        Created offline: stored durably, then (only then) answered as succeeded.
        """
        session = self.session(token)
        intent = self._intent(session, local_id)
        with self._confirming:
            if intent.stored is not None or intent.status in _CHARGED:
                # A retried confirm (its answer was lost): the same payment, not a second one.
                return intent.as_dict()
            if intent.status == "canceled":
                raise _invalid("This PaymentIntent is canceled.", "local_id")
            reading = intent.reading
            if reading is None:
                raise _invalid("Collect a payment method before confirming.", "local_id")
            identity = self.state.identity
            context = self.state.context
            if identity is None or context is None:
                raise ReaderError(
                    ErrorCode.MISSING_PREREQUISITE,
                    "The reader has not reached the cloud since it was registered.",
                )
            if intent.payment_intent is None:
                answer, stored = self._store(intent, reading, identity, context, intent.local_id)
            elif intent.offline_behavior == "prefer_online" and not self._online:
                # The cloud went away since the create: offline now, under the cloud's id.
                answer, stored = self._store_unanswered(intent, reading, identity, context)
            else:
                confirmed = self._confirm_online(intent, reading, identity, context)
                if confirmed is not None:
                    return confirmed
                answer, stored = self._store_unanswered(intent, reading, identity, context)
        log.info("offline_payment_stored", sequence=stored.sequence, local_id=stored.local_id)
        self._emit_status()
        if self._online:
            self.forwarder.wake()
        return answer

    def _confirm_online(
        self,
        intent: LocalIntent,
        reading: CardReading,
        identity: Identity,
        context: CachedContext,
    ) -> dict[str, Any] | None:
        """Confirm at the cloud: the charged intent, or None when the cloud did not answer
        a `prefer_online` one. Caller holds `_confirming`."""
        pi_id = intent.id
        assert pi_id is not None
        try:
            read = seal_for_online(
                reading.card,
                SealingKey.from_document(context.sealing_key),
                account=intent.account,
                reader=identity.reader,
                amount=intent.amount,
                currency=intent.currency,
                capture_method=intent.capture_method,
            )
        except VaultConfigError as exc:
            raise ReaderError(
                ErrorCode.MISSING_PREREQUISITE, f"The cloud's sealing key is unusable: {exc}"
            ) from None
        except VaultInputError as exc:
            raise _invalid(f"The card read cannot be sent as given: {exc}") from None
        try:
            pi = dict(
                self.link.confirm_payment_intent(
                    identity.device_key, pi_id, sealed=read.sealed, display=read.display
                )
            )
        except CloudDeclined as exc:
            with self._lock:
                if exc.payment_intent is not None:
                    intent.payment_intent = dict(exc.payment_intent)
                intent.status = "requires_payment_method"
                intent.reading = None
                intent.details = None
                declined = intent.as_dict()
            log.info("online_payment_declined", payment_intent=pi_id, decline=exc.decline_code)
            raise ReaderError(
                ErrorCode.DECLINED_BY_STRIPE_API,
                exc.message,
                api_code=exc.code,
                decline_code=exc.decline_code,
                payment_intent=declined,
            ) from None
        except CloudRefused as exc:
            raise _from_cloud(exc, "The cloud refused the confirm") from None
        except CloudUnreachable:
            log.warning("online_confirm_unanswered", payment_intent=pi_id)
            if intent.offline_behavior == "require_online":
                raise ReaderError(
                    ErrorCode.STRIPE_API_CONNECTION_ERROR,
                    "The cloud did not answer the confirm, so whether the card was charged is "
                    "unknown. Confirm again once online (a charged PaymentIntent answers as "
                    "charged, never twice), or cancel it.",
                ) from None
            return None
        with self._lock:
            intent.payment_intent = pi
            intent.status = str(pi["status"])
            intent.reading = None
            answer = intent.as_dict()
        log.info("online_payment_confirmed", payment_intent=pi_id, status=intent.status)
        return answer

    def _store_unanswered(
        self,
        intent: LocalIntent,
        reading: CardReading,
        identity: Identity,
        context: CachedContext,
    ) -> tuple[dict[str, Any], StoredPayment]:
        """Keep offline a payment created online whose confirm went unanswered (or could not
        be sent), under its PaymentIntent's id: forwarding then confirms that PaymentIntent or
        answers how a lost confirm ended, never a second charge (`docs/reader-protocol.md`)."""
        pi_id = intent.id
        assert pi_id is not None
        try:
            if not context.offline_enabled:
                raise ReaderError(
                    ErrorCode.STRIPE_API_CONNECTION_ERROR, "Offline payments are not enabled."
                )
            self._check_card(reading, self.clock.now())
            return self._store(intent, reading, identity, context, pi_id)
        except ReaderError as exc:
            exc.message = (
                "The payment could not be confirmed online and cannot be kept offline: "
                f"{exc.message} Confirm again once online (a PaymentIntent charged already "
                "answers as charged, never twice), or cancel it."
            )
            exc.args = (exc.message,)
            raise

    def _store(
        self,
        intent: LocalIntent,
        reading: CardReading,
        identity: Identity,
        context: CachedContext,
        local_id: str,
    ) -> tuple[dict[str, Any], StoredPayment]:
        """Apply the offline limits and store the payment; caller holds `_confirming`."""
        self._sequence_checked()
        now = self.clock.now()
        # Uses are counted in the vault under a keyed hash of the number, in each payment's own
        # transaction, so the count is exact after a crash and costs no write of its own.
        card_tag = self.state.card_tag(reading.card.number)
        policy = context.policy
        try:
            check_amount(intent.amount, intent.currency, offline_currencies=None, policy=policy)
            summary = self.vault.summary()
            check_stored(
                intent.amount,
                intent.currency,
                policy=policy,
                stored_count=summary.count,
                stored_totals=summary.amounts,
                oldest_stored_at=summary.oldest_stored_at,
                # Counted only under a per-card limit: one indexed query saved per confirm.
                uses_of_card=(
                    0 if policy.max_uses_per_card is None else self.vault.card_uses(card_tag)
                ),
                now=now,
            )
        except RuleError as exc:
            raise ReaderError.from_rule(exc) from None
        except VaultError as exc:
            raise self._declined(exc) from None
        payment = OfflinePayment(
            account=intent.account,
            reader=identity.reader,
            amount=intent.amount,
            currency=intent.currency,
            capture_method=intent.capture_method,
            card=reading.card,
            metadata=intent.metadata,
            description=intent.description,
            local_id=local_id,
        )
        try:
            stored = self.vault.store(payment, card_tag=card_tag)
        except VaultFullError:
            raise ReaderError(ErrorCode.OFFLINE_PAYMENTS_DATABASE_TOO_LARGE) from None
        except VaultInputError as exc:
            raise _invalid(f"The payment cannot be stored as given: {exc}") from None
        except VaultConfigError as exc:
            raise ReaderError(
                ErrorCode.MISSING_PREREQUISITE,
                f"The reader cannot store offline payments yet: {exc}",
            ) from None
        except VaultError as exc:
            raise self._declined(exc) from None
        # Stored: from here on nothing may fail the answer.
        with self._lock:
            intent.stored = stored
            intent.reading = None
            intent.status = "requires_capture" if intent.capture_method == "manual" else "succeeded"
            answer = intent.as_dict()
        return answer, stored

    def _declined(self, exc: VaultError) -> ReaderError:
        kind = "a write failed" if isinstance(exc, VaultWriteError) else type(exc).__name__
        log.error("offline_payment_not_stored", error=str(exc))
        return ReaderError(
            ErrorCode.OFFLINE_TRANSACTION_DECLINED,
            f"The reader could not store the payment ({kind}); it is declined and nothing "
            "was kept. Try again, or take another form of payment.",
        )

    def cancel_payment_intent(self, token: str | None, intent_id: str) -> dict[str, Any]:
        """Cancel an intent not yet charged: at the cloud for one created online (a `pi_` id
        the reader no longer holds is asked of the cloud too), locally for an offline one."""
        session = self.session(token)
        try:
            intent: LocalIntent | None = self._intent(session, intent_id)
        except ReaderError:
            if not intent_id.startswith("pi_"):
                raise
            intent = None
        if intent is None:
            return _unheld(self._cloud_call("cancel", intent_id))
        with self._confirming:
            if intent.stored is not None:
                raise _invalid(
                    "This payment is stored on the reader and will be forwarded; cancel its "
                    "PaymentIntent from the backend once forwarded.",
                    "local_id",
                )
            if intent.status == "canceled":
                return intent.as_dict()
            if intent.id is not None:
                pi = dict(self._cloud_call("cancel", intent.id))
                with self._lock:
                    intent.payment_intent = pi
                    intent.status = str(pi["status"])
                    intent.reading = None
                    return intent.as_dict()
            with self._lock:
                intent.status = "canceled"
                intent.reading = None
                return intent.as_dict()

    def capture_payment_intent(
        self, token: str | None, intent_id: str, *, amount_to_capture: int | None = None
    ) -> dict[str, Any]:
        """Capture an authorized PaymentIntent at the cloud: one confirmed online, or one
        stored offline once forwarded (`requires_upload` false)."""
        session = self.session(token)
        try:
            intent: LocalIntent | None = self._intent(session, intent_id)
        except ReaderError:
            intent = None
        if intent is not None and intent.stored is not None:
            raise _invalid(
                "This payment is still stored on the reader: capture it once it is forwarded "
                "(requires_upload false).",
                "local_id",
            )
        pi_id = intent.id if intent is not None else intent_id
        if pi_id is None or not pi_id.startswith("pi_"):
            raise ReaderError(
                ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND,
                f"No PaymentIntent {intent_id!r} to capture: an offline one is captured by its "
                "cloud id once forwarded.",
                param="local_id",
            )
        pi = dict(self._cloud_call("capture", pi_id, amount_to_capture=amount_to_capture))
        if intent is not None:
            with self._lock:
                intent.payment_intent = pi
                intent.status = str(pi["status"])
                return intent.as_dict()
        return _unheld(pi)

    def _cloud_call(
        self, action: str, pi_id: str, *, amount_to_capture: int | None = None
    ) -> Mapping[str, Any]:
        """Cancel or capture at the cloud, its failures as `ReaderError`s."""
        identity = self.state.identity
        if identity is None:
            raise ReaderError(ErrorCode.MISSING_PREREQUISITE, "The reader is not registered.")
        try:
            if action == "cancel":
                return self.link.cancel_payment_intent(identity.device_key, pi_id)
            return self.link.capture_payment_intent(
                identity.device_key, pi_id, amount_to_capture=amount_to_capture
            )
        except CloudUnreachable:
            raise ReaderError(
                ErrorCode.STRIPE_API_CONNECTION_ERROR,
                f"The cloud cannot be reached to {action} the PaymentIntent; try again online.",
            ) from None
        except CloudRefused as exc:
            if exc.status == 404:
                raise ReaderError(
                    ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND,
                    f"The cloud has no PaymentIntent {pi_id!r} for this account.",
                    param="local_id",
                    api_code=exc.code,
                ) from None
            raise _from_cloud(exc, f"The cloud refused to {action} the PaymentIntent") from None

    # -- forwarding ----------------------------------------------------------------------------

    def forward_now(self) -> dict[str, Any]:
        """Wake the forwarder (it drains if there is anything to send)."""
        self.forwarder.wake()
        return {"started": self.registered}

    def _token_from_pos(self) -> str | None:
        """The forwarder's token source: ask the connected POS over its event stream."""
        with self._lock:
            session = self._session
            if session is None or not self._subscribers:
                return None
            request_id = "ctr_" + secrets.token_hex(12)
            request = _TokenRequest(session.token)
            self._token_requests[request_id] = request
        try:
            self._emit("connection_token_request", {"request_id": request_id})
            if not request.done.wait(self._token_wait):
                raise TokenUnavailable("the POS did not answer the connection token request")
            if request.error is not None:
                raise TokenUnavailable(request.error)
            return request.token
        finally:
            with self._lock:
                self._token_requests.pop(request_id, None)

    def answer_token_request(
        self,
        token: str | None,
        request_id: str,
        *,
        connection_token: str | None = None,
        error: str | None = None,
    ) -> None:
        """The POS's answer to a `connection_token_request` event."""
        session = self.session(token)
        if bool(connection_token) == bool(error):
            raise _invalid("Answer with a connection_token or an error (one of them).")
        with self._lock:
            request = self._token_requests.get(request_id)
            if request is None or request.session != session.token:
                raise _invalid("No connection token request with this id is waiting.", "request_id")
            request.token = connection_token
            request.error = None if error is None else f"the POS's token provider failed: {error}"
            request.done.set()

    def on_payment_forwarded(self, record: StoredPayment, outcome: ForwardOutcome) -> None:
        """The forwarder's listener: a record has its outcome and left the vault (and with it,
        its card's use)."""
        with self._lock:
            self._intents.pop(record.local_id, None)
            if record.local_id.startswith("pi_"):
                # Created online, kept offline: the reader knows it by its own local id.
                for key in [k for k, i in self._intents.items() if i.id == record.local_id]:
                    del self._intents[key]
        self._emit(
            "payment_intent_forwarded",
            {
                "local_id": record.local_id,
                "sequence": record.sequence,
                "status": outcome.status,
                "replayed": outcome.replayed,
                "payment_intent": None
                if outcome.payment_intent is None
                else dict(outcome.payment_intent),
                "error": None if outcome.error is None else dict(outcome.error),
            },
        )
        self._emit_status()

    def on_forwarding_failure(self, error: ForwardingError) -> None:
        """The forwarder's listener: an error not tied to one payment."""
        self._emit(
            "forwarding_failure",
            {"code": str(error.code), "message": error.message, "sequences": list(error.sequences)},
        )

    # -- status and events ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `GET /v1/status` shows."""
        identity = self.state.identity
        context = self.state.context
        with self._lock:
            session = self._session
        now = self.clock.now()
        error = self.forwarder.last_error
        return {
            "registered": identity is not None,
            "registration_code": self.registration_code,
            "reader": None if identity is None else identity.reader,
            "account": None if identity is None else identity.account,
            "location": None if context is None else context.location_id,
            "device_type": self.device_type,
            "serial_number": self.state.serial_number,
            "software_version": self.software_version,
            "network": "online" if self._online else "offline",
            "offline_enabled": context is not None and context.offline_enabled,
            "offline": self._offline_block(now)
            | {
                "next_retry_at": self.forwarder.next_retry_at,
                "forwarding": self.forwarder.busy,
                "last_error": None
                if error is None
                else {"code": str(error.code), "message": error.message},
            },
            "connected_pos": None if session is None else session.pos_id,
            "cloud_problem": self.cloud_problem,
            "sequence_check": {
                "checked": self._sequence_known and self._sequence_blocked is None,
                "blocked": self._sequence_blocked,
                "advanced": None
                if self._sequence_advanced is None
                else dict(self._sequence_advanced),
            },
        }

    def _offline_block(self, now: float) -> dict[str, Any]:
        try:
            summary = self.vault.summary()
        except VaultError as exc:
            return {"error": str(exc)}
        oldest = summary.oldest_stored_at
        return {
            "count": summary.count,
            "amounts": dict(summary.amounts),
            "oldest_stored_at": oldest,
            "oldest_age": None if oldest is None else max(now - oldest, 0.0),
            "quarantined": summary.quarantined,
            # Deleted records have no row to quarantine: report the gaps the vault's check at
            # open found, or nobody watching the reader would hear of them.
            "missing": self._missing_sequences(),
        }

    def _missing_sequences(self) -> list[int]:
        report = self.vault.last_report
        if report is None:
            return []
        return sorted(
            f.sequence for f in report.of_kind(FindingKind.MISSING) if f.sequence is not None
        )

    def subscribe(self, token: str | None, deliver: Deliver) -> Callable[[], None]:
        """Send this session's events to `deliver` (None ends the stream); returns unsubscribe.

        `deliver` is called from whichever thread emits, so it must only hand the event over.
        The first event is the current `offline_status`.
        """
        self.session(token)
        with self._lock:
            key = self._next_subscriber
            self._next_subscriber += 1
            self._subscribers[key] = deliver
        _safe(deliver, ("offline_status", self._offline_status()))
        if self._online:
            # Records waiting for a POS to vouch for them (no token source until now) go now:
            # nothing else wakes the forwarder while the cloud stays reachable.
            self.forwarder.wake()

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def _offline_status(self) -> dict[str, Any]:
        return {
            "network": "online" if self._online else "offline",
            "offline": self._offline_block(self.clock.now()),
        }

    def _emit_status(self) -> None:
        if self._subscribers:
            self._emit("offline_status", self._offline_status())

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        with self._lock:
            targets = list(self._subscribers.values())
        for deliver in targets:
            _safe(deliver, (name, data))


def _safe(deliver: Deliver, event: Event | None) -> None:
    try:
        deliver(event)
    except Exception:
        log.error("event_delivery_failed", exc_info=True)
