"""`expand[]`: replace ids in an answer with the objects they name, up to four levels deep."""

from __future__ import annotations

from typing import Any

from ..wire.errors import InvalidRequestError
from .storage import Tx

MAX_DEPTH = 4
#: Fields that hold an id of another object and may be expanded.
EXPANDABLE = frozenset(
    {
        "latest_charge",
        "payment_intent",
        "payment_method",
        "charge",
        "location",
        "configuration",
        "reader",
        "refunds",
        "balance_transaction",
        "customer",
        "failure_balance_transaction",
        "source",
    }
)


def expand(tx: Tx, account_id: str, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """Expand each dotted path in `obj` (in place) and return it."""
    for path in paths:
        parts = path.split(".")
        if len(parts) > MAX_DEPTH:
            raise InvalidRequestError(
                f"You cannot expand more than {MAX_DEPTH} levels of a property. Property: {path}",
                param="expand",
            )
        _walk(tx, account_id, obj, parts, path)
    return obj


def _walk(tx: Tx, account_id: str, node: Any, parts: list[str], path: str) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(tx, account_id, item, parts, path)
        return
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    # (an event's `data` has an `object` too, which is a dict: compare, do not hash)
    if node.get("object") in ("list", "search_result") and head == "data" and rest:
        for item in node["data"]:
            _walk(tx, account_id, item, rest, path)
        return
    if head not in node or head == "metadata":
        # Metadata values are the client's own strings, never ids to expand.
        raise _cannot(path, head)
    value = node[head]
    if isinstance(value, str):
        if head not in EXPANDABLE:
            raise _cannot(path, head)
        found = tx.get(account_id, value)
        if found is None:
            return  # an id the account can no longer see stays an id
        node[head] = value = found
    elif value is not None and not isinstance(value, dict) and head not in EXPANDABLE:
        raise _cannot(path, head)
    if rest and value is not None:
        _walk(tx, account_id, value, rest, path)


def _cannot(path: str, field: str) -> InvalidRequestError:
    return (
        InvalidRequestError(
            f"This property cannot be expanded ({field}).", param="expand", code="parameter_invalid"
        )
        if field
        else InvalidRequestError(f"Invalid expand path: {path}", param="expand")
    )
