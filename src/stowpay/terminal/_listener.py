"""What the app gives the SDK: a `ConnectionTokenProvider` and an `OfflineListener`."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._errors import TerminalException
    from ._models import OfflineStatus, PaymentIntent


class ConnectionTokenProvider(abc.ABC):
    """Gets a connection token from the app's backend.

    The backend makes one with its secret key (``stripe.terminal.ConnectionToken.create``, or
    ``client.v1.terminal.connection_tokens.create()``) and hands its ``secret`` over. Tokens are
    single use: the SDK asks for a fresh one each time (connecting online, discovering readers,
    and before each batch of offline payments the reader forwards). Raise any exception when no
    token can be had; the SDK reports it as CONNECTION_TOKEN_PROVIDER_ERROR (or, while
    forwarding, CONNECTION_TOKEN_PROVIDER_ERROR_WHILE_FORWARDING: the payments stay stored).
    """

    @abc.abstractmethod
    def fetch_connection_token(self) -> str:
        """A fresh connection token's secret."""


class OfflineListener:
    """Hears about offline payments; override only what you need (each does nothing).

    Methods are called from the SDK's own thread, one at a time, in order. Keep them short;
    an exception raised in one is logged and otherwise ignored.
    """

    def on_offline_status_change(self, status: OfflineStatus) -> None:
        """The network status, or a count or sum of stored payments, changed."""

    def on_payment_intent_forwarded(
        self, payment_intent: PaymentIntent, error: TerminalException | None
    ) -> None:
        """A stored payment reached the cloud: `payment_intent.id` is set, and `error` says
        if it was declined (DECLINED_BY_STRIPE_API) or refused. Called once per payment."""

    def on_forwarding_failure(self, error: TerminalException) -> None:
        """Forwarding failed in a way not tied to one payment (a token provider error, the
        cloud out of reach); the payments stay stored and forwarding is retried."""
