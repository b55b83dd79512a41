"""An HTTP proxy that loses messages on purpose, to show that lost messages do no harm.

It sits between a reader and the cloud on loopback and, per request, by a seeded draw:

- passes it through;
- drops the request: the connection is closed before anything reaches the cloud;
- drops the response: the request reaches the cloud, the cloud commits and answers, and
  the proxy closes the connection instead of passing the answer on. To the reader this is
  a timeout or a reset, indistinguishable from a request that never arrived: the case
  exactly-once forwarding exists for.

HTTP/1.1 with keep-alive on both sides; bodies by Content-Length (what httpx and uvicorn
send). Each client connection gets its own upstream connection, so a dropped answer never
leaves a stale response in a shared socket.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

import h11

#: What the proxy may do to one request.
PASS, DROP_REQUEST, DROP_RESPONSE = "pass", "drop_request", "drop_response"


@dataclass
class Faults:
    """Probabilities of each fault per request; paths not starting with `only` pass."""

    drop_request: float = 0.0
    drop_response: float = 0.0
    #: only requests whose path starts with this are subject to faults
    only: str = "/"
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.drop_request + self.drop_response <= 1:
            raise ValueError("fault probabilities must add up to at most 1")
        self.rng = random.Random(self.seed)

    def decide(self, path: str) -> str:
        """The fate of the next request to `path` (one draw of the seeded generator)."""
        if not path.startswith(self.only):
            return PASS
        draw = self.rng.random()
        if draw < self.drop_request:
            return DROP_REQUEST
        if draw < self.drop_request + self.drop_response:
            return DROP_RESPONSE
        return PASS


class _Closed(Exception):
    pass


async def _read_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data and conn.their_state is h11.IDLE:
                raise _Closed  # the peer hung up between messages: a clean end
            conn.receive_data(data)  # b"" is end of stream: h11 says closed, or raises
            continue
        return event


async def _read_message(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | h11.Response, bytes]:
    head = await _read_event(conn, reader)
    if isinstance(head, h11.ConnectionClosed):
        raise _Closed
    if not isinstance(head, h11.Request | h11.Response):
        raise _Closed
    body = bytearray()
    while True:
        event = await _read_event(conn, reader)
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return head, bytes(body)
        else:
            raise _Closed


class FaultProxy:
    """A proxy from `listen` to `upstream` (host, port) that applies `faults`.

    Run it in a thread with `start()` / `stop()`; `counts` tells what it did.
    """

    def __init__(self, upstream: tuple[str, int], faults: Faults, *, host: str = "127.0.0.1"):
        self.upstream = upstream
        self.faults = faults
        self.host = host
        self.port = 0
        self.counts: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """Where clients connect (the port is known once started)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        """Listen on a free port of `host` in a background thread."""
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        """Stop listening, end every open connection, and end the thread."""
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(
            asyncio.start_server(self._serve, self.host, self.port)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = h11.Connection(h11.SERVER)
        up_reader: asyncio.StreamReader | None = None
        up_writer: asyncio.StreamWriter | None = None
        upstream = h11.Connection(h11.CLIENT)
        try:
            while True:
                request, body = await _read_message(client, reader)
                assert isinstance(request, h11.Request)
                fate = self.faults.decide(request.target.decode("latin-1"))
                self._count(fate)
                if fate == DROP_REQUEST:
                    return
                if up_writer is None:
                    up_reader, up_writer = await asyncio.open_connection(*self.upstream)
                assert up_reader is not None
                headers = [(k, v) for k, v in request.headers if k.lower() != b"host"]
                headers.append((b"host", f"{self.upstream[0]}:{self.upstream[1]}".encode()))
                up_writer.write(
                    upstream.send(
                        h11.Request(method=request.method, target=request.target, headers=headers)
                    )
                    or b""
                )
                up_writer.write(upstream.send(h11.Data(data=body)) or b"")
                up_writer.write(upstream.send(h11.EndOfMessage()) or b"")
                await up_writer.drain()
                response, answer = await _read_message(upstream, up_reader)
                assert isinstance(response, h11.Response)
                if fate == DROP_RESPONSE:
                    return
                writer.write(
                    client.send(
                        h11.Response(
                            status_code=response.status_code,
                            headers=response.headers,
                            reason=response.reason,
                        )
                    )
                    or b""
                )
                writer.write(client.send(h11.Data(data=answer)) or b"")
                writer.write(client.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if client.our_state is h11.MUST_CLOSE or upstream.our_state is h11.MUST_CLOSE:
                    return
                client.start_next_cycle()
                upstream.start_next_cycle()
        except _Closed:
            pass
        except (h11.ProtocolError, ConnectionError, OSError):
            self._count("broken")
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
