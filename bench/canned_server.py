"""A server that answers the benchmark's three calls with fixed JSON: the client's own limit.

    python bench/canned_server.py PORT [--busy-ms MS]

A bare ASGI callable under uvicorn (uvloop + httptools when installed). It does no auth, no
parsing and no storage: `POST /v1/payment_intents` answers a PaymentIntent in
`requires_confirmation`, `.../confirm` one in `requires_capture`, `.../capture` one in
`succeeded`. The bodies have the same fields and layout (compact one-line JSON, as
`stowpay.wire.jsontext` writes) as Stowpay's answers, so the client spends the same effort
decoding them.

With `--busy-ms MS` it first spends MS milliseconds of its own CPU time on each answer (a
busy loop, no I/O): an ideal server whose every request costs exactly that much. The
benchmark's `budget` target runs it to show how much server time per request a rate allows.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import uvicorn

PI_ID = "pi_3CannedCannedCannedCanned"


def _payment_intent(status: str) -> bytes:
    authorized = status != "requires_confirmation"
    captured = status == "succeeded"
    pi: dict[str, Any] = {
        "id": PI_ID,
        "object": "payment_intent",
        "amount": 1000,
        "amount_capturable": 1000 if authorized and not captured else 0,
        "amount_details": {"tip": {}},
        "amount_received": 1000 if captured else 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "manual",
        "client_secret": f"{PI_ID}_secret_CannedCannedCannedCanned",
        "confirmation_method": "automatic",
        "created": 1764000000,
        "currency": "usd",
        "customer": None,
        "description": None,
        "last_payment_error": None,
        "latest_charge": "ch_3CannedCannedCannedCanned" if authorized else None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": "pm_1CannedCannedCannedCanned",
        "payment_method_configuration_details": None,
        "payment_method_options": {"card": {}},
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }
    return json.dumps(pi, separators=(",", ":")).encode()


CREATED = _payment_intent("requires_confirmation")
CONFIRMED = _payment_intent("requires_capture")
CAPTURED = _payment_intent("succeeded")
NOT_FOUND = json.dumps({"error": {"type": "invalid_request_error", "message": "not canned"}})


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", b"req_CannedCannedCanned"),
        (b"stripe-version", b"2026-10-28.endive"),
    ]


#: CPU seconds each answer spends before it is sent (`--busy-ms`).
BUSY = 0.0


def _busy() -> None:
    # Thread CPU time, not wall time: a host busy with other work stretches the wall time of
    # the loop, while the cost per request stays what it says.
    end = time.thread_time() + BUSY
    while time.thread_time() < end:
        pass


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body
        message = await receive()
        more = message.get("more_body", False)
    path: str = scope["path"]
    status, body = 200, NOT_FOUND.encode()
    if scope["method"] == "POST":
        if path == "/v1/payment_intents":
            body = CREATED
        elif path.endswith("/confirm"):
            body = CONFIRMED
        elif path.endswith("/capture"):
            body = CAPTURED
        else:
            status = 404
    else:
        status = 404
    if BUSY:
        _busy()
    await send({"type": "http.response.start", "status": status, "headers": _headers(body)})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--busy-ms", type=float, default=0.0, help="CPU time spent per answer")
    args = ap.parse_args()
    port = args.port
    BUSY = args.busy_ms / 1000
    print(f"canned on 127.0.0.1:{port}, {args.busy_ms:g} ms of CPU per answer", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
