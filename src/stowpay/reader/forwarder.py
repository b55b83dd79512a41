"""The forwarder: hands the vault's stored payments to the cloud, each exactly once.

Records go in sequence order, `batch_size` to a request (one `CloudLink.forward` call). A record
leaves the vault only after the cloud's outcome for it is in hand (approved, declined or
rejected); listeners hear of it only after that removal committed. When the answer is unknown
(`CloudUnreachable`: no connection, a timeout, a 5xx) everything stays and is sent again later
under the same forward keys, so the cloud answers a repeat from its permanent record and never
charges twice.

After a failed attempt the next one waits for an exponential backoff with full jitter: a
random delay in ``[0, min(max_delay, base_delay * 2**(failures - 1))]`` from the injected
random source, measured on the injected clock; any accepted batch resets it. `Forwarder.wake`
skips the wait (a new record, the cloud reachable again, `forward_now`).

Who may forward (Stripe's way): with a POS connected, `token_source` gives a fresh connection
token per request and the cloud checks that it is of the reader's account. With no POS
connected the records wait, unless the reader runs *unattended* (then the device key alone is
used). Records of another account than the device's are never sent.

One request is in flight at a time, in sequence order. While the cloud works on a batch, the
forwarder removes the batch answered before it and reads the next one from the vault (the
request itself runs on a helper thread), so the reader's own work overlaps the cloud's
instead of adding to it. Nothing else changes: each record is removed only after its own
outcome arrived, a batch is sent only after the one before it was fully answered, and a
removal that fails stops forwarding (a batch already in flight then stays stored and is sent
again: the cloud answers it as a repeat).

A library: no HTTP server, no global state. The reader daemon and the SDK's in-process reader
both run it, in the background (`start`) or synchronously (`drain`).
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from ..wire.clock import Clock
from ..wire.terminal_codes import ErrorCode, message_for
from .cloud_link import CloudLink, CloudRefused, CloudUnreachable, ForwardOutcome
from .vault import StoredPayment, Vault, VaultError

log = structlog.get_logger("stowpay.reader.forwarder")

#: The most records the device API takes in one request.
MAX_BATCH = 500
#: Outcomes after which a record may leave the vault; anything else is no answer at all.
FINAL_STATUSES = frozenset({"approved", "declined", "rejected"})
#: The cloud's error code for a connection token of another account than the reader's.
ACCOUNT_MISMATCH = "account_id_mismatch"
#: The background thread re-reads the clock at least this often (real seconds), so a clock
#: that jumps, or a test's manual clock, cannot leave it asleep past a due retry for long.
_MAX_WAIT = 5.0
#: Exponents above this would overflow a float; the delay is capped by max_delay long before.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class ForwardingError:
    """An error not tied to one payment, or the refusal of a whole batch."""

    code: ErrorCode
    message: str
    #: the records it kept in the vault, when it concerns particular ones
    sequences: tuple[int, ...] = ()


class ForwardingListener(Protocol):
    """Hears what forwarding did (the LAN server pushes it to the POS as events)."""

    def on_payment_forwarded(self, record: StoredPayment, outcome: ForwardOutcome) -> None:
        """A record has its outcome and has left the vault."""
        ...

    def on_forwarding_failure(self, error: ForwardingError) -> None:
        """An attempt failed, or records were held back; they stay stored."""
        ...


#: Returns a fresh connection token from the connected POS's token provider, None when no POS
#: is connected; raises `TokenUnavailable` when the provider failed.
TokenSource = Callable[[], str | None]


class TokenUnavailable(Exception):
    """The connected POS's token provider failed; forwarding waits and tries again."""


@dataclass(frozen=True)
class DrainResult:
    """What one `Forwarder.drain` did."""

    #: records removed from the vault (approved + declined + rejected)
    forwarded: int
    approved: int
    declined: int
    rejected: int
    #: pending records left (not counting quarantined ones)
    remaining: int
    error: ForwardingError | None


