"""Events, and the webhook deliveries queued with them in the same transaction."""

from __future__ import annotations

from typing import Any

from ...wire import jsontext
from ..api import Context
from ..settings import API_VERSION


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as served: private (`_`-prefixed) keys removed."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def public_json(obj: dict[str, Any], stored: str) -> str | None:
    """`jsontext.dumps(public(obj))`, cut from `stored` (which is `jsontext.dumps(obj)`); None
    when it cannot be cut that way.

    A private key is written `"_...`, so JSON without that sequence has none. When the
    private keys are the object's last keys and nothing deeper is private (a charge's
    `_test`), the served JSON is `stored` without its last items.
    """
    if '"_' not in stored:
        return stored
    keys = list(obj)
    first = len(keys)
    while first > 0 and keys[first - 1].startswith("_"):
        first -= 1
    if first == len(keys) or first == 0:
        return None
    tail = "".join(f",{jsontext.dumps(k)}:{jsontext.dumps(obj[k])}" for k in keys[first:]) + "}"
    if not stored.endswith(tail):
        return None
    served = stored[: -len(tail)] + "}"
    return served if '"_' not in served else None


def emit(
    ctx: Context,
    type_: str,
    obj: dict[str, Any],
    previous_attributes: dict[str, Any] | None = None,
    *,
    stored: str | None = None,
) -> dict[str, Any]:
    """Record an event about `obj` and queue it for every endpoint that listens for it.

    The event is stored (serialized) at once, so it keeps `obj` as it is now; the returned
    dict is that event, whose `data.object` shares nested values with `obj`. `stored` is
    the JSON that `Tx.insert` or `Tx.update` returned for `obj` just now (it must still be
    `obj`): the event then embeds that text instead of serializing the object again.
    """
    endpoints = _listening(ctx, type_)
    served = None if stored is None else public_json(obj, stored)
    data: dict[str, Any] = {"object": public(obj) if served is None else _OBJECT}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    event = {
        "id": ctx.ids.new("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": ctx.now(),
        "data": data,
        "livemode": False,
        "pending_webhooks": len(endpoints),
        "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
        "type": type_,
    }
    body = None
    if served is not None:
        # The placeholder is the first string after four fixed fields: replacing its first
        # occurrence cannot touch anything a client sent.
        body = jsontext.dumps(event).replace(_OBJECT_JSON, served, 1)
        # Nothing private anywhere when the text served is the text stored: a plain copy.
        data["object"] = dict(obj) if served is stored else public(obj)
    ctx.tx.insert(ctx.account_id, event, ref=obj.get("id"), status=type_, body=body)
    for endpoint in endpoints:
        ctx.tx.insert_delivery(
            {
                "id": ctx.ids.new("whd"),
                "account_id": ctx.account_id,
                "endpoint_id": endpoint["id"],
                "event_id": event["id"],
                "created": event["created"],
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": float(ctx.now()),
            }
        )
    ctx.wrote_events = True
    return event


#: Where an event's object goes while the rest of the event is serialized.
_OBJECT = "\x00object"
_OBJECT_JSON = jsontext.dumps(_OBJECT)


def _listening(ctx: Context, type_: str) -> list[dict[str, Any]]:
    return [
        e
        for e in ctx.tx.webhook_endpoints(ctx.account_id)
        if e.get("status") == "enabled"
        and ("*" in e["enabled_events"] or type_ in e["enabled_events"])
    ]
