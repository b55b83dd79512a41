"""Schemas of the objects the API answers with, for the OpenAPI document.

Each schema lists every field an object of that kind carries, all of them required (`null`
when absent, as Stripe does), with their types, enums and nullability. `additionalProperties`
stays open in the document because Stripe adds fields over time and clients must ignore what
they do not know; the fuzz tests close it, so the server sends no field the document omits.
"""

from __future__ import annotations

from typing import Any

REF = "#/components/schemas/{model}"

_STR = {"type": "string"}
_NSTR = {"type": "string", "nullable": True}
_INT = {"type": "integer"}
_NINT = {"type": "integer", "nullable": True}
_BOOL = {"type": "boolean"}
_META = {"type": "object", "additionalProperties": {"type": "string"}}
_NOBJ = {"type": "object", "nullable": True}
#: A field Stripe documents that is always null in Stowpay (no Connect, customers, ...).
_NULL = {"nullable": True, "enum": [None]}
_AMOUNT = {"type": "integer", "minimum": 0}
_TIME = {"type": "integer", "minimum": 0}
_CURRENCY = {"type": "string", "pattern": "^[a-z]{3}$"}
_LIVEMODE = {"type": "boolean", "enum": [False]}


def _ref(model: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=model)}


def _id(prefix: str) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^{prefix}_[A-Za-z0-9_]+$"}


def _enum(*values: str, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "enum": list(values)}
    if nullable:
        schema["nullable"] = True
        schema["enum"].append(None)
    return schema


def _expandable(prefix: str, model: str, *, nullable: bool = False) -> dict[str, Any]:
    """An id of another object, or (with `expand[]`) that object."""
    schema: dict[str, Any] = {"anyOf": [_id(prefix), _ref(model)]}
    if nullable:
        schema["nullable"] = True
    return schema


def _struct(fields: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    """A nested object whose fields are all present."""
    schema: dict[str, Any] = {"type": "object", "required": sorted(fields), "properties": fields}
    if nullable:
        schema["nullable"] = True
    return schema


def _obj(name: str, fields: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    props = {"object": {"type": "string", "enum": [name]}, **fields}
    required = sorted(k for k in props if k not in optional)
    return {"type": "object", "required": required, "properties": props}


def list_of(model: str) -> dict[str, Any]:
    """A Stripe list of `model` objects."""
    return _struct(
        {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref(model)},
            "has_more": _BOOL,
            "url": {"type": "string", "pattern": "^/v1/"},
        }
    )


def _search(model: str) -> dict[str, Any]:
    """A Stripe search result of `model` objects."""
    return _struct(
        {
            "object": {"type": "string", "enum": ["search_result"]},
            "data": {"type": "array", "items": _ref(model)},
            "has_more": _BOOL,
            "next_page": _NSTR,
            "url": {"type": "string", "pattern": "^/v1/"},
        }
    )


ERROR_SCHEMA: dict[str, Any] = _struct(
    {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": _enum(
                    "api_error", "card_error", "idempotency_error", "invalid_request_error"
                ),
                "code": _STR,
                "decline_code": _STR,
                "doc_url": _STR,
                "message": _STR,
                "param": _STR,
                "charge": _id("ch"),
                "payment_intent": _ref("payment_intent"),
                "payment_method": _ref("payment_method"),
            },
        }
    }
)


def object_schemas() -> dict[str, Any]:
    """The answer schemas, by name."""
    return {
        **_more(),
        **_terminal(),
        **_payments(),
        "search_result": _search("payment_intent"),
    }


_PI_STATUS = (
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "processing",
    "requires_capture",
    "canceled",
    "succeeded",
)
_METHOD_TYPES = ("card", "card_present", "interac_present")


def _payments() -> dict[str, Any]:
    return {
        "payment_intent": _payment_intent(),
        "charge": _charge(),
        "refund": _obj(
            "refund",
            {
                "id": _id("re"),
                "amount": _AMOUNT,
                "balance_transaction": _NULL,
                "charge": _expandable("ch", "charge"),
                "created": _TIME,
                "currency": _CURRENCY,
                "destination_details": _NULL,
                "failure_reason": _NSTR,
                "metadata": _META,
                "payment_intent": _expandable("pi", "payment_intent", nullable=True),
                "reason": _enum("duplicate", "fraudulent", "requested_by_customer", nullable=True),
                "receipt_number": _NSTR,
                "source_transfer_reversal": _NULL,
                "status": _enum("succeeded", "failed"),
                "transfer_reversal": _NULL,
            },
        ),
        "payment_method": _payment_method(),
        "event": _obj(
            "event",
            {
                "id": _id("evt"),
                "api_version": _STR,
                "created": _TIME,
                "data": {
                    "type": "object",
                    "required": ["object"],
                    "properties": {
                        # any of the objects above, as it was when the event happened
                        "object": {
                            "type": "object",
                            "required": ["object"],
                            "properties": {"object": _STR},
                            "additionalProperties": True,
                        },
                        "previous_attributes": {"type": "object"},
                    },
                },
                "livemode": _LIVEMODE,
                "pending_webhooks": {"type": "integer", "minimum": 0},
                "request": _struct({"id": _NSTR, "idempotency_key": _NSTR}),
                "type": {"type": "string", "pattern": r"^[a-z_]+(\.[a-z_]+)+$"},
            },
        ),
    }


