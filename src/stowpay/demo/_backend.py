"""The demo's merchant backend: hands out connection tokens and receives signed webhooks.

What a real merchant runs beside its POS: it holds the secret key (the POS never does), mints
connection tokens for the Terminal SDK's `ConnectionTokenProvider`, and verifies every webhook
with its endpoint secret before trusting it. Plain `http.server` on loopback, in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2 as httpx

from ..wire import signing


class BackendError(Exception):
    """The cloud refused the backend's call."""


@dataclass
class Webhook:
    """A verified event, as the backend recorded it."""

    id: str
    type: str
    object_id: str
    order_id: str | None


@dataclass
class MerchantBackend:
    """A merchant's server: the cloud's secret key stays here."""

    cloud_url: str
    secret_key: str = field(repr=False)
    webhooks: list[Webhook] = field(default_factory=list)
    rejected: int = 0
    endpoint_secret: str | None = field(default=None, repr=False)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- calls to the cloud ------------------------------------------------------------------

    def api(self, method: str, path: str, data: dict[str, str] | None = None) -> dict[str, Any]:
        """Call the cloud's `/v1` API with the secret key (form-encoded, as Stripe's)."""
        r = httpx.request(
            method,
            self.cloud_url + path,
            data=data,
            auth=(self.secret_key, ""),
            timeout=10,
        )
        body = dict(r.json())
        if r.status_code != 200:
            raise BackendError(body.get("error", {}).get("message", r.text))
        return body

    def connection_token(self, location: str | None = None) -> str:
        """A fresh connection token for the POS (what its token provider asks for)."""
        data = {"location": location} if location else {}
        return str(self.api("POST", "/v1/terminal/connection_tokens", data)["secret"])

    # -- the webhook receiver ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the backend listens."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> MerchantBackend:
        """Listen on a free loopback port and register the webhook endpoint at the cloud."""
        backend = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive: the cloud's webhook sender reuses connections, and an HTTP/1.0
            # server closing each one under it turns deliveries into read errors and retries.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length)
                ok = backend._receive(payload, self.headers.get("Stripe-Signature", ""))
                self.send_response(200 if ok else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo narrates; no access log

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        endpoint = self.api(
            "POST",
            "/v1/webhook_endpoints",
            {"url": self.url + "/webhook", "enabled_events[0]": "*"},
        )
        self.endpoint_secret = str(endpoint["secret"])
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _receive(self, payload: bytes, signature: str) -> bool:
        assert self.endpoint_secret is not None
        try:
            signing.verify(self.endpoint_secret, payload, signature, now=time.time())
            event = json.loads(payload)
            obj = event["data"]["object"]
            metadata = obj.get("metadata") or {}
            hook = Webhook(event["id"], event["type"], obj["id"], metadata.get("order_id"))
        except (signing.SignatureError, ValueError, KeyError, TypeError):
            with self._lock:
                self.rejected += 1
            return False
        with self._lock:
            self.webhooks.append(hook)
        return True

    def events_for(self, object_id: str) -> list[str]:
        """The event types received for one object, in arrival order."""
        with self._lock:
            return [w.type for w in self.webhooks if w.object_id == object_id]
