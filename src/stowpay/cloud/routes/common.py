"""Helpers the route modules share: lists and lookups."""

from __future__ import annotations

from typing import Any

from ...wire.errors import NotFoundError
from ..api import Context
from ..params import ListParams


def list_object(
    ctx: Context,
    type_: str,
    params: ListParams,
    url: str,
    *,
    filters: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """A Stripe list of this account's objects of `type_`."""
    page = ctx.tx.list_page(
        ctx.account_id,
        type_,
        limit=params.limit,
        starting_after=params.starting_after,
        ending_before=params.ending_before,
        created=params.created_bounds(),
        filters={k: v for k, v in (filters or {}).items() if v is not None},
    )
    if page is None:
        cursor = params.starting_after or params.ending_before or ""
        raise NotFoundError(
            type_, cursor, param="starting_after" if params.starting_after else "ending_before"
        )
    return {"object": "list", "data": page.data, "has_more": page.has_more, "url": url}


def fetch(ctx: Context, type_: str, object_id: str, *, kind: str | None = None) -> dict[str, Any]:
    """This account's object, or Stripe's 404."""
    obj = ctx.tx.get(ctx.account_id, object_id, type_)
    if obj is None:
        raise NotFoundError(kind or type_, object_id)
    return obj