def _payment_intent() -> dict[str, Any]:
    card_present_options = _struct(
        {
            "request_extended_authorization": _BOOL,
            "request_incremental_authorization_support": _BOOL,
        }
    )
    last_error = _struct(
        {
            "charge": _id("ch"),
            "code": _STR,
            "decline_code": _NSTR,
            "doc_url": _STR,
            "message": _STR,
            "payment_method": _ref("payment_method"),
            "type": _enum("card_error"),
        },
        nullable=True,
    )
    return _obj(
        "payment_intent",
        {
            "id": _id("pi"),
            "amount": {"type": "integer", "minimum": 1},
            "amount_capturable": _AMOUNT,
            "amount_details": _struct({"tip": {"type": "object"}}),
            "amount_received": _AMOUNT,
            "application": _NULL,
            "application_fee_amount": _NULL,
            "automatic_payment_methods": _struct(
                {"allow_redirects": _enum("always", "never"), "enabled": _BOOL}, nullable=True
            ),
            "canceled_at": {**_TIME, "nullable": True},
            "cancellation_reason": _enum(
                "duplicate", "fraudulent", "requested_by_customer", "abandoned", nullable=True
            ),
            "capture_method": _enum("automatic", "automatic_async", "manual"),
            "client_secret": {"type": "string", "pattern": "^pi_[A-Za-z0-9]+_secret_"},
            "confirmation_method": _enum("automatic", "manual"),
            "created": _TIME,
            "currency": _CURRENCY,
            "customer": _NULL,
            "description": _NSTR,
            "last_payment_error": last_error,
            "latest_charge": _expandable("ch", "charge", nullable=True),
            "livemode": _LIVEMODE,
            "metadata": _META,
            "next_action": _NULL,
            "on_behalf_of": _NULL,
            "payment_method": _expandable("pm", "payment_method", nullable=True),
            "payment_method_configuration_details": _NULL,
            "payment_method_options": {
                "type": "object",
                "properties": {
                    "card": {"type": "object"},
                    "card_present": card_present_options,
                    "interac_present": {"type": "object"},
                },
                "additionalProperties": False,
            },
            "payment_method_types": {
                "type": "array",
                "minItems": 1,
                "items": _enum(*_METHOD_TYPES),
            },
            "processing": _NULL,
            "receipt_email": _NSTR,
            "review": _NULL,
            "setup_future_usage": _NULL,
            "shipping": _NULL,
            "source": _NULL,
            "statement_descriptor": _NSTR,
            "statement_descriptor_suffix": _NSTR,
            "status": _enum(*_PI_STATUS),
            "transfer_data": _NULL,
            "transfer_group": _NULL,
        },
    )


def _card_fields() -> dict[str, Any]:
    """What a card (present or not) shows of itself: never its number."""
    return {
        "brand": _STR,
        "country": _NSTR,
        "exp_month": {"type": "integer", "minimum": 0, "maximum": 12},
        "exp_year": {"type": "integer", "minimum": 0},
        "fingerprint": _STR,
        "funding": _NSTR,
        "last4": {"type": "string", "pattern": "^[0-9]{4}$"},
    }


def _charge_method_details() -> dict[str, Any]:
    base = {
        **_card_fields(),
        "amount_authorized": _NINT,
        "network": _NSTR,
        "network_transaction_id": _NSTR,
    }
    status = _struct({"status": _STR})
    card = _struct(
        {
            **base,
            "checks": _NOBJ,
            "extended_authorization": status,
            "incremental_authorization": status,
            "installments": _NULL,
            "mandate": _NULL,
            "multicapture": status,
            "network_token": _struct({"used": _BOOL}),
            "overcapture": _struct({"maximum_amount_capturable": _AMOUNT, "status": _STR}),
            "three_d_secure": _NULL,
            "wallet": _NULL,
        }
    )
    present = _struct(
        {
            **base,
            "cardholder_name": _NSTR,
            "capture_before": {**_TIME, "nullable": True},
            "emv_auth_data": _NSTR,
            "generated_card": _NSTR,
            "incremental_authorization_supported": _BOOL,
            "location": _expandable("tml", "terminal.location", nullable=True),
            "offline": _struct({"stored_at": _TIME, "type": _enum("deferred")}, nullable=True),
            "overcapture_supported": _BOOL,
            "preferred_locales": {"type": "array", "items": _STR},
            "read_method": _NSTR,
            "reader": _expandable("tmr", "terminal.reader", nullable=True),
            "receipt": _NOBJ,
            "wallet": _NULL,
        }
    )
    return {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": _enum(*_METHOD_TYPES),
            "card": card,
            "card_present": present,
            "interac_present": present,
        },
        "additionalProperties": False,
        "minProperties": 2,
        "maxProperties": 2,
    }


