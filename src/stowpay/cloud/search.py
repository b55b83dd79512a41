"""Stripe's search query language, the part PaymentIntents need.

    metadata['order_id']:'A-17' AND status:'succeeded'
    amount>1000 OR currency:'eur'
    -status:'canceled'

Clauses are joined by AND or by OR (not both, as Stripe requires); `-` negates a clause.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..wire import jsontext
from ..wire.errors import InvalidRequestError
from .api import Context
from .params import clamp_created
from .storage import store as q

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<neg>-)?(?P<field>metadata\[(?P<q1>['"])(?P<mkey>[^'"\]]{1,40})(?P=q1)\]|[a-z_]+)
        (?P<op>>=|<=|:|>|<)
        (?:(?P<q2>['"])(?P<sval>[^'"]{0,500})(?P=q2)|(?P<num>-?[0-9]{1,12}))
      | (?P<join>AND|OR)
    )\s*""",
    re.VERBOSE,
)

#: Numbers as the query and page tokens write them: ASCII digits that fit in 64 bits.
_NUMBER = re.compile(r"-?[0-9]{1,12}")
_PAGE = re.compile(r"page_[0-9]{1,18}")

NUMERIC = {"amount", "created"}
COLUMN = {"status": "status", "amount": "amount", "created": "created"}
BODY = {"currency", "customer", "description"}


@dataclass(frozen=True)
class Clause:
    field: str
    op: str
    value: str | int
    negated: bool
    metadata_key: str | None = None


def parse(query: str) -> tuple[list[Clause], str]:
    """Split a query into clauses and the word that joins them ("AND" or "OR")."""
    pos, clauses, joins = 0, [], set()
    expect_clause = True
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None or m.end() == pos:
            raise _bad(query, pos)
        pos = m.end()
        if m.group("join"):
            if expect_clause:
                raise _bad(query, m.start())
            joins.add(m.group("join"))
            expect_clause = True
            continue
        if not expect_clause:
            joins.add("AND")  # Stripe treats a space as AND
        expect_clause = False
        clauses.append(_clause(m, query))
    if not clauses or expect_clause:
        raise _bad(query, len(query))
    if len(joins) > 1:
        raise InvalidRequestError(
            "Search queries cannot mix AND and OR.", param="query", code="parameter_invalid"
        )
    if len(clauses) > 10:
        raise InvalidRequestError("Search queries may have at most 10 clauses.", param="query")
    return clauses, joins.pop() if joins else "AND"


def _clause(m: re.Match[str], query: str) -> Clause:
    field, op = m.group("field"), m.group("op")
    value: str | int = m.group("sval") if m.group("sval") is not None else int(m.group("num"))
    mkey = m.group("mkey")
    if mkey is not None:
        if op != ":":
            raise InvalidRequestError(
                "metadata can only be searched for equality (`:`).", param="query"
            )
        return Clause("metadata", op, str(value), bool(m.group("neg")), mkey)
    if field not in COLUMN and field not in BODY:
        raise InvalidRequestError(
            f"Field '{field}' is an unsupported search field for this resource.",
            param="query",
            code="parameter_invalid",
        )
    if field in NUMERIC:
        if isinstance(value, str):
            if _NUMBER.fullmatch(value) is None:
                raise InvalidRequestError(f"Field '{field}' takes a number.", param="query")
            value = int(value)
    elif op != ":":
        raise InvalidRequestError(
            f"Field '{field}' can only be searched for equality (`:`).", param="query"
        )
    if field == "created":
        value = clamp_created(int(value))
    return Clause(field, op, value if field in NUMERIC else str(value), bool(m.group("neg")))


def _bad(query: str, pos: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"We could not parse your search query at position {pos}: {query[pos : pos + 30]!r}. "
        "Try `metadata['key']:'value' AND status:'succeeded'`.",
        param="query",
        code="parameter_invalid",
    )


def _condition(c: Clause) -> Any:
    if c.metadata_key is not None:
        cond = q.metadata_condition(c.metadata_key, str(c.value))
    elif c.field in COLUMN:
        cond = q.column_condition(COLUMN[c.field], c.op, c.value)
    else:
        cond = q.any_of([q.body_contains(f) for f in _body_fragments(c.field, str(c.value))])
    return q.negate(cond) if c.negated else cond


def _body_fragments(field: str, value: str) -> list[str]:
    """How `"field": value` is written in a stored object's JSON.

    Objects are stored compact, in UTF-8 (`jsontext`); objects stored by earlier versions
    kept the standard library's layout, a space after the colon and non-ASCII escaped.
    """
    compact = f"{jsontext.dumps(field)}:{jsontext.dumps(value)}"
    spaced = f"{json.dumps(field)}: {json.dumps(value)}"
    return [compact, spaced]


def search_object(
    ctx: Context, type_: str, query: str, limit: int, page: str | None, url: str
) -> dict[str, Any]:
    """A `search_result` of this account's objects matching `query`."""
    clauses, join = parse(query)
    conditions = [_condition(c) for c in clauses]
    where = q.all_of(conditions) if join == "AND" else q.any_of(conditions)
    before: int | None = None
    if page is not None:
        if _PAGE.fullmatch(page) is None:
            raise InvalidRequestError("Invalid page token.", param="page")
        before = int(page[5:])
    data, cursor = ctx.tx.search(ctx.account_id, type_, where, limit=limit, before_seq=before)
    return {
        "object": "search_result",
        "data": data,
        "has_more": cursor is not None,
        "next_page": None if cursor is None else f"page_{cursor}",
        "url": url,
    }
