"""Fill a fresh Stowpay database with N captured PaymentIntents, fast, in one process.

    python bench/prefill.py DB N        # prints one JSON line: secret_key, flows, seconds, ...

One flow (pm_card_visa, create, confirm, capture: manual capture) is run for real through the
domain functions and the storage layer (`stowpay.cloud.storage.Store`), each call in its own
transaction as the server runs it. Its rows are then taken as a template and written N-1 more
times with fresh random ids and spread-out `created` times, in large transactions through the
same Store and table definitions. So every stored PaymentIntent has what the server itself
leaves behind for that flow: a PaymentMethod, the PaymentIntent, its Charge, five Events, and
three idempotency records (the stripe client sends a key with every POST).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import sys
import time
import uuid
from typing import Any

import sqlalchemy as sa

from stowpay.cloud.api import Context
from stowpay.cloud.app import _dumps
from stowpay.cloud.domain import payment_intents
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.settings import Settings
from stowpay.cloud.storage import IdempotencyRecord, Store
from stowpay.cloud.storage import tables as t
from stowpay.wire.ids import RandomIds

ALPHABET = string.ascii_letters + string.digits
BATCH = 5000


class FixedClock:
    def __init__(self, at: int) -> None:
        self.at = at

    def now(self) -> float:
        return float(self.at)


class RecordingIds:
    """Random ids, remembered in order so the template can name them."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self._ids = RandomIds()

    def new(self, prefix: str) -> str:
        new = self._ids.new(prefix)
        self.made.append(new)
        return new


def template_flow(store: Store, account: dict[str, Any], t0: int) -> tuple[dict[str, str], int]:
    """Run one real flow; return {token: placeholder} for everything unique to it."""
    ids = RecordingIds()
    clock = FixedClock(t0)
    tokens: dict[str, str] = {}
    idem: list[tuple[str, str, bytes]] = []
    steps = ("create", "confirm", "capture")
    pi: dict[str, Any] = {}
    for n, step in enumerate(steps):
        request_id = ids.new("req")
        key = str(uuid.uuid4())
        tokens[request_id] = f"req{n}"
        tokens[key] = f"key{n}"
        with store.write() as tx:
            ctx = Context(account, tx, clock, ids, request_id, key, Settings())
            if step == "create":
                pi = payment_intents.create(
                    ctx,
                    {"amount": 1000, "currency": "usd", "capture_method": "manual"},
                    payment_method="pm_card_visa",
                    confirm=False,
                )
            elif step == "confirm":
                pi = payment_intents.confirm(ctx, payment_intents.get(ctx, pi["id"]), None, {})
            else:
                pi = payment_intents.capture(ctx, payment_intents.get(ctx, pi["id"]), None)
            body = _dumps(pi)
            fingerprint = hashlib.sha256(body).hexdigest()
            tx.idempotency_put(
                account["id"], key, IdempotencyRecord(fingerprint, t0, 200, request_id, body)
            )
            idem.append((key, request_id, body))
    for made in ids.made:
        if made not in tokens:
            tokens[made] = f"id{len(tokens)}"
            if made.startswith("ntx_"):  # a charge shows a slice of it
                tokens[made[4:20]] = f"ntx{len(tokens)}"
    secret = pi["client_secret"].rsplit("_", 1)[1]
    tokens[secret] = "secret"
    tokens[str(t0)] = "created"
    return tokens, len(idem)


def _template(text: str, tokens: dict[str, str]) -> str:
    text = text.replace("{", "{{").replace("}", "}}")
    for token, name in sorted(tokens.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(token, "{" + name + "}")
    return text


def _fresh(rng: random.Random, tokens: dict[str, str], created: int) -> dict[str, str]:
    values: dict[str, str] = {}
    for token, name in tokens.items():
        if name == "created":
            values[name] = str(created)
        elif name.startswith("key"):
            values[name] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif "_" in token and not name.startswith("ntx"):
            prefix = token.split("_", 1)[0]
            values[name] = prefix + "_" + "".join(rng.choices(ALPHABET, k=24))
        else:
            values[name] = "".join(rng.choices(ALPHABET, k=len(token)))
    return values


def prefill(db: str, n: int, seed: int = 1) -> dict[str, Any]:
    started = time.perf_counter()
    store = Store(db)
    store.migrate()
    settings = Settings(db=db)
    with store.write() as tx:
        new = create_account(tx, settings.clock, settings.ids)
    account = new.account
    now = int(time.time())
    # Spread the flows over the past hours (2 per second), all within the 24 h idempotency TTL.
    first = now - n // 2
    tokens, _ = template_flow(store, account, first)

    with store.read() as tx:
        obj_rows = [
            r._asdict()
            for r in tx.conn.execute(
                sa.select(t.objects)
                .where(t.objects.c.account_id == account["id"])
                .order_by(t.objects.c.seq)
            )
        ]
        idem_rows = [
            r._asdict()
            for r in tx.conn.execute(
                sa.select(t.idempotency_keys).where(
                    t.idempotency_keys.c.account_id == account["id"]
                )
            )
        ]
    for r in idem_rows:
        r["body"] = bytes(r["body"]).decode()
    obj_tpl = [
        {k: (_template(v, tokens) if isinstance(v, str) else v) for k, v in r.items() if k != "seq"}
        for r in obj_rows
    ]
    idem_tpl = [
        {k: (_template(v, tokens) if isinstance(v, str) else v) for k, v in r.items()}
        for r in idem_rows
    ]

    rng = random.Random(seed)
    done = 1
    while done < n:
        objs: list[dict[str, Any]] = []
        idems: list[dict[str, Any]] = []
        for _ in range(min(BATCH, n - done)):
            created = first + done // 2
            values = _fresh(rng, tokens, created)
            for row in obj_tpl:
                out = {k: (v.format(**values) if isinstance(v, str) else v) for k, v in row.items()}
                out["created"] = created
                objs.append(out)
            for row in idem_tpl:
                out = {k: (v.format(**values) if isinstance(v, str) else v) for k, v in row.items()}
                out["created"] = created
                out["body"] = out["body"].encode()
                out["fingerprint"] = hashlib.sha256(out["body"]).hexdigest()
                idems.append(out)
            done += 1
        with store.write() as tx:
            tx.conn.execute(t.objects.insert(), objs)
            tx.conn.execute(t.idempotency_keys.insert(), idems)
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in (("objects", t.objects), ("idempotency_keys", t.idempotency_keys))
        }
        pis = conn.execute(
            sa.select(sa.func.count()).where(t.objects.c.type == "payment_intent")
        ).scalar_one()
    store.close()
    return {
        "secret_key": new.secret_key,
        "flows": n,
        "payment_intents": pis,
        "rows": counts,
        "rows_per_flow_template": {"objects": len(obj_tpl), "idempotency_keys": len(idem_tpl)},
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    print(json.dumps(prefill(sys.argv[1], int(sys.argv[2]))), flush=True)
