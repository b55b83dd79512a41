"""`stowpay cloud serve --smtp-url`: a URL it cannot use is one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stowpay.cloud.mailer import SmtpUrlError, parse_smtp_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:1025", ("smtp", "127.0.0.1", 1025, None, None)),
        ("smtp://mail.example", ("smtp", "mail.example", 25, None, None)),
        ("smtps://u%40x:p%3As@mail.example", ("smtps", "mail.example", 465, "u@x", "p:s")),
        ("smtp+starttls://mail.example", ("smtp+starttls", "mail.example", 587, None, None)),
    ],
)
def test_smtp_urls(url: str, expected: tuple[object, ...]) -> None:
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1:1025", "smtp://", "smtp://h:port", "1025"])
def test_unusable_smtp_urls(url: str) -> None:
    with pytest.raises(SmtpUrlError):
        parse_smtp_url(url)


def test_serve_refuses_an_unusable_smtp_url(tmp_path: Path) -> None:
    args = ["cloud", "serve", "--db", str(tmp_path / "c.db"), "--port", "0"]
    run = subprocess.run(
        [sys.executable, "-m", "stowpay.cli", *args, "--smtp-url", "http://127.0.0.1:1025"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert "--smtp-url" in run.stderr and "smtp://" in run.stderr
