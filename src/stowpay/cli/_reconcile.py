"""`stowpay reconcile`: fetch a reconciliation or an audit export from the cloud, show it.

The cloud's `/v1/stowpay/...` routes do the work (`cloud.reconcile`); this module speaks to
them with the account's secret key and formats what comes back.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx2 as httpx

from ..cloud import reconcile
from ..wire.money import format_amount


class ReconcileError(Exception):
    """A one-line reason the command failed."""


def fetch(api_base: str, api_key: str, path: str, params: dict[str, str] | None = None) -> bytes:
    """GET a `/v1/stowpay` route; the body, or `ReconcileError` with the API's message."""
    url = api_base.rstrip("/") + path
    try:
        r = httpx.get(
            url, params=params, headers={"Authorization": f"Bearer {api_key}"}, timeout=60.0
        )
    except httpx.HTTPError as exc:
        raise ReconcileError(f"cannot reach {api_base}: {type(exc).__name__}") from None
    if r.status_code != 200:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {r.status_code}"
        raise ReconcileError(str(message))
    return bytes(r.content)


def report(api_base: str, api_key: str, since: str | None) -> dict[str, Any]:
    params = {"since": since} if since else {}
    found = json.loads(fetch(api_base, api_key, "/v1/stowpay/reconciliation", params))
    return dict(found)


def public_key(api_base: str, api_key: str) -> str:
    return str(json.loads(fetch(api_base, api_key, "/v1/stowpay/audit_key"))["public_key"])


def as_csv(found: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reconcile.COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in found["payments"]:
        writer.writerow(reconcile.flat(row))
    return out.getvalue()


def as_table(found: dict[str, Any]) -> str:
    rows = [reconcile.flat(r) for r in found["payments"]]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in reconcile.COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in reconcile.COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in reconcile.COLUMNS).rstrip() for r in rows]
    lines.append("")
    held = found["not_forwarded"]
    lines.append(f"Stored on readers, not yet forwarded: {len(held)} reader(s)")
    for r in held:
        sums = ", ".join(format_amount(v, k) for k, v in sorted(r["amounts"].items()))
        oldest = r["oldest_age"]
        age = f", oldest {oldest / 3600:.1f} h" if isinstance(oldest, int | float) else ""
        lines.append(f"  {r['reader']}: {r['stored_count']} payment(s), {sums}{age}")
    declined = found["forwarded_declined"]
    lines.append(f"Forwarded but declined: {len(declined)}")
    for r in declined:
        amount = format_amount(r["amount"], r["currency"])
        lines.append(f"  {r['order']} {r['payment_intent']} {amount}: {r['decline']}")
    lines.append(f"Rejected records: {len(found['rejected'])}")
    for r in found["rejected"]:
        lines.append(f"  {r['reader']} #{r['sequence']}: {r['code']}")
    gaps = found["sequence_gaps"]
    lines.append(f"Readers with sequence gaps: {len(gaps)}")
    for g in gaps:
        missing = ", ".join(str(x) for x in g["missing"][:20]) or "none"
        lines.append(f"  {g['reader']}: missing {missing}; used twice {g['conflicts'][:20]}")
    if found.get("truncated"):
        lines.append("(only the newest payments are listed: narrow --since)")
    return "\n".join(lines)
