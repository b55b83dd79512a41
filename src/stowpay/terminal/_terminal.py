"""`Terminal`: the POS app's handle on readers, payments and offline status.

Blocking calls, each with a timeout. Three threads of the SDK's own run beside the app's:
the cloud probe (network status), the reader's event stream (smart readers), and the
listener thread that calls the app's `OfflineListener` one event at a time, in order. The
listener thread also answers the reader's ``connection_token_request`` events by calling the
app's `ConnectionTokenProvider`: that is how the reader forwards stored payments with the
app's credentials, with no call from the app.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx2 as httpx
import structlog

from ..wire.terminal_codes import ErrorCode
from ._connectivity import CloudProbe
from ._errors import TerminalException
from ._inprocess import HANDOFF_DEVICE_TYPE, MOBILE_DEVICE_TYPE, InProcessReader
from ._link import ReaderEvent, ReaderLink
from ._listener import ConnectionTokenProvider, OfflineListener
from ._models import (
    CollectConfiguration,
    CreateConfiguration,
    DiscoveryConfiguration,
    DiscoveryMethod,
    NetworkStatus,
    OfflineDetails,
    OfflineStatus,
    OfflineStatusDetails,
    PaymentIntent,
    PaymentIntentParameters,
    Reader,
    SimulatedCard,
    _details_from_wire,
)
from ._risk import OfflineRiskPolicy
from ._store import SdkStore, StoreError
from ._transport import USER_AGENT, LanReader

log = structlog.get_logger("stowpay.terminal")

#: Where the SDK keeps its state when the app does not say.
DEFAULT_DATA_DIR = Path.home() / ".stowpay" / "terminal"
DEFAULT_API_BASE = "http://127.0.0.1:4242"
#: Confirmed offline payments remembered in memory, to describe them when forwarded.
_MAX_REMEMBERED = 10_000

_Job = Callable[[], None]


class Terminal:
    """The Terminal SDK: discover and connect a reader, take payments online or offline.

    `token_provider` fetches connection tokens from the app's backend; `offline_listener`
    hears of network changes and forwarded payments. `api_base` is the cloud
    (default: ``$STOWPAY_API_BASE``, else ``http://127.0.0.1:4242``); `data_dir` holds what the
    SDK must remember across runs (pairings with readers, the readers of the last discovery,
    and the offline payments of in-process readers). `offline_risk_policy` turns payments
    over its limits into REQUIRE_ONLINE. `request_timeout` bounds every call to a reader.
    """

    def __init__(
        self,
        token_provider: ConnectionTokenProvider,
        offline_listener: OfflineListener | None = None,
        *,
        api_base: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        offline_risk_policy: OfflineRiskPolicy | None = None,
        request_timeout: float = 30.0,
        probe_interval: float = 0.5,
        probe_timeout: float = 1.5,
    ) -> None:
        base = api_base or os.environ.get("STOWPAY_API_BASE") or DEFAULT_API_BASE
        if not base.startswith(("http://", "https://")):
            raise TerminalException(
                ErrorCode.INVALID_REQUIRED_PARAMETER,
                f"api_base must be an http:// or https:// URL, not {base!r}.",
            )
        self.api_base = base.rstrip("/")
        self.token_provider = token_provider
        self.offline_listener = offline_listener or OfflineListener()
        self.offline_risk_policy = offline_risk_policy
        #: the card the simulated reader reads at the next collect (default: a Visa test card)
        self.simulated_card: SimulatedCard | None = None
        self._timeout = request_timeout
        try:
            self._store = SdkStore(Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR)
        except StoreError as exc:
            raise TerminalException(ErrorCode.UNEXPECTED_SDK_ERROR, str(exc)) from None
        self._lock = threading.RLock()
        self._link: ReaderLink | None = None
        self._reader: Reader | None = None
        self._session: object | None = None
        self._reader_status: OfflineStatusDetails | None = None
        self._inprocess: dict[DiscoveryMethod, InProcessReader] = {}
        self._confirmed: OrderedDict[str, PaymentIntent] = OrderedDict()
        #: local id -> cloud id of every payment reported forwarded (each reported once)
        self._forwarded: OrderedDict[str, str | None] = OrderedDict()
        self._last_status: OfflineStatus | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._cloud = httpx.Client(timeout=request_timeout, headers={"User-Agent": USER_AGENT})
        self._listener_thread = threading.Thread(
            target=self._run_jobs, name="stowpay-terminal-listener", daemon=True
        )
        self._listener_thread.start()
        self._probe = CloudProbe(
            self.api_base,
            on_change=lambda status: self._enqueue(lambda: self._network_changed(status)),
            interval=probe_interval,
            timeout=probe_timeout,
        )
        self._probe.start()

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect, stop the SDK's threads and close in-process readers (payments stay
        stored on disk and are forwarded when the app runs again)."""
        if self._closed:
            return
        self._closed = True
        self.disconnect_reader()
        self._probe.close()
        with self._lock:
            readers = list(self._inprocess.values())
            self._inprocess.clear()
        for reader in readers:
            reader.close()
        self._jobs.put(None)
        if threading.current_thread() is not self._listener_thread:
            self._listener_thread.join(10)
        self._cloud.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connected_reader(self) -> Reader | None:
        """The reader connected now, or None."""
        return self._reader

    # -- discovery -----------------------------------------------------------------------------

    def discover_readers(self, config: DiscoveryConfiguration | None = None) -> list[Reader]:
        """The readers the app may connect to.

        INTERNET: the account's readers (at `config.location` if given) from the cloud, with
        their LAN address; offline, the readers of the last online discovery, network status
        UNKNOWN (an empty list if there never was one). BLUETOOTH_SCAN (``simulated=True``)
        and HANDOFF: the one in-process reader of that kind.
        """
        config = config or DiscoveryConfiguration()
        self._check_open()
        if config.method is DiscoveryMethod.BLUETOOTH_SCAN and not config.simulated:
            raise TerminalException(
                ErrorCode.INVALID_REQUIRED_PARAMETER,
                "This SDK has no Bluetooth radio: discover a simulated mobile reader with "
                "DiscoveryConfiguration(method=DiscoveryMethod.BLUETOOTH_SCAN, simulated=True).",
            )
        if config.method is not DiscoveryMethod.INTERNET:
            return [self._describe_inprocess(config.method, self._open_inprocess(config.method))]
        return self._discover_internet(config)

    def _discover_internet(self, config: DiscoveryConfiguration) -> list[Reader]:
        location = config.location
        if self._probe.status is NetworkStatus.OFFLINE:
            return self._store.cached_readers(location)
        token = self._fetch_token()
        body: dict[str, Any] = {"connection_token": token}
        if location is not None:
            body["location"] = location
        try:
            response = self._cloud.post(
                self.api_base + "/device/v1/discover", json=body, timeout=config.timeout
            )
        except httpx.HTTPError:
            self._probe.report(False)
            return self._store.cached_readers(location)
        if response.status_code >= 500 or response.status_code == 429:
            self._probe.report(False)
            return self._store.cached_readers(location)
        self._probe.report(True)
        doc = _json(response)
        if response.status_code >= 400:
            raise _cloud_refusal(response.status_code, doc, "discover readers")
        raw = doc.get("readers") if doc is not None else None
        if not isinstance(raw, list):
            raise TerminalException(
                ErrorCode.STRIPE_API_ERROR,
                f"The cloud at {self.api_base} answered discovery with something that is not "
                "a list of readers.",
            )
        readers = [_reader_from_cloud(r) for r in raw if isinstance(r, Mapping)]
        try:
            self._store.save_readers(location, readers)
        except StoreError as exc:
            log.warning("reader_cache_not_saved", error=str(exc))
        return readers

    def _open_inprocess(self, method: DiscoveryMethod) -> InProcessReader:
        with self._lock:
            reader = self._inprocess.get(method)
            if reader is None:
                kind = "mobile" if method is DiscoveryMethod.BLUETOOTH_SCAN else "handoff"
                reader = InProcessReader(
                    self._store.reader_dir(kind),
                    self.api_base,
                    device_type=MOBILE_DEVICE_TYPE
                    if method is DiscoveryMethod.BLUETOOTH_SCAN
                    else HANDOFF_DEVICE_TYPE,
                )
                self._inprocess[method] = reader
            return reader

    def _describe_inprocess(self, method: DiscoveryMethod, reader: InProcessReader) -> Reader:
        mobile = method is DiscoveryMethod.BLUETOOTH_SCAN
        return Reader(
            id=reader.reader_id,
            label="Simulated mobile reader" if mobile else "This device",
            device_type=reader.device_type,
            serial_number=reader.state.serial_number,
            location=reader.location,
            network_status=NetworkStatus.ONLINE if reader.core.online else NetworkStatus.OFFLINE,
            discovery_method=method,
            simulated=mobile,
            registration_code=reader.registration_code(),
        )

    # -- connecting ----------------------------------------------------------------------------

    def connect_reader(
        self, reader: Reader, location: str | None = None, *, fail_if_in_use: bool = False
    ) -> Reader:
        """Connect to `reader`; the reader as connected.

        Online, with a fresh connection token from the provider (the reader hands back a
        pairing secret the SDK keeps). Offline, with that pairing secret, under the offline
        rules: the same reader type connected online at this Location within 30 days,
        software checked within 30 days. A connected reader is disconnected first, so this
        also reconnects after the reader restarted. `location`, when given, must be the
        reader's Location.
        """
        self._check_open()
        with self._lock:
            self.disconnect_reader()
            link, key = self._link_for(reader)
            try:
                answer = self._open_session(link, key, fail_if_in_use)
                status = link.status()
            except BaseException:
                if reader.lan_url is not None:
                    link.close()
                raise
            connected_location = answer.get("location")
            if location is not None and connected_location not in (None, location):
                link.disconnect()
                if reader.lan_url is not None:
                    link.close()
                raise TerminalException(
                    ErrorCode.INVALID_REQUIRED_PARAMETER,
                    f"This reader is registered at {connected_location}, not at {location}: "
                    "connect to a reader of this Location, or register this one here.",
                )
            connected = replace(
                reader,
                id=_text(status.get("reader")) or reader.id,
                device_type=_text(status.get("device_type")) or reader.device_type,
                serial_number=_text(status.get("serial_number")) or reader.serial_number,
                location=_text(connected_location) or reader.location,
                network_status=_details_from_wire(status.get("network"), None).network_status,
                registration_code=None,
            )
            # Events are matched to this session, not to the link: an in-process reader is
            # the same object from one session to the next.
            session = object()
            self._link, self._reader, self._session = link, connected, session
            self._reader_status = (
                _details_from_wire(status.get("network"), status.get("offline"))
                if reader.lan_url is not None
                else None
            )
            link.listen(
                lambda event: self._enqueue(lambda: self._reader_event(link, session, event))
            )
        log.info("reader_connected", reader=connected.id, offline=answer.get("offline"))
        self._enqueue(self._status_maybe_changed)
        return connected

    def _link_for(self, reader: Reader) -> tuple[ReaderLink, str]:
        if reader.discovery_method is not DiscoveryMethod.INTERNET:
            inprocess = self._open_inprocess(reader.discovery_method)
            if self._probe.status is not NetworkStatus.OFFLINE:
                inprocess.ensure_registered()
            return inprocess, f"{reader.discovery_method.value}:{inprocess.reader_id}"
        if reader.lan_url is None:
            raise TerminalException(
                ErrorCode.INVALID_REQUIRED_PARAMETER,
                "This reader has no LAN address: discover it with discover_readers while online.",
            )
        return LanReader(reader.lan_url, timeout=self._timeout), reader.id or reader.lan_url

    def _open_session(self, link: ReaderLink, key: str, fail_if_in_use: bool) -> dict[str, Any]:
        pairing = self._store.pairing_secret(key)
        token: str | None = None
        if self._probe.status is not NetworkStatus.OFFLINE:
            try:
                token = self._fetch_token()
            except TerminalException:
                if pairing is None:
                    raise
                # The backend is out of reach too: the pairing secret still connects offline.
        if token is None and pairing is None:
            raise TerminalException(
                ErrorCode.READER_CONNECTION_NOT_AVAILABLE_OFFLINE,
                "This POS has never connected to this reader online: connect once while the "
                "cloud is reachable, then it can connect offline.",
            )
        answer = link.connect(
            pos_id=self._store.pos_id,
            connection_token=token,
            pairing_secret=pairing,
            fail_if_in_use=fail_if_in_use,
        )
        secret = answer.get("pairing_secret")
        if isinstance(secret, str) and secret != pairing:
            try:
                self._store.save_pairing(key, secret)
            except StoreError as exc:
                log.warning("pairing_not_saved", error=str(exc))
        return answer

    def disconnect_reader(self) -> None:
        """Disconnect the reader (nothing happens when none is connected). A smart reader
        keeps its stored payments and forwards them when a POS connects again."""
        with self._lock:
            link, self._link, self._reader = self._link, None, None
            self._reader_status, self._session = None, None
        if link is None:
            return
        link.disconnect()
        if isinstance(link, LanReader):
            link.close()
        self._enqueue(self._status_maybe_changed)

    # -- payments ------------------------------------------------------------------------------

    def create_payment_intent(
        self, params: PaymentIntentParameters, config: CreateConfiguration | None = None
    ) -> PaymentIntent:
        """Create a PaymentIntent: online a real one (with `id`), offline a local one (`id`
        None) the reader forwards later. The offline behaviour (and the risk policy, if any)
        decides which may be taken."""
        config = config or CreateConfiguration()
        behavior = config.offline_behavior
        if self.offline_risk_policy is not None:
            behavior = self.offline_risk_policy.offline_behavior(
                params, self.get_offline_status(), behavior
            )
        body: dict[str, Any] = {
            "amount": params.amount,
            "currency": params.currency,
            "capture_method": params.capture_method,
            "metadata": dict(params.metadata),
            "offline_behavior": behavior.value,
        }
        if params.description is not None:
            body["description"] = params.description
        return PaymentIntent._from_wire(self._require_link().create(body))

    def collect_payment_method(
        self, payment_intent: PaymentIntent, config: CollectConfiguration | None = None
    ) -> PaymentIntent:
        """Read the card (`simulated_card`, else a Visa test card) for the PaymentIntent.

        Offline the reader applies the offline card rules (no swipe, no Interac, no online
        PIN, no tap in SCA markets, not expired); `payment_method` stays absent offline.
        """
        card = self.simulated_card or SimulatedCard()
        doc = self._require_link().collect(_reader_ref(payment_intent), card._wire())
        return PaymentIntent._from_wire(doc)

    def confirm_payment_intent(self, payment_intent: PaymentIntent) -> PaymentIntent:
        """Confirm: online the cloud authorizes it; offline the reader stores it durably
        first, then answers `succeeded` (automatic capture) or `requires_capture` (manual)
        with `offline_details.requires_upload` True. Declines raise DECLINED_BY_STRIPE_API
        with the `decline_code` and the PaymentIntent."""
        link = self._require_link()
        confirmed = PaymentIntent._from_wire(link.confirm(_reader_ref(payment_intent)))
        if confirmed.offline_details is not None and confirmed.local_id is not None:
            with self._lock:
                self._confirmed[confirmed.local_id] = confirmed
                while len(self._confirmed) > _MAX_REMEMBERED:
                    self._confirmed.popitem(last=False)
            self._refresh_reader_status(link)
        return confirmed

    def cancel_payment_intent(self, payment_intent: PaymentIntent) -> PaymentIntent:
        """Cancel a PaymentIntent not yet paid. A payment stored offline cannot be canceled
        before it is forwarded: cancel (or refund) it from the backend afterwards."""
        details = payment_intent.offline_details
        if (
            details is not None
            and details.requires_upload
            and payment_intent.status in ("succeeded", "requires_capture")
        ):
            raise TerminalException(
                ErrorCode.INVALID_REQUIRED_PARAMETER,
                "This payment is stored offline: it can be canceled only once forwarded "
                "(after on_payment_intent_forwarded), from the backend.",
            )
        ref = payment_intent.id or payment_intent.local_id
        if ref is None:
            raise _no_ref()
        return PaymentIntent._from_wire(self._require_link().cancel(ref))

    def capture_payment_intent(
        self, payment_intent: PaymentIntent, amount_to_capture: int | None = None
    ) -> PaymentIntent:
        """Capture a `requires_capture` PaymentIntent: online ones at once, offline ones once
        forwarded (`requires_upload` False, or after `on_payment_intent_forwarded`)."""
        ref = payment_intent.id
        if ref is None and payment_intent.local_id is not None:
            ref = self._forwarded.get(payment_intent.local_id)
        if ref is None:
            raise TerminalException(
                ErrorCode.INVALID_REQUIRED_PARAMETER,
                "This payment is stored offline and not forwarded yet: capture it once "
                "on_payment_intent_forwarded has given its id (requires_upload False).",
            )
        return PaymentIntent._from_wire(self._require_link().capture(ref, amount_to_capture))

    # -- status --------------------------------------------------------------------------------

    def get_offline_status(self) -> OfflineStatus:
        """The SDK's network status and stored payments, and the connected smart reader's."""
        count = 0
        amounts: dict[str, int] = {}
        with self._lock:
            inprocess = list(self._inprocess.values())
            reader = self._reader_status
        for ip in inprocess:
            details = _details_from_wire(None, ip.core.status().get("offline"))
            count += details.offline_payments_count
            for currency, amount in details.offline_payment_amounts_by_currency.items():
                amounts[currency] = amounts.get(currency, 0) + amount
        sdk = OfflineStatusDetails(
            network_status=self._probe.status,
            offline_payments_count=count,
            offline_payment_amounts_by_currency=amounts,
        )
        return OfflineStatus(sdk=sdk, reader=reader)

    @property
    def offline_status(self) -> OfflineStatus:
        """The same as `get_offline_status()`."""
        return self.get_offline_status()

    # -- inside --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TerminalException(
                ErrorCode.UNEXPECTED_SDK_ERROR, "This Terminal is closed: make a new one."
            )

    def _require_link(self) -> ReaderLink:
        self._check_open()
        link = self._link
        if link is None:
            raise TerminalException(
                ErrorCode.NOT_CONNECTED_TO_READER,
                "No reader is connected: discover_readers, then connect_reader.",
            )
        return link

    def _fetch_token(self) -> str:
        try:
            token = self.token_provider.fetch_connection_token()
        except Exception as exc:
            raise TerminalException(
                ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR,
                f"The connection token provider failed ({type(exc).__name__}: {exc}): check "
                "that the app's backend is reachable and creates connection tokens.",
            ) from exc
        if not isinstance(token, str) or not token:
            raise TerminalException(
                ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR,
                "The connection token provider returned no token: return the token's secret.",
            )
        return token

    def _refresh_reader_status(self, link: ReaderLink) -> None:
        """Read the smart reader's counts now, so they are exact as soon as a call returns."""
        if not isinstance(link, LanReader):
            self._enqueue(self._status_maybe_changed)
            return
        try:
            status = link.status()
        except TerminalException:
            return
        with self._lock:
            if self._link is link:
                self._reader_status = _details_from_wire(
                    status.get("network"), status.get("offline")
                )
        self._enqueue(self._status_maybe_changed)

    # -- the listener thread -------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        self._jobs.put(job)

    def _run_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.error("terminal_listener_job_failed", exc_info=True)

    def _network_changed(self, status: NetworkStatus) -> None:
        with self._lock:
            inprocess = list(self._inprocess.values())
        for reader in inprocess:
            reader.recheck()
        self._status_maybe_changed()

    def _status_maybe_changed(self) -> None:
        if self._closed:
            return
        status = self.get_offline_status()
        if status == self._last_status:
            return
        self._last_status = status
        _safely(lambda: self.offline_listener.on_offline_status_change(status))

    def _reader_event(self, link: ReaderLink, session: object, event: ReaderEvent | None) -> None:
        if session is not self._session:
            return  # an event of a session that has since ended
        if event is None:
            log.info("reader_session_ended")
            with self._lock:
                if self._session is session:
                    self._link, self._reader, self._reader_status = None, None, None
                    self._session = None
            if isinstance(link, LanReader):
                link.close()
            self._status_maybe_changed()
            return
        name, data = event
        if name == "offline_status":
            if isinstance(link, LanReader):
                with self._lock:
                    if self._session is session:
                        self._reader_status = _details_from_wire(
                            data.get("network"), data.get("offline")
                        )
            self._status_maybe_changed()
        elif name == "payment_intent_forwarded":
            self._forwarded_event(data)
        elif name == "forwarding_failure":
            error = _exception(data.get("code"), data.get("message"))
            _safely(lambda: self.offline_listener.on_forwarding_failure(error))
        elif name == "connection_token_request":
            self._answer_token_request(link, data)

    def _answer_token_request(self, link: ReaderLink, data: Mapping[str, Any]) -> None:
        request_id = data.get("request_id")
        if not isinstance(request_id, str):
            return
        token: str | None = None
        error: str | None = None
        try:
            token = self._fetch_token()
        except TerminalException as exc:
            error = exc.message
        try:
            link.answer_token_request(request_id, connection_token=token, error=error)
        except TerminalException as exc:
            log.info("token_answer_not_delivered", code=exc.code.value)

    def _forwarded_event(self, data: Mapping[str, Any]) -> None:
        local_id = data.get("local_id")
        if not isinstance(local_id, str):
            return
        with self._lock:
            if local_id in self._forwarded:
                return  # told once already (a replayed outcome)
            memo = self._confirmed.pop(local_id, None)
        doc = data.get("payment_intent")
        if isinstance(doc, Mapping):
            pi = PaymentIntent._from_wire(doc)
            stored = memo.offline_details if memo is not None else None
            pi = replace(
                pi,
                local_id=local_id,
                metadata=pi.metadata or (memo.metadata if memo is not None else {}),
                offline_details=replace(stored, requires_upload=False)
                if stored is not None
                else OfflineDetails(None, False, None),
            )
        elif memo is not None:
            details = memo.offline_details
            pi = replace(
                memo,
                offline_details=replace(details, requires_upload=False)
                if details is not None
                else None,
            )
        else:
            pi = PaymentIntent(
                id=None,
                amount=0,
                currency="",
                status="requires_payment_method",
                capture_method="automatic",
                metadata={},
                local_id=local_id,
                offline_details=OfflineDetails(None, False, None),
            )
        with self._lock:
            self._forwarded[local_id] = pi.id
            while len(self._forwarded) > _MAX_REMEMBERED:
                self._forwarded.popitem(last=False)
        error = _forward_error(data)
        _safely(lambda: self.offline_listener.on_payment_intent_forwarded(pi, error))


