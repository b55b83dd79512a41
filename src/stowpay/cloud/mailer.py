"""Email receipts: a mailer drains the durable receipt outbox through SMTP, with retries.

A receipt is queued in the transaction of the capture or refund it reports, so a capture that
committed is a receipt that will be sent. The mailer leases due receipts, hands each to the SMTP
server, and marks it sent in the same database once the server accepted it; a refused or
unreachable server retries with exponential backoff and jitter until three days have passed.

Exactly once, and the one gap: between the server's acceptance and the commit of the mark, a
crash (or a lost database) leaves the receipt pending, and it is sent again when its lease ends.
That window is one small transaction long; the copy carries the same Message-ID (made from the
receipt's id), which mail stores and clients use to recognise a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

from .. import logs
from . import receipt_render
from .settings import Settings
from .storage import Store
from .storage import receipts as outbox

log = structlog.get_logger("stowpay.receipts")

BATCH = 20


class SmtpUrlError(ValueError):
    """An SMTP URL that cannot be used."""


def parse_smtp_url(url: str) -> tuple[str, str, int, str | None, str | None]:
    """`smtp://[user:pass@]host[:port]` (or `smtps://`, `smtp+starttls://`) as (scheme, host,
    port, user, password)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    defaults = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
    if scheme not in defaults:
        raise SmtpUrlError(
            f"an SMTP URL starts with smtp://, smtps:// or smtp+starttls://: {url!r}"
        )
    if not parts.hostname:
        raise SmtpUrlError(f"the SMTP URL names no host: {url!r}")
    try:
        port = parts.port or defaults[scheme]
    except ValueError as exc:
        raise SmtpUrlError(f"the SMTP URL's port is not a number: {url!r}") from exc
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return scheme, parts.hostname, port, user, password


def retry_delay(attempts: int, settings: Settings, rng: random.Random) -> float:
    """Delay before the next try after `attempts` failed ones: doubling, capped, jittered."""
    base: float = min(
        settings.receipt_first_retry * 2 ** max(attempts - 1, 0), settings.receipt_max_delay
    )
    return base * rng.uniform(0.5, 1.5)


class PermanentFailure(Exception):
    """The server refused the message for good (every recipient rejected)."""


class Mailer:
    """Sends due email receipts through the configured SMTP server; one per cloud process."""

    def __init__(
        self, store: Store, settings: Settings, *, rng: random.Random | None = None
    ) -> None:
        if settings.smtp_url is None:
            raise SmtpUrlError("no SMTP server is configured")
        logs.configure()
        self.store = store
        self.settings = settings
        self.server = parse_smtp_url(settings.smtp_url)
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due receipts now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Send until cancelled."""
        while True:
            try:
                sent = await self.send_due()
            except Exception:  # the loop must outlive any one bad receipt or store hiccup
                log.exception("receipt sending failed")
                sent = 0
            if sent:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.receipt_poll_interval)

    async def send_due(self) -> int:
        """Send one batch of due receipts (one SMTP session); return how many were tried."""
        now = self.settings.clock.now()
        lease = self.settings.smtp_timeout * 6
        with self.store.write() as tx:
            batch = outbox.claim_emails(tx, now, lease, BATCH)
            messages = []
            for row in batch:
                try:
                    msg = receipt_render.email(tx, row, sender=self.settings.smtp_from)
                except LookupError:
                    msg = None
                messages.append((row, msg))
        if not batch:
            return 0
        await asyncio.to_thread(self._send_batch, messages)
        return len(batch)

    def _send_batch(self, messages: list[tuple[dict[str, Any], EmailMessage | None]]) -> None:
        try:
            smtp = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            for row, _ in messages:
                self._retry(row, _describe(exc))
            return
        try:
            for i, (row, msg) in enumerate(messages):
                if msg is None:
                    self._finish(row, "failed", "the charge is gone", None)
                    continue
                try:
                    refused = smtp.send_message(msg)
                except smtplib.SMTPRecipientsRefused as exc:
                    self._finish(row, "failed", _describe(exc), None)
                    continue
                except smtplib.SMTPResponseException as exc:
                    if 500 <= exc.smtp_code < 600:
                        self._finish(row, "failed", _describe(exc), None)
                    else:
                        self._retry(row, _describe(exc))
                    continue
                except (OSError, smtplib.SMTPException) as exc:
                    self._retry(row, _describe(exc))
                    # The session is likely broken: the rest wait for their next turn.
                    for later, _ in messages[i + 1 :]:
                        self._retry(later, "not tried: the SMTP session broke")
                    return
                if refused:
                    self._finish(row, "failed", f"refused: {sorted(refused)}", None)
                else:
                    # Accepted by the server: marked sent in the same database at once.
                    self._finish(row, "sent", None, None)
        finally:
            with contextlib.suppress(Exception):
                smtp.quit()

    def _connect(self) -> smtplib.SMTP:
        scheme, host, port, user, password = self.server
        timeout = self.settings.smtp_timeout
        smtp: smtplib.SMTP
        if scheme == "smtps":
            smtp = smtplib.SMTP_SSL(
                host, port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(host, port, timeout=timeout)
            if scheme == "smtp+starttls":
                smtp.starttls(context=ssl.create_default_context())
        if user is not None:
            smtp.login(user, password or "")
        return smtp

    def _retry(self, row: dict[str, Any], error: str) -> None:
        now = self.settings.clock.now()
        if now - row["created"] >= self.settings.receipt_give_up_after:
            self._finish(row, "failed", error, None)
            return
        delay = retry_delay(row["attempts"] + 1, self.settings, self.rng)
        self._finish(row, "pending", error, now + delay)

    def _finish(
        self, row: dict[str, Any], state: str, error: str | None, next_at: float | None
    ) -> None:
        with self.store.write() as tx:
            outbox.finish_email(
                tx,
                row["id"],
                at=self.settings.clock.now(),
                state=state,
                error=error,
                next_attempt_at=next_at,
            )
        log.info("receipt attempt", receipt=row["id"], charge=row["charge_id"], state=state)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
