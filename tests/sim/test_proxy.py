"""The fault-injecting proxy: what it drops, it drops after (or before) the cloud committed."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest

from stowpay.cloud.testing import LiveCloud
from stowpay.sim.proxy import DROP_REQUEST, DROP_RESPONSE, PASS, FaultProxy, Faults

PI = {"amount": "1000", "currency": "usd"}


def _through(cloud: LiveCloud, faults: Faults) -> Iterator[FaultProxy]:
    where = urlsplit(cloud.url)
    proxy = FaultProxy((where.hostname or "127.0.0.1", where.port or 80), faults).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def lossy(cloud: LiveCloud) -> Iterator[FaultProxy]:
    yield from _through(cloud, Faults(drop_response=0.5, seed=7, only="/v1/payment_intents"))


def _count(cloud: LiveCloud) -> int:
    key = cloud.accounts[0].secret_key
    r = httpx.get(f"{cloud.url}/v1/payment_intents?limit=100", auth=(key, ""))
    return len(r.json()["data"])


def test_a_dropped_answer_was_committed_and_a_retry_replays_it(
    cloud: LiveCloud, lossy: FaultProxy
) -> None:
    key = cloud.accounts[0].secret_key
    made: set[str] = set()
    lost = 0
    with httpx.Client(base_url=lossy.url, auth=(key, ""), timeout=5) as client:
        for i in range(40):
            headers = {"Idempotency-Key": f"order-{i}"}
            while True:
                try:
                    r = client.post("/v1/payment_intents", data=PI, headers=headers)
                except httpx.TransportError:
                    lost += 1
                    continue
                assert r.status_code == 200, r.text
                made.add(r.json()["id"])
                break
    assert lossy.counts[DROP_RESPONSE] == lost > 5
    assert lossy.counts[PASS] == 40
    # Every lost answer belonged to a request the cloud had committed: the retry replayed it.
    assert len(made) == 40 == _count(cloud)


def test_a_dropped_request_never_reaches_the_cloud(cloud: LiveCloud) -> None:
    key = cloud.accounts[0].secret_key
    for proxy in _through(cloud, Faults(drop_request=1.0)):
        with httpx.Client(base_url=proxy.url, auth=(key, ""), timeout=5) as client:
            for _ in range(5):
                with pytest.raises(httpx.TransportError):
                    client.post("/v1/payment_intents", data=PI)
        assert proxy.counts[DROP_REQUEST] == 5
    assert _count(cloud) == 0


def test_paths_outside_the_faulted_prefix_pass(cloud: LiveCloud) -> None:
    key = cloud.accounts[0].secret_key
    for proxy in _through(cloud, Faults(drop_request=1.0, only="/device/")):
        with httpx.Client(base_url=proxy.url, auth=(key, ""), timeout=5) as client:
            for _ in range(3):
                assert client.post("/v1/payment_intents", data=PI).status_code == 200
    assert _count(cloud) == 3


def test_probabilities_are_checked() -> None:
    with pytest.raises(ValueError):
        Faults(drop_request=0.7, drop_response=0.7)


def test_a_dropped_answer_is_dropped_after_the_cloud_acted(
    cloud: LiveCloud, lossy: FaultProxy
) -> None:
    key = cloud.accounts[0].secret_key
    answered = 0
    with httpx.Client(base_url=lossy.url, auth=(key, ""), timeout=5) as client:
        for _ in range(30):
            try:
                client.post("/v1/payment_intents", data=PI)  # no Idempotency-Key
                answered += 1
            except httpx.TransportError:
                pass
    assert 0 < lossy.counts[DROP_RESPONSE] == 30 - answered
    assert _count(cloud) == 30
