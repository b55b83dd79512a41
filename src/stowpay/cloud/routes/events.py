"""`/v1/events`."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..api import Context, api
from ..params import ListParams, Params
from .common import fetch, list_object


class EventList(ListParams):
    type: str | None = Field(None, max_length=100)


@api.get("/v1/events/{event_id}", returns="event", summary="Retrieve an Event", tag="Events")
def retrieve_event(ctx: Context, params: Params, event_id: str) -> dict[str, Any]:
    return fetch(ctx, "event", event_id)


@api.get("/v1/events", params=EventList, returns="list:event", summary="List Events", tag="Events")
def list_events(ctx: Context, params: EventList) -> dict[str, Any]:
    # An event's type is kept in the `status` column, so `type` filters in SQL.
    return list_object(ctx, "event", params, "/v1/events", filters={"status": params.type})


@api.get(
    "/v1/events/{event_id}/deliveries",
    returns="list:stowpay.webhook_delivery",
    summary="List an event's webhook deliveries and their attempts (Stowpay extension)",
    tag="Events",
)
def list_event_deliveries(ctx: Context, params: Params, event_id: str) -> dict[str, Any]:
    fetch(ctx, "event", event_id)
    data = [
        {
            "id": d["id"],
            "object": "stowpay.webhook_delivery",
            "attempts": d["attempts"],
            "created": d["created"],
            "endpoint": d["endpoint_id"],
            "event": d["event_id"],
            "last_attempt_at": d["last_attempt_at"],
            "last_error": d["last_error"],
            "last_status": d["last_status"],
            "next_attempt_at": d["next_attempt_at"],
            "state": d["state"],
            "attempt_log": [
                {
                    "at": a["at"],
                    "duration_ms": round(a["duration_ms"], 3),
                    "error": a["error"],
                    "status": a["status"],
                }
                for a in d["attempt_log"]
            ],
        }
        for d in ctx.tx.deliveries(ctx.account_id, event_id)
    ]
    url = f"/v1/events/{event_id}/deliveries"
    return {"object": "list", "data": data, "has_more": False, "url": url}
