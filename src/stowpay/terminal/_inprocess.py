"""The reader's core run in the app's process: a simulated mobile reader (BLUETOOTH_SCAN) or
the reader the app itself runs on (HANDOFF, Apps on Devices).

The same `ReaderCore` as the smart reader's daemon, with its state and vault in the SDK's data
directory: the SDK itself stores the offline payments (`OfflineStatus.sdk`). It reaches the
cloud's device API at `api_base` like any reader, so it must be registered once (the merchant
registers the code `Reader.registration_code` shows, ``POST /v1/terminal/readers``).
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from ..reader.cloud_link import CloudRefused, CloudUnreachable, HttpCloudLink
from ..reader.connectivity import ConnectivityMonitor
from ..reader.core import ReaderCore, ReaderError
from ..reader.presentment import Presentment, PresentmentError
from ..reader.state import ReaderState, StateError
from ..reader.vault import Vault, VaultError, VaultLockedError
from ..wire.clock import Clock, SystemClock
from ..wire.terminal_codes import ErrorCode
from ._errors import TerminalException
from ._link import Deliver
from ._models import PaymentIntent

log = structlog.get_logger("stowpay.terminal.inprocess")

#: Device types of the in-process placements, as registered at the cloud.
MOBILE_DEVICE_TYPE = "stripe_m2"
HANDOFF_DEVICE_TYPE = "simulated_stripe_s700"

T = TypeVar("T")


class InProcessReader:
    """A reader core in this process, on `directory`, talking to the cloud at `api_base`."""

    def __init__(
        self,
        directory: Path,
        api_base: str,
        *,
        device_type: str,
        clock: Clock | None = None,
        heartbeat_interval: float = 10.0,
        offline_interval: float = 1.0,
        token_wait: float = 10.0,
    ) -> None:
        self.directory = directory
        self.device_type = device_type
        self._clock = clock if clock is not None else SystemClock()
        self._codes: list[str] = []
        try:
            self.state = ReaderState.open(directory, rng=random.Random())
        except StateError as exc:
            raise TerminalException(ErrorCode.UNEXPECTED_SDK_ERROR, str(exc)) from None
        try:
            self.vault = Vault.open(self.state.vault_dir, clock=self._clock)
        except VaultLockedError:
            raise TerminalException(
                ErrorCode.UNEXPECTED_SDK_ERROR,
                f"Another Terminal uses the data directory {directory}: give each app its own.",
            ) from None
        except VaultError as exc:
            raise TerminalException(
                ErrorCode.UNEXPECTED_SDK_ERROR, f"The offline store cannot be opened: {exc}"
            ) from None
        self._link = HttpCloudLink(api_base)
        self.core = ReaderCore(
            self.state,
            self.vault,
            self._link,
            clock=self._clock,
            device_type=device_type,
            on_registration_code=self._codes.append,
            token_wait=token_wait,
        )
        self.monitor = ConnectivityMonitor(
            self._heartbeat,
            on_change=self.core.set_online,
            interval=heartbeat_interval,
            offline_interval=offline_interval,
            clock=self._clock,
        )
        self.core.connectivity_check = self.monitor.check
        self._session: str | None = None
        self._checking = threading.Lock()
        self.core.start()
        self.monitor.start()

    # -- registration --------------------------------------------------------------------------

    def _heartbeat(self) -> object:
        if not self.core.registered:
            # Unregistered: the monitor must not count "no code yet" as the cloud being there.
            self.core.poll_registration()
            return None
        return self.core.heartbeat()

    @property
    def reader_id(self) -> str | None:
        """The cloud's id of this reader once registered."""
        identity = self.state.identity
        return None if identity is None else identity.reader

    @property
    def location(self) -> str | None:
        """The Location the reader was registered at (from the last heartbeat)."""
        context = self.state.context
        return None if context is None else context.location_id

    def registration_code(self) -> str | None:
        """The code to register this reader with, asking the cloud for one if need be."""
        if self.core.registered:
            return None
        with contextlib.suppress(CloudUnreachable, CloudRefused):
            self.core.poll_registration()
        return self.core.registration_code

    def ensure_registered(self) -> None:
        """One registration step; `MISSING_PREREQUISITE` (with the code) until registered."""
        if self.core.registered:
            return
        code = self.registration_code()
        if self.core.registered:
            return
        raise TerminalException(
            ErrorCode.MISSING_PREREQUISITE,
            "This reader is not registered yet"
            + (
                f": register it from your backend with the code {code} "
                "(POST /v1/terminal/readers registration_code=... location=...), then connect "
                "again."
                if code
                else ": the cloud must be reachable to get a registration code."
            ),
        )

    def recheck(self) -> None:
        """The SDK saw the network change: let the reader look again now (in the background)."""
        if not self._checking.acquire(blocking=False):
            return

        def run() -> None:
            try:
                self.monitor.check()
            finally:
                self._checking.release()

        threading.Thread(target=run, name="stowpay-terminal-recheck", daemon=True).start()

    # -- the ReaderLink calls ------------------------------------------------------------------

    def connect(
        self,
        *,
        pos_id: str,
        connection_token: str | None,
        pairing_secret: str | None,
        fail_if_in_use: bool,
    ) -> dict[str, Any]:
        """Open a session with the core."""
        answer = _call(
            lambda: self.core.connect(
                pos_id=pos_id,
                connection_token=connection_token,
                pairing_secret=pairing_secret,
                fail_if_in_use=fail_if_in_use,
            )
        )
        self._session = str(answer["session"])
        return answer

    def disconnect(self) -> None:
        """End the session."""
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(ReaderError):
                self.core.disconnect(session)

    def status(self) -> dict[str, Any]:
        """The core's status document."""
        return _call(self.core.status)

    def listen(self, deliver: Deliver) -> None:
        """Subscribe to the core's events (delivered from the core's threads)."""
        session = self._session
        _call(lambda: self.core.subscribe(session, deliver))

    def answer_token_request(
        self, request_id: str, *, connection_token: str | None, error: str | None
    ) -> None:
        """Answer the forwarder's token request."""
        session = self._session
        _call(
            lambda: self.core.answer_token_request(
                session, request_id, connection_token=connection_token, error=error
            )
        )

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a PaymentIntent on the core."""
        session = self._session
        return _call(lambda: self.core.create_payment_intent(session, **body))

    def collect(self, intent: str, card: dict[str, Any]) -> dict[str, Any]:
        """Read the simulated card for the intent."""
        session = self._session
        return _call(lambda: self.core.collect(session, intent, Presentment.from_request(card)))

    def confirm(self, intent: str) -> dict[str, Any]:
        """Confirm the intent."""
        session = self._session
        return _call(lambda: self.core.confirm(session, intent))

    def cancel(self, intent: str) -> dict[str, Any]:
        """Cancel the intent."""
        session = self._session
        return _call(lambda: self.core.cancel_payment_intent(session, intent))

    def capture(self, intent: str, amount: int | None) -> dict[str, Any]:
        """Capture a forwarded or online intent."""
        session = self._session
        return _call(
            lambda: self.core.capture_payment_intent(session, intent, amount_to_capture=amount)
        )

    def close(self) -> None:
        """Stop the core and close its vault (the payments stay stored on disk)."""
        self.disconnect()
        self.monitor.stop()
        self.core.close()
        with contextlib.suppress(VaultError):
            self.vault.close()
        self._link.close()


def _call(work: Callable[[], T]) -> T:
    try:
        return work()
    except ReaderError as exc:
        raise TerminalException(
            exc.code,
            exc.message,
            decline_code=exc.decline_code,
            payment_intent=None
            if exc.payment_intent is None
            else PaymentIntent._from_wire(exc.payment_intent),
            api_error_code=exc.api_code,
        ) from None
    except PresentmentError as exc:
        raise TerminalException(ErrorCode.INVALID_REQUIRED_PARAMETER, exc.message) from None
