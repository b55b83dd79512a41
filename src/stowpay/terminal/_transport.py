"""The LAN client for a smart reader: JSON calls with timeouts, and the event stream.

Every call has a timeout; a reader that is gone, hangs or answers garbage gives a
`TerminalException`, never a hang. The event stream (``GET /v1/events``, server-sent events)
is read by a thread of its own, which reconnects while the session lives and reports the
end of the session (`None`) when the reader no longer knows it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2 as httpx
import structlog

from .. import __version__
from ..wire.terminal_codes import ErrorCode
from ._errors import TerminalException, _error_from_wire
from ._link import Deliver, ReaderEvent

log = structlog.get_logger("stowpay.terminal.transport")

USER_AGENT = f"stowpay-terminal/{__version__}"
#: The reader sends a comment every 15 s on an idle stream; silence longer than this is death.
STREAM_READ_TIMEOUT = 40.0
#: Pause between attempts to reopen a broken event stream.
STREAM_RETRY = 0.5


class LanReader:
    """A smart reader's LAN API at `url`."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )
        self._session: str | None = None
        self._stop = threading.Event()
        self._stream_thread: threading.Thread | None = None
        self._stream: httpx.Response | None = None

    # -- calls ---------------------------------------------------------------------------------

    def connect(
        self,
        *,
        pos_id: str,
        connection_token: str | None,
        pairing_secret: str | None,
        fail_if_in_use: bool,
    ) -> dict[str, Any]:
        """Open a session (``POST /v1/connect``)."""
        body: dict[str, Any] = {"pos_id": pos_id, "fail_if_in_use": fail_if_in_use}
        if connection_token is not None:
            body["connection_token"] = connection_token
        if pairing_secret is not None:
            body["pairing_secret"] = pairing_secret
        answer = self._call("POST", "/v1/connect", body, session=False)
        session = answer.get("session")
        if not isinstance(session, str):
            raise _garbled(self.url, "/v1/connect")
        self._session = session
        return answer

    def disconnect(self) -> None:
        """End the session; a reader already gone is no error."""
        self._stop.set()
        if self._session is not None:
            try:
                self._call("POST", "/v1/disconnect", {}, timeout=min(self._timeout, 5.0))
            except TerminalException as exc:
                log.info("disconnect_not_acknowledged", code=exc.code.value)
        self._session = None
        self._end_stream()

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        return self._call("GET", "/v1/status", None, session=False)

    def answer_token_request(
        self, request_id: str, *, connection_token: str | None, error: str | None
    ) -> None:
        """``POST /v1/connection_token``."""
        body: dict[str, Any] = {"request_id": request_id}
        if connection_token is not None:
            body["connection_token"] = connection_token
        if error is not None:
            body["error"] = error[:500]
        self._call("POST", "/v1/connection_token", body)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/payment_intents``."""
        return self._call("POST", "/v1/payment_intents", body)

    def collect(self, intent: str, card: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/payment_intents/{intent}/collect``."""
        return self._call("POST", f"/v1/payment_intents/{intent}/collect", {"card": card})

    def confirm(self, intent: str) -> dict[str, Any]:
        """``POST /v1/payment_intents/{intent}/confirm``."""
        return self._call("POST", f"/v1/payment_intents/{intent}/confirm", {})

    def cancel(self, intent: str) -> dict[str, Any]:
        """``POST /v1/payment_intents/{intent}/cancel``."""
        return self._call("POST", f"/v1/payment_intents/{intent}/cancel", {})

    def capture(self, intent: str, amount: int | None) -> dict[str, Any]:
        """``POST /v1/payment_intents/{intent}/capture``."""
        body = {} if amount is None else {"amount_to_capture": amount}
        return self._call("POST", f"/v1/payment_intents/{intent}/capture", body)

    def close(self) -> None:
        """Stop the event stream and close the connection pool."""
        self._stop.set()
        self._end_stream()
        thread = self._stream_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        session: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        headers = {}
        if session:
            if self._session is None:
                raise TerminalException(
                    ErrorCode.NOT_CONNECTED_TO_READER,
                    "No reader is connected: call connect_reader first.",
                )
            headers["Authorization"] = f"Bearer {self._session}"
        try:
            response = self._client.request(
                method,
                path,
                json=body if method != "GET" else None,
                headers=headers,
                timeout=timeout if timeout is not None else self._timeout,
            )
        except httpx.TimeoutException:
            raise TerminalException(
                ErrorCode.NOT_CONNECTED_TO_READER,
                f"The reader at {self.url} did not answer in time ({method} {path}). If this "
                "was a confirm, the payment may have been stored: check "
                "get_offline_status(), reconnect and confirm again (a repeated confirm "
                "answers the same payment).",
            ) from None
        except httpx.HTTPError as exc:
            raise TerminalException(
                ErrorCode.NOT_CONNECTED_TO_READER,
                f"The reader at {self.url} cannot be reached ({type(exc).__name__}): check it "
                "is on and on this network, then connect_reader again.",
            ) from None
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise _garbled(self.url, path)
        if response.status_code >= 400:
            error = doc.get("error")
            if not isinstance(error, dict):
                raise _garbled(self.url, path)
            raise _error_from_wire(error)
        return doc

    # -- events --------------------------------------------------------------------------------

    def listen(self, deliver: Deliver) -> None:
        """Read the session's event stream in a thread; `deliver(None)` once the session ended."""
        session = self._session
        if session is None:
            raise TerminalException(ErrorCode.NOT_CONNECTED_TO_READER)
        self._stop.clear()
        self._stream_thread = threading.Thread(
            target=self._pump, args=(session, deliver), name="stowpay-terminal-events", daemon=True
        )
        self._stream_thread.start()

    def _pump(self, session: str, deliver: Deliver) -> None:
        timeout = httpx.Timeout(self._timeout, read=STREAM_READ_TIMEOUT)
        headers = {"Authorization": f"Bearer {session}", "Accept": "text/event-stream"}
        while not self._stop.is_set() and self._session == session:
            try:
                with self._client.stream(
                    "GET", "/v1/events", headers=headers, timeout=timeout
                ) as response:
                    if response.status_code == 401:
                        break  # the reader no longer knows this session
                    if response.status_code != 200:
                        raise httpx.TransportError(f"events answered {response.status_code}")
                    self._stream = response
                    for event in _events(response):
                        deliver(event)
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                # The reader went away or the stream broke; try again while the session lives.
                log.info("event_stream_broken", error=type(exc).__name__)
            finally:
                self._stream = None
            self._stop.wait(STREAM_RETRY)
        if self._session == session and not self._stop.is_set():
            self._session = None
            deliver(None)

    def _end_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing from another thread may race the reader; harmless
                log.debug("event_stream_close_failed", exc_info=True)


def _events(response: httpx.Response) -> Iterator[ReaderEvent]:
    """Parse server-sent events: yields (name, data) pairs."""
    name: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if name is not None and data:
                doc = json.loads("\n".join(data))
                if isinstance(doc, dict):
                    event: ReaderEvent = (name, doc)
                    yield event
            name, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _garbled(url: str, path: str) -> TerminalException:
    return TerminalException(
        ErrorCode.UNEXPECTED_SDK_ERROR,
        f"The reader at {url} answered {path} with something that is not its protocol: is "
        "this address a Stowpay reader?",
    )
