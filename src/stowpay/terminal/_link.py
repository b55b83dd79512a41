"""The SDK's view of a connected reader, whatever its placement.

`ReaderLink` is what `Terminal` calls: the LAN client (`_transport.LanReader`) for a smart
reader, or the in-process core (`_inprocess.InProcessReader`). Both speak the reader's JSON
documents (docs/reader-protocol.md) and raise `TerminalException`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: A reader event (name, data); None: the event stream ended for good (the session is gone).
ReaderEvent = tuple[str, dict[str, Any]]
Deliver = Callable[[ReaderEvent | None], None]


class ReaderLink(Protocol):
    """A reader the SDK holds a session with."""

    def connect(
        self,
        *,
        pos_id: str,
        connection_token: str | None,
        pairing_secret: str | None,
        fail_if_in_use: bool,
    ) -> dict[str, Any]:
        """Open a session: ``{session, pairing_secret, account, location, offline}``."""
        ...

    def disconnect(self) -> None:
        """End the session (quietly if the reader is gone)."""
        ...

    def status(self) -> dict[str, Any]:
        """The reader's status document."""
        ...

    def listen(self, deliver: Deliver) -> None:
        """Send the session's events to `deliver` (from another thread) until it ends."""
        ...

    def answer_token_request(
        self, request_id: str, *, connection_token: str | None, error: str | None
    ) -> None:
        """Answer a ``connection_token_request`` event."""
        ...

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a PaymentIntent."""
        ...

    def collect(self, intent: str, card: dict[str, Any]) -> dict[str, Any]:
        """Read the card for the intent (by its local id)."""
        ...

    def confirm(self, intent: str) -> dict[str, Any]:
        """Confirm the intent (by its local id)."""
        ...

    def cancel(self, intent: str) -> dict[str, Any]:
        """Cancel the intent (by its id or local id)."""
        ...

    def capture(self, intent: str, amount: int | None) -> dict[str, Any]:
        """Capture a forwarded or online intent (by its id)."""
        ...

    def close(self) -> None:
        """Release what the link holds (connections, threads)."""
        ...
