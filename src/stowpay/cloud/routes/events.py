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
