"""Log lines never carry a secret or a card number, at any depth (`stowpay.logs`)."""

from __future__ import annotations

import logging

from stowpay import logs

PAN = "4242424242424242"


def test_secrets_by_name_and_card_numbers_in_any_text_at_any_depth_are_masked() -> None:
    event = {
        "event": f"paid with {PAN}",
        "api_key": "sk_test_abc",
        "body": {"note": f"card {PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}", "token": "x"},
        "items": [PAN, ("path", f"/v1/payment_methods/{PAN}"), 7],
        "count": 3,
    }
    masked = logs._mask_event(None, "info", dict(event))
    assert masked["api_key"] == "****" and masked["body"]["token"] == "****"
    assert masked["count"] == 3 and masked["items"][2] == 7
    assert "4242" not in repr(masked), masked
    assert masked["event"] == "paid with " + "*" * 16


def test_uvicorns_access_lines_are_masked() -> None:
    logs._mask_access_log()  # what `configure` installs, without configuring structlog
    access = logging.getLogger("uvicorn.access")
    lines: list[str] = []
    # A handler on the logger itself: uvicorn's own set-up (run by live servers in other
    # tests) stops these records from reaching the root logger.
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        access.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/v1/x/{PAN}?q={PAN}", "1.1", 404
        )
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    (line,) = lines
    assert "4242" not in line and line.endswith('HTTP/1.1" 404'), line
