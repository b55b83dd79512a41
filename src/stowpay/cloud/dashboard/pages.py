"""The dashboard's pages as HTML text: every value escaped, minimal inline CSS, no script.

Each function takes what a page shows (already scoped to one account by the caller) and
returns the page. Nothing here reads the database.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from ...wire.money import format_amount

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1a1f36;background:#f6f8fa}
header{background:#0a2540;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header b{margin-right:18px}
header form{margin-left:auto}main{padding:16px 20px}
table{border-collapse:collapse;background:#fff;width:100%;margin:8px 0 18px}
th,td{border-bottom:1px solid #e3e8ee;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f7;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.b{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#e3e8ee}
.off{background:#ffe8b3}.ok{background:#cbf4c9}.bad{background:#fde2dd}.warn{background:#ffd79d}
.muted{color:#697386}form.inline{display:inline}.filters{margin:8px 0}
.filters input,.filters select{margin-right:8px}code{font-size:12px}
pre{background:#fff;border:1px solid #e3e8ee;padding:8px;overflow:auto;font-size:12px}
.err{color:#b3261e}.card{background:#fff;border:1px solid #e3e8ee;padding:10px;margin:8px 0}
"""

#: What the dashboard answers with, besides its body: no framing, no scripts, no caching.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def h(value: object) -> str:
    """A value as escaped HTML text (None shows as a dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def when(at: object) -> str:
    """A time in seconds as UTC text."""
    if not isinstance(at, int | float):
        return "—"
    return dt.datetime.fromtimestamp(float(at), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: object) -> str:
    """A duration, to the largest sensible unit."""
    if not isinstance(seconds, int | float):
        return "—"
    s = max(float(seconds), 0.0)
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def money(amount: object, currency: object) -> str:
    if not isinstance(amount, int) or not isinstance(currency, str):
        return "—"
    return h(format_amount(amount, currency))


def amounts(by_currency: Mapping[str, Any] | None) -> str:
    if not by_currency:
        return "—"
    return ", ".join(money(v, k) for k, v in sorted(by_currency.items()))


def badge(text: str, kind: str = "") -> str:
    return f'<span class="b {h(kind)}">{h(text)}</span>'


_STATUS_KIND = {
    "succeeded": "ok",
    "requires_capture": "ok",
    "canceled": "",
    "requires_payment_method": "bad",
}


def layout(title: str, body: str, *, csrf: str | None, refresh: int | None = None) -> str:
    """A whole page; signed in when `csrf` is given (the navigation and a sign-out button)."""
    nav = ""
    if csrf is not None:
        links = "".join(
            f'<a href="/dashboard/{p}">{label}</a>'
            for p, label in (
                ("payments", "Payments"),
                ("readers", "Readers"),
                ("webhooks", "Webhooks"),
                ("reconciliation", "Reconciliation"),
            )
        )
        nav = (
            f"{links}<form method=post action=/dashboard/logout>"
            f'<input type=hidden name=csrf value="{h(csrf)}"><button>Sign out</button></form>'
        )
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{h(title)} · Stowpay</title>{meta}<style>{_CSS}</style></head>"
        f"<body><header><b>Stowpay</b>{nav}</header><main><h1>{h(title)}</h1>{body}</main>"
        "</body></html>"
    )


def login(error: str | None = None) -> str:
    message = f'<p class="err">{h(error)}</p>' if error else ""
    body = (
        f"{message}<form method=post action=/dashboard/login class=card>"
        "<label>Secret key or dashboard token<br>"
        "<input type=password name=key autocomplete=off size=60 required></label> "
        "<button>Sign in</button></form>"
        '<p class="muted">The key is checked and forgotten: the session cookie holds a signed '
        "account id, never the key.</p>"
    )
    return layout("Sign in", body, csrf=None)


def _table(headers: Sequence[str], rows: Iterable[str], empty: str) -> str:
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join(rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{h(empty)}</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metadata(meta: Mapping[str, Any] | None) -> str:
    if not meta:
        return "—"
    return "<br>".join(f"<code>{h(k)}</code>={h(v)}" for k, v in sorted(meta.items()))


def payment_row(r: Mapping[str, Any]) -> str:
    kind = _STATUS_KIND.get(str(r["status"]), "")
    flags = badge("offline", "off") if r["offline"] else ""
    decline = f'<span class="err">{h(r["decline"])}</span>' if r["decline"] else "—"
    pi = quote(str(r["payment_intent"]), safe="")
    return (
        f'<tr data-pi="{h(r["payment_intent"])}" data-order="{h(r.get("order"))}">'
        f'<td><a href="/dashboard/payments/{pi}">{h(r["payment_intent"])}</a> {flags}</td>'
        f'<td class="n">{money(r["amount"], r["currency"])}</td>'
        f"<td>{badge(str(r['status']), kind)}</td>"
        f"<td>{when(r['stored_at'] if r['offline'] else r['created'])}</td>"
        f"<td>{when(r['forwarded_at'])}</td><td>{age(r['lag'])}</td>"
        f"<td>{h(r['reader'])}</td><td>{decline}</td><td>{_metadata(r.get('metadata'))}</td></tr>"
    )


#: Most rows the payments table shows.
MAX_SHOWN = 500

PAYMENT_HEADERS = (
    "Payment",
    "Amount",
    "Status",
    "Time of sale",
    "Forwarded",
    "Lag",
    "Reader",
    "Decline",
    "Metadata",
)


def payments(
    rows: Sequence[Mapping[str, Any]],
    filters: Mapping[str, str],
    readers: Sequence[str],
    *,
    csrf: str,
    refresh: int | None,
) -> str:
    def option(name: str, value: str, label: str) -> str:
        chosen = " selected" if filters.get(name, "") == value else ""
        return f'<option value="{h(value)}"{chosen}>{h(label)}</option>'

    statuses = ("", "succeeded", "requires_capture", "requires_payment_method", "canceled")
    form = (
        '<form method=get class="filters">'
        "<select name=status>"
        + "".join(option("status", s, s or "any status") for s in statuses)
        + "</select><select name=offline>"
        + option("offline", "", "online and offline")
        + option("offline", "yes", "offline only")
        + option("offline", "no", "online only")
        + "</select><select name=reader>"
        + option("reader", "", "any reader")
        + "".join(option("reader", r, r) for r in readers)
        + "</select>"
        f'<input type=date name=date value="{h(filters.get("date", ""))}">'
        "<button>Filter</button></form>"
    )
    shown = rows[:MAX_SHOWN]
    table = _table(PAYMENT_HEADERS, (payment_row(r) for r in shown), "No payments match.")
    count = (
        f"{len(rows)} payments"
        if len(rows) == len(shown)
        else (f"the newest {len(shown)} of {len(rows)} payments (filter to see others)")
    )
    body = f'{form}<p class="muted">{h(count)}; times in UTC.</p>{table}'
    return layout("Payments", body, csrf=csrf, refresh=refresh)


def payment(
    row: Mapping[str, Any],
    pi: Mapping[str, Any],
    charges: Sequence[Mapping[str, Any]],
    events: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    *,
    csrf: str,
) -> str:
    summary = _table(PAYMENT_HEADERS, [payment_row(row)], "")
    charge_rows = []
    for c in charges:
        card = (c.get("payment_method_details") or {}).get("card_present") or {}
        offline = card.get("offline") or {}
        charge_rows.append(
            f"<tr><td><code>{h(c.get('id'))}</code></td><td>{h(c.get('status'))}</td>"
            f'<td class="n">{money(c.get("amount"), c.get("currency"))}</td>'
            f"<td>{h(card.get('brand'))} •••• {h(card.get('last4'))}</td>"
            f"<td>{h(c.get('failure_code'))}</td>"
            f"<td>{h(offline.get('type'))} {when(offline.get('stored_at'))}</td>"
            f"<td>{'yes' if c.get('captured') else 'no'}</td></tr>"
        )
    charges_html = _table(
        ("Charge", "Status", "Amount", "Card", "Failure", "Offline", "Captured"),
        charge_rows,
        "No charge yet.",
    )
    event_rows = []
    for event, deliveries in events:
        tries = "<br>".join(delivery_summary(d, attempts=True) for d in deliveries) or "—"
        event_rows.append(
            f"<tr><td><code>{h(event.get('id'))}</code></td><td>{h(event.get('type'))}</td>"
            f"<td>{when(event.get('created'))}</td><td>{tries}</td></tr>"
        )
    events_html = _table(
        ("Event", "Type", "Created", "Webhook deliveries"), event_rows, "No events."
    )
    meta = h(json.dumps(pi.get("metadata") or {}, indent=2, sort_keys=True))
    body = (
        f"{summary}<h2>Charges</h2>{charges_html}<h2>Events and webhook attempts</h2>"
        f"{events_html}<h2>Metadata</h2><pre>{meta}</pre>"
    )
    return layout(f"Payment {pi.get('id')}", body, csrf=csrf)


def delivery_summary(d: Mapping[str, Any], *, attempts: bool = False) -> str:
    kind = {"delivered": "ok", "failed": "bad", "pending": "warn"}.get(str(d.get("state")), "")
    text = f"{badge(str(d.get('state')), kind)} {h(d.get('attempts'))} attempt(s)"
    if d.get("last_status") is not None:
        text += f", last HTTP {h(d.get('last_status'))}"
    if d.get("last_error"):
        text += f', <span class="err">{h(d.get("last_error"))}</span>'
    if d.get("state") == "pending" and d.get("next_attempt_at"):
        text += f", next at {when(d.get('next_attempt_at'))}"
    if attempts:
        log = d.get("attempt_log") or []
        if log:
            text += " — " + "; ".join(
                f"{when(a.get('at'))} → {h(a.get('status') or a.get('error'))}" for a in log
            )
    return text


def readers(rows: Sequence[Mapping[str, Any]], chart: str, *, csrf: str) -> str:
    out = []
    for r in rows:
        online = badge("online", "ok") if r["online"] else badge("offline", "off")
        warn = ""
        if r["age_warning"]:
            warn = " " + badge(str(r["age_warning"]), "bad" if r["age_expired"] else "warn")
        ready = r["ready_days"]
        ready_text = "—" if ready is None else f"{ready:.0f} days left"
        if ready is not None and ready <= 0:
            ready_text = badge("expired", "bad")
        elif ready is not None and ready < 7:
            ready_text = badge(ready_text, "warn")
        out.append(
            f'<tr data-reader="{h(r["id"])}"><td>{h(r["label"])}<br><code>{h(r["id"])}</code></td>'
            f"<td>{online}</td><td>{when(r['last_seen'])}</td><td>{h(r['software'])}</td>"
            f"<td>{ready_text}</td><td class=n>{h(r['stored_count'])}</td>"
            f"<td>{amounts(r['amounts'])}</td><td>{age(r['oldest_age'])}{warn}</td>"
            f"<td>{when(r['reported_at'])}</td></tr>"
        )
    table = _table(
        (
            "Reader",
            "Network",
            "Last seen",
            "Software",
            "Offline-ready (30 days)",
            "Stored",
            "At risk",
            "Oldest stored",
            "Reported",
        ),
        out,
        "No readers registered.",
    )
    body = (
        f"{table}<p class=muted>Stored counts and amounts are what each reader reported in "
        "its last heartbeat.</p><h2>Amounts at risk and backlog over time</h2>"
        f"{chart}"
    )
    return layout("Readers", body, csrf=csrf)


def chart(series: Sequence[Mapping[str, Any]], *, now: float) -> str:
    """An inline SVG of the account's stored count and amounts at risk over time."""
    if not series:
        return '<p class="muted">No backlog reported yet.</p>'
    width, height, pad = 720, 200, 36
    points = [*series, {**series[-1], "at": max(now, float(series[-1]["at"]))}]
    t0, t1 = float(points[0]["at"]), float(points[-1]["at"])
    span = max(t1 - t0, 1.0)
    currencies = sorted({c for p in points for c in p["amounts"]})
    top_count = max(max(int(p["stored_count"]) for p in points), 1)

    def x(at: float) -> float:
        return pad + (at - t0) / span * (width - 2 * pad)

    base = height - pad

    def path(values: Sequence[float], top: float) -> str:
        # A step line: a backlog holds its value until the next report changes it.
        coords: list[str] = []
        last_y: float | None = None
        for p, v in zip(points, values, strict=True):
            px = x(float(p["at"]))
            y = base - (v / top) * (height - 2 * pad)
            if last_y is not None:
                coords.append(f"{px:.1f},{last_y:.1f}")
            coords.append(f"{px:.1f},{y:.1f}")
            last_y = y
        return " ".join(coords)

    colors = ("#635bff", "#d97706", "#059669", "#dc2626")
    lines: list[str] = []
    legend = [f'<tspan fill="#0a2540">- - backlog (max {top_count})</tspan>']
    for i, currency in enumerate(currencies[:4]):
        values = [float(p["amounts"].get(currency, 0)) for p in points]
        top = max(max(values), 1.0)
        color = colors[i]
        line = path(values, top)
        lines.append(
            f'<polygon fill="{color}" fill-opacity="0.15" stroke="none" '
            f'points="{x(t0):.1f},{base} {line} {x(t1):.1f},{base}"/>'
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{line}"/>'
        )
        legend.append(
            f'<tspan fill="{color}"> · at risk {h(currency.upper())} '
            f"(max {h(format_amount(int(top), currency))})</tspan>"
        )
    lines.append(
        f'<polyline fill="none" stroke="#0a2540" stroke-width="2" stroke-dasharray="5 4" '
        f'points="{path([float(p["stored_count"]) for p in points], top_count)}"/>'
    )
    axis = (
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#c1c9d2"/>'
        f'<text x="{pad}" y="{height - 10}" font-size="11">{h(when(t0))}</text>'
        f'<text x="{width - pad}" y="{height - 10}" font-size="11" text-anchor="end">'
        f"{h(when(t1))}</text>"
    )
    return (
        f'<svg role="img" aria-label="Amounts at risk and backlog over time" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'style="background:#fff;border:1px solid #e3e8ee">'
        f'<text x="{pad}" y="18" font-size="12">{"".join(legend)}</text>'
        f"{axis}{''.join(lines)}</svg>"
    )