class _Stop(Exception):
    """Ends a drain early with an error; the next attempt waits for the backoff."""

    def __init__(self, error: ForwardingError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Tally:
    approved: int = 0
    declined: int = 0
    rejected: int = 0
    #: True once something was sent or settled (a drain that sent nothing is no evidence)
    attempted: bool = False

    def add(self, status: str) -> None:
        if status == "approved":
            self.approved += 1
        elif status == "declined":
            self.declined += 1
        else:
            self.rejected += 1

    @property
    def forwarded(self) -> int:
        return self.approved + self.declined + self.rejected


class Forwarder:
    """Forwards a vault's records to the cloud: synchronously (`drain`) or in the background.

    `device_key` gives the reader's credential (None while unregistered: nothing is sent).
    `account` gives the device's account when known: records of any other account stay in
    the vault and are reported as `ACCOUNT_ID_MISMATCH_WHILE_FORWARDING`.
    """

    def __init__(
        self,
        vault: Vault,
        link: CloudLink,
        *,
        device_key: Callable[[], str | None],
        token_source: TokenSource | None = None,
        unattended: bool = False,
        clock: Clock,
        rng: random.Random | None = None,
        batch_size: int = 100,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        listener: ForwardingListener | None = None,
        account: Callable[[], str | None] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1-{MAX_BATCH}")
        if not 0 < base_delay <= max_delay:
            raise ValueError("delays must satisfy 0 < base_delay <= max_delay")
        self._vault = vault
        self._link = link
        self._device_key = device_key
        self._token_source = token_source
        self._unattended = unattended
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._batch_size = batch_size
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._listener = listener
        self._account = account
        # One drain at a time: a second caller waits rather than sending the same records twice
        # (harmless to the money, but the POS would hear of each payment twice).
        self._drain_lock = threading.Lock()
        self._state = threading.Lock()
        self._busy = False
        self._failures = 0
        self._next_retry_at: float | None = None
        self._last_error: ForwardingError | None = None
        self._wakeup = threading.Event()
        self._wake_requested = threading.Event()
        self._stopping = threading.Event()
        self._never = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def next_retry_at(self) -> float | None:
        """When (on the injected clock) the next attempt after a failure is due; None if none."""
        with self._state:
            return self._next_retry_at

    @property
    def last_error(self) -> ForwardingError | None:
        """The error of the latest drain, None if it had none."""
        with self._state:
            return self._last_error

    @property
    def busy(self) -> bool:
        """True while a drain is under way."""
        return self._busy

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- draining ------------------------------------------------------------------------------

    def drain(self) -> DrainResult:
        """Forward pending records in sequence order, batch by batch, until none is left or a
        batch fails. Cloud and vault failures come back in `DrainResult.error`, never raised.
        """
        return self._drain_locked(self._never)

    def _drain_locked(self, halt: threading.Event) -> DrainResult:
        with self._drain_lock:
            self._busy = True
            try:
                return self._drain(halt)
            finally:
                self._busy = False

    def _drain(self, halt: threading.Event) -> DrainResult:
        tally = _Tally()
        strays: list[int] = []
        stop: _Stop | None = None
        device_key = self._device_key()
        if device_key is not None:
            try:
                self._forward_all(device_key, tally, strays, halt)
            except _Stop as exc:
                stop = exc
        errors: list[ForwardingError] = []
        if stop is not None:
            errors.append(stop.error)
        if strays:
            errors.append(
                ForwardingError(
                    ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING,
                    f"{len(strays)} stored payment(s) belong to another account than this "
                    "reader's; they stay stored",
                    tuple(strays),
                )
            )
        remaining, vault_error = self._remaining()
        if vault_error is not None and stop is None:
            errors.append(vault_error)
        error = errors[0] if errors else None
        self._record(tally, stop, error)
        for each in errors:
            log.warning(
                "forwarding_failed",
                code=str(each.code),
                detail=each.message,
                held=len(each.sequences),
            )
            self._notify_failure(each)
        return DrainResult(
            forwarded=tally.forwarded,
            approved=tally.approved,
            declined=tally.declined,
            rejected=tally.rejected,
            remaining=remaining,
            error=error,
        )

    def _forward_all(
        self, device_key: str, tally: _Tally, strays: list[int], halt: threading.Event
    ) -> None:
        skipped: set[int] = set()
        batch = self._next_batch(skipped, strays)
        if not batch:
            return
        # The batch answered last, removed while the next one is at the cloud.
        answered: _Answered | None = None
        sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stowpay-forward")
        try:
            while batch and not halt.is_set():
                token = self._token(batch)
                if token is None and not self._unattended:
                    # No POS to vouch for the records and the reader does not forward on its
                    # own: they wait for a POS to connect (which wakes the forwarder).
                    log.debug("forwarding_waits_for_pos", pending=len(batch))
                    return
                tally.attempted = True
                sending = sender.submit(self._send, device_key, batch, token)
                try:
                    if answered is not None:
                        done, answered = answered, None
                        self._settle(done, tally, len(skipped))
                    following = self._next_batch(skipped, strays, after=batch[-1].sequence)
                finally:
                    concurrent.futures.wait([sending])
                answered = _match(batch, sending.result())
                if answered.unanswered:
                    done, answered = answered, None
                    self._settle(done, tally, len(skipped))
                with self._state:
                    self._failures = 0
                batch = following
        finally:
            sender.shutdown(wait=True)
            if answered is not None:
                self._settle(answered, tally, len(skipped))

    def _next_batch(
        self, skipped: set[int], strays: list[int], *, after: int | None = None
    ) -> list[StoredPayment]:
        """The lowest pending records (above `after`) not held back, at most `batch_size`."""
        account = self._account() if self._account is not None else None
        while True:
            limit = len(skipped) + self._batch_size
            try:
                records = self._vault.pending(limit, after=after)
            except VaultError as exc:
                raise _Stop(_vault_error("the vault could not be read", exc)) from exc
            fresh = [r for r in records if r.sequence not in skipped]
            batch: list[StoredPayment] = []
            for record in fresh:
                if account is not None and record.account != account:
                    skipped.add(record.sequence)
                    strays.append(record.sequence)
                else:
                    batch.append(record)
            # Each pass either finds records to send or holds back at least one more, so this
            # ends; a short read means the vault has nothing further.
            if batch or len(records) < limit:
                return batch[: self._batch_size]

    def _token(self, batch: Sequence[StoredPayment]) -> str | None:
        if self._token_source is None:
            return None
        try:
            return self._token_source()
        except Exception as exc:
            # The provider is the POS developer's code: whatever it raises, the records stay.
            detail = str(exc) if isinstance(exc, TokenUnavailable) else type(exc).__name__
            code = ErrorCode.CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING
            message = message_for(code) + (f" ({detail})" if detail else "")
            raise _Stop(ForwardingError(code, message, _sequences(batch))) from exc

    def _send(
        self, device_key: str, batch: Sequence[StoredPayment], token: str | None
    ) -> list[ForwardOutcome]:
        held = _sequences(batch)
        try:
            return self._link.forward(device_key, batch, connection_token=token)
        except CloudUnreachable as exc:
            raise _Stop(
                ForwardingError(
                    ErrorCode.STRIPE_API_CONNECTION_ERROR,
                    f"the cloud could not be reached; the payments stay stored ({exc})",
                    held,
                )
            ) from exc
        except CloudRefused as exc:
            if exc.code == ACCOUNT_MISMATCH:
                code = ErrorCode.ACCOUNT_ID_MISMATCH_WHILE_FORWARDING
                error = ForwardingError(code, message_for(code), held)
            else:
                error = ForwardingError(
                    ErrorCode.STRIPE_API_ERROR,
                    f"the cloud refused the forwarded payments ({exc.code}): {exc.message}",
                    held,
                )
            raise _Stop(error) from exc
        except Exception as exc:
            # An answer we cannot read is no answer: the cloud may have committed, so the
            # records stay and go again under the same keys.
            log.error("forwarding_link_failed", error_type=type(exc).__name__, exc_info=True)
            raise _Stop(
                ForwardingError(
                    ErrorCode.STRIPE_API_ERROR,
                    f"forwarding failed ({type(exc).__name__}); the payments stay stored",
                    held,
                )
            ) from exc

    def _settle(self, answered: _Answered, tally: _Tally, skipped: int) -> None:
        """Remove the records that have an outcome, then tell the listener about them."""
        batch, settled = answered.batch, answered.settled
        gone, failure = self._remove([r.sequence for r, _ in settled], skipped, len(batch))
        done = [(r, o) for r, o in settled if r.sequence in gone]
        for _, outcome in done:
            tally.add(outcome.status)
        if done:
            log.info(
                "offline_payments_forwarded",
                count=len(done),
                first_sequence=done[0][0].sequence,
                last_sequence=done[-1][0].sequence,
                replayed=sum(1 for _, o in done if o.replayed),
            )
        for record, outcome in done:
            self._notify_forwarded(record, outcome)
        if failure is not None:
            raise failure
        if answered.unanswered:
            raise _Stop(
                ForwardingError(
                    ErrorCode.STRIPE_API_ERROR,
                    f"the cloud answered {len(settled)} of {len(batch)} forwarded payments; "
                    "the others stay stored",
                    answered.unanswered,
                )
            )

    def _remove(
        self, sequences: list[int], skipped: int, batch_size: int
    ) -> tuple[set[int], _Stop | None]:
        """Remove `sequences`; the ones no longer in the vault, and the failure if any."""
        if not sequences:
            return set(), None
        try:
            self._vault.remove_many(sequences)
            return set(sequences), None
        except VaultError as exc:
            failure = _Stop(_vault_error("the vault could not remove forwarded payments", exc))
        # The removal may have committed before the error (the tip file write comes after):
        # the records no longer pending are gone and the listener must hear of them. They
        # were the lowest records not held back, so they are among this many if still there.
        try:
            held = {r.sequence for r in self._vault.pending(skipped + batch_size)}
        except VaultError:
            return set(), failure
        return set(sequences) - held, failure

    def _remaining(self) -> tuple[int, ForwardingError | None]:
        try:
            summary = self._vault.summary()
        except VaultError as exc:
            return 0, _vault_error("the vault could not be read", exc)
        return summary.count - summary.quarantined, None

    def _record(self, tally: _Tally, stop: _Stop | None, error: ForwardingError | None) -> None:
        """Update the backoff and the last error after a drain."""
        with self._state:
            self._last_error = error
            if stop is not None:
                self._failures += 1
                exponent = min(self._failures - 1, _MAX_EXPONENT)
                ceiling = min(self._max_delay, self._base_delay * 2.0**exponent)
                self._next_retry_at = self._clock.now() + self._rng.uniform(0.0, ceiling)
            else:
                # Done, or nothing that a timed retry would fix (no key, no POS, held-back
                # records): the next attempt comes with a wake().
                self._next_retry_at = None
                if tally.attempted:
                    self._failures = 0

    # -- listener --------------------------------------------------------------------------

    def _notify_forwarded(self, record: StoredPayment, outcome: ForwardOutcome) -> None:
        if self._listener is None:
            return
        try:
            self._listener.on_payment_forwarded(record, outcome)
        except Exception:
            log.error(
                "forwarding_listener_failed",
                callback="on_payment_forwarded",
                sequence=record.sequence,
                exc_info=True,
            )

    def _notify_failure(self, error: ForwardingError) -> None:
        if self._listener is None:
            return
        try:
            self._listener.on_forwarding_failure(error)
        except Exception:
            log.error(
                "forwarding_listener_failed",
                callback="on_forwarding_failure",
                code=str(error.code),
                exc_info=True,
            )

    # -- the background thread -------------------------------------------------------------

    def start(self) -> None:
        """Run a background thread that drains when woken and when a retry is due."""
        with self._state:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="stowpay-forwarder", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background thread: at once when idle, after the current batch otherwise."""
        self._stopping.set()
        self._wakeup.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("forwarder_still_running", timeout=timeout)

    def wake(self) -> None:
        """Drain now, without waiting for a pending retry (a record stored, the cloud back)."""
        self._wake_requested.set()
        self._wakeup.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._due():
                self.step()
                continue
            self._wakeup.wait(self._wait_time())
            self._wakeup.clear()

    def step(self) -> DrainResult | None:
        """One turn of the background thread, in the caller's thread: drain if woken or if a
        retry is due (None if neither). For single-threaded drivers such as the simulator."""
        if not self._due():
            return None
        self._wake_requested.clear()
        try:
            return self._drain_locked(self._stopping)
        except Exception:
            # A bug must not end forwarding for good, nor spin: back off and go on.
            log.error("forwarder_drain_crashed", exc_info=True)
            self._record(_Tally(), _Stop(_crash_error()), _crash_error())
            return None

    def _due(self) -> bool:
        if self._wake_requested.is_set():
            return True
        retry_at = self.next_retry_at
        return retry_at is not None and self._clock.now() >= retry_at

    def _wait_time(self) -> float | None:
        retry_at = self.next_retry_at
        if retry_at is None:
            return None
        return min(max(retry_at - self._clock.now(), 0.0), _MAX_WAIT)


@dataclass(frozen=True)
class _Answered:
    """A batch and the outcomes the cloud gave for it, not yet removed."""

    batch: Sequence[StoredPayment]
    settled: list[tuple[StoredPayment, ForwardOutcome]]
    #: sequences sent that came back without a final outcome (they stay stored)
    unanswered: tuple[int, ...]


def _match(batch: Sequence[StoredPayment], outcomes: Sequence[ForwardOutcome]) -> _Answered:
    by_sequence: dict[int, ForwardOutcome] = {}
    for outcome in outcomes:
        if outcome.status in FINAL_STATUSES:
            by_sequence.setdefault(outcome.sequence, outcome)
    settled = [(r, by_sequence[r.sequence]) for r in batch if r.sequence in by_sequence]
    unanswered = tuple(r.sequence for r in batch if r.sequence not in by_sequence)
    return _Answered(batch, settled, unanswered)


def _sequences(batch: Sequence[StoredPayment]) -> tuple[int, ...]:
    return tuple(r.sequence for r in batch)


def _vault_error(what: str, exc: VaultError) -> ForwardingError:
    return ForwardingError(ErrorCode.UNEXPECTED_SDK_ERROR, f"{what}: {exc}")


def _crash_error() -> ForwardingError:
    return ForwardingError(
        ErrorCode.UNEXPECTED_SDK_ERROR, "forwarding failed unexpectedly; it will be retried"
    )