def _billing_details() -> dict[str, Any]:
    address = _struct(
        {k: _NSTR for k in ("city", "country", "line1", "line2", "postal_code", "state")},
        nullable=True,
    )
    return _struct({"address": address, "email": _NSTR, "name": _NSTR, "phone": _NSTR})


def _charge() -> dict[str, Any]:
    outcome = _struct(
        {
            "network_status": _enum("approved_by_network", "declined_by_network"),
            "reason": _NSTR,
            "risk_level": _enum("normal", "elevated", "highest"),
            "risk_score": {"type": "integer", "minimum": 0, "maximum": 100},
            "seller_message": _STR,
            "type": _enum("authorized", "issuer_declined"),
        }
    )
    return _obj(
        "charge",
        {
            "id": _id("ch"),
            "amount": {"type": "integer", "minimum": 1},
            "amount_captured": _AMOUNT,
            "amount_refunded": _AMOUNT,
            "application": _NULL,
            "application_fee": _NULL,
            "application_fee_amount": _NULL,
            "balance_transaction": _NULL,
            "billing_details": _billing_details(),
            "calculated_statement_descriptor": _STR,
            "captured": _BOOL,
            "created": _TIME,
            "currency": _CURRENCY,
            "customer": _NULL,
            "description": _NSTR,
            "disputed": _BOOL,
            "failure_balance_transaction": _NULL,
            "failure_code": _NSTR,
            "failure_message": _NSTR,
            "fraud_details": {"type": "object"},
            "livemode": _LIVEMODE,
            "metadata": _META,
            "on_behalf_of": _NULL,
            "outcome": outcome,
            "paid": _BOOL,
            "payment_intent": _expandable("pi", "payment_intent"),
            "payment_method": _expandable("pm", "payment_method"),
            "payment_method_details": _charge_method_details(),
            "receipt_email": _NSTR,
            "receipt_emails": {"type": "array", "items": {"type": "object"}},
            "receipt_number": _NSTR,
            "receipt_url": _NSTR,
            "refunded": _BOOL,
            "review": _NULL,
            "shipping": _NULL,
            "source_transfer": _NULL,
            "statement_descriptor": _NSTR,
            "statement_descriptor_suffix": _NSTR,
            "status": _enum("succeeded", "pending", "failed"),
            "transfer_data": _NULL,
            "transfer_group": _NULL,
        },
        optional=("receipt_emails",),
    )


def _payment_method() -> dict[str, Any]:
    networks = _struct({"available": {"type": "array", "items": _STR}, "preferred": _NSTR})
    card = _struct(
        {
            **_card_fields(),
            "checks": _struct(
                {
                    "address_line1_check": _NSTR,
                    "address_postal_code_check": _NSTR,
                    "cvc_check": _NSTR,
                }
            ),
            "display_brand": _STR,
            "generated_from": _NULL,
            "networks": networks,
            "three_d_secure_usage": _struct({"supported": _BOOL}),
            "wallet": _NULL,
        }
    )
    present = _struct(
        {
            **_card_fields(),
            "cardholder_name": _NSTR,
            "location": _expandable("tml", "terminal.location", nullable=True),
            "networks": networks,
            "preferred_locales": {"type": "array", "items": _STR},
            "read_method": _NSTR,
            "reader": _expandable("tmr", "terminal.reader", nullable=True),
        }
    )
    return _obj(
        "payment_method",
        {
            "id": _id("pm"),
            "allow_redisplay": _enum("always", "limited", "unspecified"),
            "billing_details": _billing_details(),
            "card": card,
            "card_present": present,
            "interac_present": present,
            "created": _TIME,
            "customer": _NULL,
            "livemode": _LIVEMODE,
            "metadata": _META,
            "type": _enum(*_METHOD_TYPES),
        },
        optional=("allow_redisplay", "card", "card_present", "interac_present"),
    )


