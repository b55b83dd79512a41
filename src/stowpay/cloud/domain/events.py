"""Events, and the webhook deliveries queued with them in the same transaction."""

from __future__ import annotations

import json
from typing import Any

from ..api import Context
from ..settings import API_VERSION


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as served: private (`_`-prefixed) keys removed."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


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
    # An object with private keys (`"_...` in its JSON) is served without them, so its
    # stored JSON is not what the event serves.
    reuse = stored is not None and '"_' not in stored
    data: dict[str, Any] = {"object": _OBJECT if reuse else public(obj)}
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
    if reuse:
        assert stored is not None
        # The placeholder is the first string after four fixed fields: replacing its first
        # occurrence cannot touch anything a client sent.
        body = json.dumps(event).replace(_OBJECT_JSON, stored, 1)
        data["object"] = public(obj)
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
_OBJECT_JSON = json.dumps(_OBJECT)


def _listening(ctx: Context, type_: str) -> list[dict[str, Any]]:
    return [
        e
        for e in ctx.tx.webhook_endpoints(ctx.account_id)
        if e.get("status") == "enabled"
        and ("*" in e["enabled_events"] or type_ in e["enabled_events"])
    ]