def _forward_error(data: Mapping[str, Any]) -> TerminalException | None:
    status = data.get("status")
    if status == "approved":
        return None
    raw = data.get("error")
    error: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    message = error.get("message")
    if status == "declined":
        decline = error.get("decline_code") or error.get("code")
        return TerminalException(
            ErrorCode.DECLINED_BY_STRIPE_API,
            str(message) if message else "The issuer declined the payment when it was forwarded.",
            decline_code=str(decline) if decline else None,
            api_error_code=_text(error.get("code")),
        )
    return TerminalException(
        ErrorCode.STRIPE_API_ERROR,
        "The cloud refused the stored payment for good; it will not be charged"
        + (f": {message}" if message else "."),
        api_error_code=_text(error.get("code")),
    )


def _exception(code: object, message: object) -> TerminalException:
    try:
        error_code = ErrorCode(str(code))
    except ValueError:
        error_code = ErrorCode.UNEXPECTED_SDK_ERROR
    return TerminalException(error_code, str(message) if message else None)


def _safely(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:
        log.error("offline_listener_failed", exc_info=True)


def _reader_ref(payment_intent: PaymentIntent) -> str:
    ref = payment_intent.local_id or payment_intent.id
    if ref is None:
        raise _no_ref()
    return ref


def _no_ref() -> TerminalException:
    return TerminalException(
        ErrorCode.OFFLINE_PAYMENT_INTENT_NOT_FOUND,
        "This PaymentIntent was not made by this SDK: create it with create_payment_intent.",
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        doc = response.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _cloud_refusal(status: int, doc: Mapping[str, Any] | None, what: str) -> TerminalException:
    raw = doc.get("error") if doc is not None else None
    error: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    code = _text(error.get("code"))
    message = _text(error.get("message")) or f"the cloud answered {status}"
    if code in ("connection_token_invalid", "account_mismatch"):
        return TerminalException(
            ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR,
            f"The cloud refused the connection token ({code}): {message}",
            api_error_code=code,
        )
    return TerminalException(
        ErrorCode.STRIPE_API_ERROR,
        f"The cloud refused to {what} ({code or status}): {message}",
        api_error_code=code,
    )


def _reader_from_cloud(doc: Mapping[str, Any]) -> Reader:
    status = doc.get("status")
    return Reader(
        id=_text(doc.get("id")),
        label=_text(doc.get("label")),
        device_type=_text(doc.get("device_type")),
        serial_number=_text(doc.get("serial_number")),
        location=_text(doc.get("location")),
        network_status=NetworkStatus.ONLINE
        if status == "online"
        else NetworkStatus.OFFLINE
        if status == "offline"
        else NetworkStatus.UNKNOWN,
        ip_address=_text(doc.get("ip_address")),
        lan_url=_text(doc.get("lan_url")),
        discovery_method=DiscoveryMethod.INTERNET,
    )