def webhooks(rows: Sequence[Mapping[str, Any]], *, csrf: str, notice: str | None) -> str:
    out = []
    for d in rows:
        action = f"/dashboard/webhooks/{quote(str(d['id']), safe='')}/resend"
        out.append(
            f'<tr data-delivery="{h(d["id"])}"><td><code>{h(d["id"])}</code></td>'
            f"<td><code>{h(d['event_id'])}</code><br>{h(d.get('event_type'))}</td>"
            f"<td>{h(d.get('url'))}</td><td>{delivery_summary(d)}</td>"
            f"<td>{when(d.get('created'))}</td>"
            f'<td><form method=post action="{h(action)}" class=inline>'
            f'<input type=hidden name=csrf value="{h(csrf)}"><button>Resend</button></form></td>'
            "</tr>"
        )
    table = _table(
        ("Delivery", "Event", "Endpoint", "State", "Queued", ""), out, "No webhook deliveries."
    )
    note = f'<p class="card">{h(notice)}</p>' if notice else ""
    return layout("Webhook deliveries", note + table, csrf=csrf)


def reconciliation(report: Mapping[str, Any], since: str, *, csrf: str) -> str:
    nf = [
        f"<tr><td><code>{h(r['reader'])}</code> {h(r.get('label'))}</td>"
        f"<td class=n>{h(r['stored_count'])}</td><td>{amounts(r['amounts'])}</td>"
        f"<td>{age(r['oldest_age'])}</td><td>{when(r['reported_at'])}</td></tr>"
        for r in report["not_forwarded"]
    ]
    declined = [payment_row(r) for r in report["forwarded_declined"]]
    rejected = [
        f"<tr><td><code>{h(r['reader'])}</code></td><td class=n>{h(r['sequence'])}</td>"
        f"<td>{money(r['amount'], r['currency'])}</td><td>{when(r['stored_at'])}</td>"
        f"<td>{h(r['code'])}</td></tr>"
        for r in report["rejected"]
    ]
    gaps = [
        f"<tr><td><code>{h(g['reader'])}</code></td><td class=n>{h(g['high_water'])}</td>"
        f"<td>{h(', '.join(str(x) for x in g['missing'][:50]) or '—')}</td>"
        f"<td>{h(', '.join(str(x) for x in g['conflicts'][:50]) or '—')}</td></tr>"
        for g in report["sequence_gaps"]
    ]
    joined = []
    for r in report["payments"]:
        hooks = r["webhooks"]
        joined.append(
            f'<tr><td>{h(r["order"])}</td><td><a href="/dashboard/payments/'
            f'{quote(str(r["payment_intent"]), safe="")}">{h(r["payment_intent"])}</a></td>'
            f"<td><code>{h(r['charge'])}</code></td><td>{h(r['status'])}</td>"
            f"<td>{'offline' if r['offline'] else 'online'}</td>"
            f"<td>{h(hooks['delivered'])}/{h(hooks['deliveries'])}"
            f"{' · ' + h(hooks['failed']) + ' failed' if hooks.get('failed') else ''}</td></tr>"
        )
    query = urlencode({"since": since})
    body = (
        f'<form method=get class=filters>Since <input name=since value="{h(since)}"> '
        f"<button>Show</button> <span class=muted>(YYYY-MM-DD, or 24h, 7d; "
        f"CLI: <code>stowpay reconcile --since {h(since)}</code>)</span></form>"
        f"<h2>Stored, not yet forwarded</h2>"
        + _table(
            ("Reader", "Stored", "At risk", "Oldest", "Reported"), nf, "Nothing held by readers."
        )
        + "<h2>Forwarded but declined</h2>"
        + _table(PAYMENT_HEADERS, declined, "None.")
        + "<h2>Rejected records</h2>"
        + _table(("Reader", "Sequence", "Amount", "Sold", "Why"), rejected, "None.")
        + "<h2>Gaps in reader sequences</h2>"
        + _table(("Reader", "Highest", "Missing", "Used twice"), gaps, "No gaps.")
        + "<h2>Order ↔ PaymentIntent ↔ charge ↔ webhooks</h2>"
        + _table(
            ("Order", "PaymentIntent", "Charge", "Status", "Taken", "Webhooks delivered"),
            joined,
            "No payments.",
        )
        + f'<p class=muted><a href="/dashboard/reconciliation?{h(query)}">permalink</a></p>'
    )
    return layout("Reconciliation", body, csrf=csrf)


def message(title: str, text: str, *, csrf: str | None) -> str:
    return layout(title, f"<p>{h(text)}</p>", csrf=csrf)
