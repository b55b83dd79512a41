"""Run a cloud on loopback inside the current process, for tests and demos."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from .app import create_app
from .domain.accounts import NewAccount, create_account
from .settings import Settings
from .storage import Store


@dataclass
class LiveCloud:
    """A cloud served by uvicorn in a background thread on 127.0.0.1."""

    settings: Settings
    store: Store
    url: str = ""
    _server: Any = None
    _thread: threading.Thread | None = None
    accounts: list[NewAccount] = field(default_factory=list)

    def start(self) -> LiveCloud:
        app = create_app(self.settings, store=self.store)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="live-cloud", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the cloud did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if self.settings.public_url is None:
            self.settings.public_url = self.url  # receipt pages are served here
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def new_account(self) -> NewAccount:
        """Make another account; its secret key is in the result."""
        with self.store.write() as tx:
            new = create_account(tx, self.settings.clock, self.settings.ids)
        self.accounts.append(new)
        return new

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.store.close()


def live_cloud(settings: Settings) -> LiveCloud:
    """Start a cloud for `settings` (its database migrated) and return it."""
    store = Store(settings.db)
    store.migrate()
    return LiveCloud(settings, store).start()
