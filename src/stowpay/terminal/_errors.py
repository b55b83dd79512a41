"""`TerminalException`: every failure of an SDK call, with an `ErrorCode` and what to do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..wire.terminal_codes import ErrorCode, message_for

if TYPE_CHECKING:
    from ._models import PaymentIntent


class TerminalException(Exception):
    """A terminal operation failed. `code` says why; `message` says what to do."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        decline_code: str | None = None,
        payment_intent: PaymentIntent | None = None,
        api_error_code: str | None = None,
    ) -> None:
        text = message or message_for(code)
        super().__init__(f"{code.value}: {text}")
        self.code = code
        self.message = text
        #: the issuer's reason, for DECLINED_BY_STRIPE_API (e.g. "insufficient_funds")
        self.decline_code = decline_code
        #: the PaymentIntent the failure concerns, when there is one (a declined payment)
        self.payment_intent = payment_intent
        #: the cloud's own error code, when the cloud refused
        self.api_error_code = api_error_code


def _error_from_wire(error: Mapping[str, Any]) -> TerminalException:
    """The exception for the reader's error body ``{"type", "code", "message", ...}``."""
    from ._models import PaymentIntent

    raw = str(error.get("code") or "")
    message = error.get("message")
    try:
        code = ErrorCode(raw)
    except ValueError:
        # A code of another vocabulary (an HTTP-level refusal): say what it was.
        code = ErrorCode.UNEXPECTED_SDK_ERROR
        message = f"The reader refused the request ({raw or 'no code'}): {message or ''}".strip()
    pi = error.get("payment_intent")
    decline = error.get("decline_code")
    api_code = error.get("api_error_code")
    return TerminalException(
        code,
        str(message) if message else None,
        decline_code=decline if isinstance(decline, str) else None,
        payment_intent=PaymentIntent._from_wire(pi) if isinstance(pi, Mapping) else None,
        api_error_code=api_code if isinstance(api_code, str) else None,
    )
