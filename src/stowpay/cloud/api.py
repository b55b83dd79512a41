"""Operations: one decorator declares a route, its parameters, its answer and its docs.

A handler is a plain function `(ctx, params, **path) -> dict` that runs inside one database
transaction; `app.py` turns each registered `Operation` into a route (auth, idempotency,
expansion, errors) and `openapi.py` into the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..wire.clock import Clock
from ..wire.ids import IdFactory
from .params import NoParams, Params
from .storage import Tx

Handler = Callable[..., dict[str, Any]]


@dataclass
class Context:
    """What a handler may use: the caller's account, the transaction, time and ids."""

    account: dict[str, Any]
    tx: Tx
    clock: Clock
    ids: IdFactory
    request_id: str
    idempotency_key: str | None
    settings: Any = None
    #: set by handlers that wrote events, so the webhook dispatcher wakes at once
    wrote_events: bool = False
    #: set by handlers that queued email receipts, so the mailer wakes at once
    queued_receipts: bool = False
    #: the object a handler answers with and its JSON, when it has that already
    answer: tuple[dict[str, Any], str] | None = None

    @property
    def account_id(self) -> str:
        return str(self.account["id"])

    def now(self) -> int:
        return int(self.clock.now())

    def answered(self, obj: dict[str, Any], stored: str | None) -> dict[str, Any]:
        """Answer with `obj`, whose JSON `stored` is (as `Tx.insert` or `Tx.update` just
        returned it): the answer then reuses that text. `obj` must not change after this."""
        if stored is not None:
            self.answer = (obj, stored)
        return obj


@dataclass(frozen=True)
class Operation:
    """One API operation."""

    method: str
    path: str
    handler: Handler
    params: type[Params]
    returns: str
    summary: str
    operation_id: str
    #: the object type named in "No such ..." errors for the path's `{id}`
    tags: tuple[str, ...] = ()


@dataclass
class Api:
    """A registry of operations."""

    operations: list[Operation] = field(default_factory=list)

    def operation(
        self,
        method: str,
        path: str,
        *,
        returns: str,
        summary: str,
        params: type[Params] = NoParams,
        tag: str = "",
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            op_id = f"{method.lower()}_{fn.__name__}"
            self.operations.append(
                Operation(method, path, fn, params, returns, summary, op_id, (tag,) if tag else ())
            )
            return fn

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.operation("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.operation("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.operation("DELETE", path, **kw)


#: The cloud's API: route modules register on it when imported.
api = Api()
