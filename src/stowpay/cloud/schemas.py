"""Schemas of the objects the API answers with, for the OpenAPI document.

Each schema names the fields every object of that kind carries; `additionalProperties` stays
open because Stripe adds fields over time and clients must ignore what they do not know.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {
                    "type": "string",
                    "enum": [
                        "api_error",
                        "card_error",
                        "idempotency_error",
                        "invalid_request_error",
                    ],
                },
                "code": {"type": "string"},
                "decline_code": {"type": "string"},
                "message": {"type": "string"},
                "param": {"type": "string"},
                "doc_url": {"type": "string"},
                "payment_intent": {"type": "object"},
            },
        }
    },
}

_STR = {"type": "string"}
_NSTR = {"type": "string", "nullable": True}
_INT = {"type": "integer"}
_NINT = {"type": "integer", "nullable": True}
_BOOL = {"type": "boolean"}
_META = {"type": "object", "additionalProperties": {"type": "string"}}
_NOBJ = {"type": "object", "nullable": True}


def _obj(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    props = {"object": {"type": "string", "enum": [name]}, **fields}
    return {"type": "object", "required": sorted(props), "properties": props}


def object_schemas() -> dict[str, Any]:
    """The answer schemas, by name."""
    return {
        **_more(),
        "payment_intent": _obj(
            "payment_intent",
            {
                "id": _STR,
                "amount": _INT,
                "amount_capturable": _INT,
                "amount_received": _INT,
                "canceled_at": _NINT,
                "cancellation_reason": _NSTR,
                "capture_method": {
                    "type": "string",
                    "enum": ["automatic", "automatic_async", "manual"],
                },
                "client_secret": _STR,
                "created": _INT,
                "currency": _STR,
                "description": _NSTR,
                "last_payment_error": _NOBJ,
                "latest_charge": {"nullable": True},
                "livemode": _BOOL,
                "metadata": _META,
                "payment_method": {"nullable": True},
                "payment_method_types": {"type": "array", "items": _STR},
                "receipt_email": _NSTR,
                "status": {
                    "type": "string",
                    "enum": [
                        "requires_payment_method",
                        "requires_confirmation",
                        "requires_action",
                        "processing",
                        "requires_capture",
                        "canceled",
                        "succeeded",
                    ],
                },
            },
        ),
        "charge": _obj(
            "charge",
            {
                "id": _STR,
                "amount": _INT,
                "amount_captured": _INT,
                "amount_refunded": _INT,
                "captured": _BOOL,
                "created": _INT,
                "currency": _STR,
                "livemode": _BOOL,
                "metadata": _META,
                "outcome": _NOBJ,
                "paid": _BOOL,
                "payment_intent": {"nullable": True},
                "payment_method_details": _NOBJ,
                "refunded": _BOOL,
                "status": {"type": "string", "enum": ["succeeded", "pending", "failed"]},
                "failure_code": _NSTR,
                "failure_message": _NSTR,
            },
        ),
        "refund": _obj(
            "refund",
            {
                "id": _STR,
                "amount": _INT,
                "charge": {"nullable": True},
                "created": _INT,
                "currency": _STR,
                "metadata": _META,
                "payment_intent": {"nullable": True},
                "reason": _NSTR,
                "status": _STR,
            },
        ),
        "payment_method": _obj(
            "payment_method",
            {
                "id": _STR,
                "created": _INT,
                "livemode": _BOOL,
                "metadata": _META,
                "type": _STR,
            },
        ),
        "event": _obj(
            "event",
            {
                "id": _STR,
                "api_version": _STR,
                "created": _INT,
                "data": {"type": "object"},
                "livemode": _BOOL,
                "pending_webhooks": _INT,
                "request": {"type": "object"},
                "type": _STR,
            },
        ),
        "search_result": {
            "type": "object",
            "required": ["object", "data", "has_more", "next_page", "url"],
            "properties": {
                "object": {"type": "string", "enum": ["search_result"]},
                "data": {"type": "array", "items": {"type": "object"}},
                "has_more": _BOOL,
                "next_page": _NSTR,
                "url": _STR,
            },
        },
    }


def _more() -> dict[str, Any]:
    return {
        "stowpay.webhook_delivery": _obj(
            "stowpay.webhook_delivery",
            {
                "id": _STR, "attempts": _INT, "created": _INT, "endpoint": _STR, "event": _STR,
                "last_attempt_at": {"type": "number", "nullable": True},
                "last_error": _NSTR, "last_status": _NINT,
                "next_attempt_at": {"type": "number", "nullable": True},
                "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                "attempt_log": {"type": "array", "items": {"type": "object"}},
            },
        ),
        "webhook_endpoint": _obj(
            "webhook_endpoint",
            {
                "id": _STR,
                "created": _INT,
                "enabled_events": {"type": "array", "items": _STR},
                "livemode": _BOOL,
                "metadata": _META,
                "status": _STR,
                "url": _STR,
            },
        ),
        "deleted": {
            "type": "object",
            "required": ["id", "object", "deleted"],
            "properties": {
                "id": _STR,
                "object": _STR,
                "deleted": {"type": "boolean", "enum": [True]},
            },
        },
    }
