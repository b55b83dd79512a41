"""Stripe's error envelope and the exceptions that produce it.

StripeError                      any error answered to an API client
├── InvalidRequestError          400 invalid_request_error (bad parameters, wrong state)
│   └── NotFoundError            404 resource_missing
├── IdempotencyError             400 idempotency_error (key reused with other parameters)
├── IdempotencyConflictError     409 a request with the same key is still in flight
├── AuthenticationError          401 missing or unknown key
├── PermissionDeniedError        403 the key may not do this
├── CardError                    402 card_error (a decline; its side effects are kept)
└── ApiError                     500 api_error (a bug: never the client's fault)
"""

from __future__ import annotations

from typing import Any, ClassVar


class StripeError(Exception):
    """An error with Stripe's wire shape: `{"error": {"type", "code", "message", ...}}`."""

    http_status: ClassVar[int] = 400
    error_type: ClassVar[str] = "invalid_request_error"
    #: True when the request's side effects must be kept although it answers an error
    #: (a declined charge is recorded, and its answer is replayed for the same key).
    keeps_effects: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.extra = extra or {}

    def to_body(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON body Stripe answers with for this error.

        A card number in the message or the parameter's name (a client can name a parameter
        anything, and an error names it) is written as asterisks: error bodies are logged,
        and kept with idempotent replays and rejected offline records.
        """
        from .metadata import mask_card_numbers  # it imports cards, which imports this

        message = mask_card_numbers(self.message)
        err: dict[str, Any] = {"type": self.error_type, "message": message}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            err["param"] = mask_card_numbers(self.param)
        if self.decline_code is not None:
            err["decline_code"] = self.decline_code
        err.update(self.extra)
        return {"error": err}


class InvalidRequestError(StripeError):
    """The request's parameters are wrong, or the object is in the wrong state."""


class NotFoundError(InvalidRequestError):
    """No such object for this account (another account's objects are not found either)."""

    http_status = 404

    def __init__(self, kind: str, object_id: str, *, param: str | None = "id") -> None:
        from .metadata import contains_card_number  # it imports cards, which imports this

        if isinstance(object_id, str) and contains_card_number(object_id):
            # A card number sent where an id goes is not echoed back (nor logged with it).
            object_id = "(a card number)"
        super().__init__(f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


class IdempotencyError(StripeError):
    """An idempotency key was reused with different parameters."""

    error_type = "idempotency_error"


class IdempotencyConflictError(StripeError):
    """Another request with the same idempotency key has not finished yet."""

    http_status = 409

    def __init__(self) -> None:
        super().__init__(
            "There is currently another in-progress request using this Stripe token "
            "(probably means you sent two simultaneous requests with the same idempotency "
            "key). Try again in a moment.",
            code="idempotency_key_in_use",
        )


class AuthenticationError(StripeError):
    """Missing or unknown API key."""

    http_status = 401


class PermissionDeniedError(StripeError):
    """The key is valid but may not perform this request."""

    http_status = 403


class CardError(StripeError):
    """The issuer declined the card."""

    http_status = 402
    error_type = "card_error"
    keeps_effects = True


class ApiError(StripeError):
    """Something went wrong on our side."""

    http_status = 500
    error_type = "api_error"
