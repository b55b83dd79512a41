"""The simulated network between the reader and the cloud: an httpx transport, so the reader's
real `HttpCloudLink` (its encoding, decoding and error mapping) runs unchanged over it.

Per request, one seeded draw decides its fate: delivered; lost before the cloud; lost after
the cloud committed (the reader sees a timeout); delivered twice; or held in the network and
delivered later, after other requests (reordering; the reader sees a timeout at once). While
the link is partitioned or the cloud is down, nothing gets through.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx2 as httpx

if TYPE_CHECKING:
    from .cloud import SimCloud
    from .trace import Trace

PASS, DROP_REQUEST, DROP_RESPONSE, DUPLICATE, DELAY = (
    "pass",
    "drop_request",
    "drop_response",
    "duplicate",
    "delay",
)


@dataclass
class Faults:
    """The link's fault probabilities (all zero: a healed network)."""

    drop_request: float = 0.0
    drop_response: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0


@dataclass(frozen=True)
class _Held:
    due: int
    method: str
    path: str
    authorization: str | None
    body: bytes


@dataclass
class SimNetwork(httpx.BaseTransport):
    """The reader's uplink. `tick` is the simulation's clock for held messages."""

    cloud: SimCloud
    rng: random.Random
    trace: Trace
    faults: Faults = field(default_factory=Faults)
    partitioned: bool = False
    cloud_down: bool = False
    tick: int = 0
    held: list[_Held] = field(default_factory=list)
    requests: int = 0

    @property
    def reachable(self) -> bool:
        """Whether anything can get through now."""
        return not (self.partitioned or self.cloud_down)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        body = request.read()
        authorization = request.headers.get("authorization")
        self.requests += 1
        name = path.removeprefix("/device/v1")
        if not self.reachable:
            self.trace.add(self.tick, "net.unreachable", method, name)
            raise httpx.ConnectError("simulated: no route to the cloud", request=request)
        fate = self._fate()
        if fate == DROP_REQUEST:
            self.trace.add(self.tick, "net.drop_request", method, name)
            raise httpx.ConnectError("simulated: request lost", request=request)
        if fate == DELAY:
            due = self.tick + self.rng.randint(1, 8)
            self.held.append(_Held(due, method, path, authorization, body))
            self.trace.add(self.tick, "net.delay", method, name, f"until={due}")
            raise httpx.ReadTimeout("simulated: no answer in time", request=request)
        status, answer = self.cloud.serve(method, path, authorization, body)
        self.trace.add(self.tick, "net.served", method, name, status)
        if fate == DUPLICATE:
            again, repeated = self.cloud.serve(method, path, authorization, body)
            self.trace.add(self.tick, "net.duplicate", method, name, again)
            if self.rng.random() < 0.5:
                status, answer = again, repeated
        if fate == DROP_RESPONSE:
            self.trace.add(self.tick, "net.drop_response", method, name)
            raise httpx.ReadTimeout("simulated: answer lost", request=request)
        return httpx.Response(
            status, content=answer, headers={"content-type": "application/json"}, request=request
        )

    def _fate(self) -> str:
        f = self.faults
        draw = self.rng.random()
        for fate, p in (
            (DROP_REQUEST, f.drop_request),
            (DROP_RESPONSE, f.drop_response),
            (DUPLICATE, f.duplicate),
            (DELAY, f.delay),
        ):
            if draw < p:
                return fate
            draw -= p
        return PASS

    def deliver_held(self, *, everything: bool = False) -> None:
        """Deliver the held requests that are due (their answers go nowhere); a request that
        finds the cloud down or the link cut is lost."""
        due = [h for h in self.held if everything or h.due <= self.tick]
        self.held = [h for h in self.held if h not in due]
        for h in due:
            name = h.path.removeprefix("/device/v1")
            if not self.reachable:
                self.trace.add(self.tick, "net.late_lost", h.method, name)
                continue
            status, _ = self.cloud.serve(h.method, h.path, h.authorization, h.body)
            self.trace.add(self.tick, "net.late", h.method, name, status)
