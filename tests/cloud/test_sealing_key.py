"""The sealing key's private half never leaves the cloud: no API answer carries it."""

from __future__ import annotations

import base64
import re

import httpx2 as httpx
from cryptography.hazmat.primitives import serialization

from stowpay.cloud.api import api
from stowpay.cloud.sealing import private_sealing_key, public_sealing_key
from stowpay.cloud.testing import LiveCloud


def test_private_sealing_key_is_in_no_answer(cloud: LiveCloud) -> None:
    with cloud.store.write() as tx:
        public = public_sealing_key(tx, cloud.settings.clock)
        private = private_sealing_key(tx, cloud.settings.clock)
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    forms = {
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    headers = {"Authorization": f"Bearer {cloud.accounts[0].secret_key}"}

    def post(path: str, data: dict[str, str]) -> dict[str, str]:
        r = httpx.post(cloud.url + path, data=data, headers=headers)
        assert r.status_code == 200, r.text
        answers.append(r.text)
        return dict(r.json())

    answers: list[str] = []
    location = post("/v1/terminal/locations", {"display_name": "Shop", "address[country]": "US"})
    config = post("/v1/terminal/configurations", {"offline[enabled]": "true"})
    reader = post(
        "/v1/terminal/readers", {"registration_code": "simulated-wpe", "location": location["id"]}
    )
    post("/v1/terminal/connection_tokens", {"location": location["id"]})
    pi = post(
        "/v1/payment_intents",
        {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"},
    )
    ids = {
        "location": location["id"],
        "configuration": config["id"],
        "reader": reader["id"],
        "intent": pi["id"],
        "charge": pi["latest_charge"],
        "payment_method": pi["payment_method"],
    }
    for op in api.operations:
        if op.method != "GET":
            continue
        names = re.findall(r"{(\w+)}", op.path)
        if any(n not in ids for n in names):
            continue
        path = op.path
        for n in names:
            path = path.replace("{" + n + "}", ids[n])
        if path.endswith("/search"):
            path += "?query=amount>0"
        r = httpx.get(cloud.url + path, headers=headers)
        assert r.status_code == 200, (path, r.text)
        answers.append(r.text)
    answers.append(httpx.get(cloud.url + "/openapi.json").text)

    assert len(answers) > 15
    for text in answers:
        for form in forms:
            assert form not in text
    # The public half is what may be handed out; it is not the private one in disguise.
    assert base64.b64decode(public["public_key"]) != raw
