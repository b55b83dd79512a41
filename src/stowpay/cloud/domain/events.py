"""Events, and the webhook deliveries queued with them in the same transaction."""

from __future__ import annotations

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
) -> dict[str, Any]:
    """Record an event about `obj` and queue it for every endpoint that listens for it.

    The event is stored (serialized) at once, so it keeps `obj` as it is now; the returned
    dict is that event, whose `data.object` shares nested values with `obj`.
    """
    endpoints = _listening(ctx, type_)
    data: dict[str, Any] = {"object": public(obj)}
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
    ctx.tx.insert(ctx.account_id, event, ref=obj.get("id"), status=type_)
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


def _listening(ctx: Context, type_: str) -> list[dict[str, Any]]:
    return [
        e
        for e in ctx.tx.webhook_endpoints(ctx.account_id)
        if e.get("status") == "enabled"
        and ("*" in e["enabled_events"] or type_ in e["enabled_events"])
    ]
