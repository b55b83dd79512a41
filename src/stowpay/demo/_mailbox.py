"""The demo's customer mailbox: the smallest SMTP server that takes the cloud's receipts.

It speaks just enough SMTP (RFC 5321: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) for
`smtplib` to hand it a message, keeps each message whole, and listens on loopback only. It is
a stand-in for the merchant's mail server, so `stowpay demo` needs nothing installed.
"""

from __future__ import annotations

import socketserver
import threading
from email import message_from_bytes, policy
from email.message import Message


class Mailbox:
    """Accepts mail on 127.0.0.1 (a free port) and keeps what it accepted."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None

    @property
    def url(self) -> str:
        """The `--smtp-url` of this mailbox."""
        assert self._server is not None
        return f"smtp://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Mailbox:
        """Listen in a background thread."""
        mailbox = self

        class Session(socketserver.StreamRequestHandler):
            timeout = 30

            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 stowpay-demo ESMTP")
                while True:
                    line = self.rfile.readline(1024)
                    if not line:
                        return
                    verb = line[:4].decode(errors="replace").upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 stowpay-demo")
                    elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        if not self.data():
                            return
                        self.reply("250 OK: queued")
                    elif verb == "QUIT":
                        self.reply("221 Bye")
                        return
                    else:
                        self.reply("502 Command not implemented")

            def data(self) -> bool:
                lines: list[bytes] = []
                while True:
                    line = self.rfile.readline(1 << 16)
                    if not line:
                        return False
                    if line in (b".\r\n", b".\n"):
                        break
                    lines.append(line[1:] if line.startswith(b"..") else line)
                with mailbox._lock:
                    mailbox.messages.append(message_from_bytes(b"".join(lines), policy=policy.SMTP))
                return True

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Session)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def received(self) -> list[Message]:
        """The messages accepted so far."""
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