def _more() -> dict[str, Any]:
    attempt = _struct(
        {
            "at": {"type": "number", "minimum": 0},
            "duration_ms": {"type": "number", "minimum": 0},
            "error": _NSTR,
            "status": _NINT,
        }
    )
    return {
        "stowpay.webhook_delivery": _obj(
            "stowpay.webhook_delivery",
            {
                "id": _id("whd"),
                "attempts": {"type": "integer", "minimum": 0},
                "created": _TIME,
                "endpoint": _id("we"),
                "event": _id("evt"),
                "last_attempt_at": {"type": "number", "nullable": True},
                "last_error": _NSTR,
                "last_status": _NINT,
                "next_attempt_at": {"type": "number", "nullable": True},
                "state": _enum("pending", "delivered", "failed"),
                "attempt_log": {"type": "array", "items": attempt},
            },
        ),
        "webhook_endpoint": _obj(
            "webhook_endpoint",
            {
                "id": _id("we"),
                "api_version": _NSTR,
                "application": _NULL,
                "created": _TIME,
                "description": _NSTR,
                "enabled_events": {"type": "array", "minItems": 1, "items": _STR},
                "livemode": _LIVEMODE,
                "metadata": _META,
                #: only in the answer to create: the signing secret is shown once
                "secret": {"type": "string", "pattern": "^whsec_"},
                "status": _enum("enabled", "disabled"),
                "url": {"type": "string", "pattern": "^https?://"},
            },
            optional=("secret",),
        ),
        "deleted": _struct(
            {
                "id": _STR,
                "object": _STR,
                "deleted": {"type": "boolean", "enum": [True]},
            }
        ),
    }


def _terminal() -> dict[str, Any]:
    """Terminal objects: Locations, Configurations, Readers and connection tokens."""
    address = _struct(
        {
            "city": _NSTR,
            "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
            "line1": _NSTR,
            "line2": _NSTR,
            "postal_code": _NSTR,
            "state": _NSTR,
        }
    )
    location = _expandable("tml", "terminal.location", nullable=True)
    limit = {"type": "integer", "minimum": 0, "nullable": True}
    per_currency = {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0},
        "description": "Minor units by lowercase currency code.",
    }
    return {
        "terminal.location": _obj(
            "terminal.location",
            {
                "id": _id("tml"),
                "address": address,
                "address_kana": _NULL,
                "address_kanji": _NULL,
                "configuration_overrides": {**_id("tmc"), "nullable": True},
                "created": _TIME,
                "display_name": {"type": "string", "minLength": 1},
                "display_name_kana": _NULL,
                "display_name_kanji": _NULL,
                "livemode": _LIVEMODE,
                "metadata": _META,
                "phone": _NSTR,
            },
        ),
        "terminal.configuration": _obj(
            "terminal.configuration",
            {
                "id": _id("tmc"),
                "bbpos_wisepos_e": _NULL,
                "cellular": _NULL,
                "created": _TIME,
                "is_account_default": _BOOL,
                "livemode": _LIVEMODE,
                "name": _NSTR,
                "offline": _struct({"enabled": _BOOL}, nullable=True),
                "reboot_window": _NULL,
                "stripe_s700": _NULL,
                #: Stowpay's extension: the merchant's offline risk policy, null when unset
                "stowpay_offline_policy": _struct(
                    {
                        "max_transaction": per_currency,
                        "max_stored_total": per_currency,
                        "max_stored_count": limit,
                        "max_record_age": limit,
                        "max_uses_per_card": limit,
                    },
                    nullable=True,
                ),
                "tipping": _NULL,
                "wifi": _NULL,
            },
        ),
        "terminal.reader": _obj(
            "terminal.reader",
            {
                "id": _id("tmr"),
                #: reader actions (process_payment_intent, ...) arrive with the reader issue
                "action": _NOBJ,
                "created": _TIME,
                "device_sw_version": _NSTR,
                "device_type": _STR,
                "ip_address": _NSTR,
                "label": _STR,
                #: milliseconds, unlike Stripe's other timestamps
                "last_seen_at": {"type": "integer", "minimum": 0, "nullable": True},
                "livemode": _LIVEMODE,
                "location": location,
                "metadata": _META,
                "serial_number": _STR,
                "status": _enum("online", "offline"),
            },
        ),
        "terminal.connection_token": _obj(
            "terminal.connection_token",
            {"location": location, "secret": {"type": "string", "pattern": "^pst_test_"}},
        ),
        #: Stowpay's extension: a forwarded offline record the cloud rejected for good
        "stowpay.offline_rejection": _obj(
            "stowpay.offline_rejection",
            {
                "id": _id("ofj"),
                "amount": {"type": "integer", "minimum": 0},
                "created": _TIME,
                #: as the record gave it (a rejected record's may be one no payment can have)
                "currency": _STR,
                "error": _struct(
                    {
                        "code": _STR,
                        "message": _STR,
                        "param": _NSTR,
                        "type": _enum("invalid_request_error"),
                    }
                ),
                "livemode": _LIVEMODE,
                "local_id": _STR,
                "reader": _id("tmr"),
                "sequence": {"type": "integer", "minimum": 1},
                "stored_at": {"type": "number", "minimum": 0},
            },
        ),
    }
