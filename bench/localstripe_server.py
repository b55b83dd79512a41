"""Serve localstripe's own aiohttp app on loopback, for the benchmark only.

    python bench/localstripe_server.py PORT STATE_DIR [--no-persist]

Differences from the `localstripe` command, and nothing else:
  * it listens on 127.0.0.1 only (the command binds every interface);
  * its store is pickled to STATE_DIR/localstripe.pickle (the command uses a fixed /tmp path);
  * it always starts empty (like `--from-scratch`).
With --no-persist the pickle written after every store change and every POST is skipped:
a diagnostic variant showing what localstripe costs without its persistence.
The access log goes to stderr, as the command does it.
"""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

from aiohttp import web
from localstripe import resources, server


def main() -> None:
    port = int(sys.argv[1])
    state = Path(sys.argv[2]) / "localstripe.pickle"
    persist = "--no-persist" not in sys.argv[3:]

    def save(store: resources.Store) -> None:
        if persist:
            with state.open("wb") as fh:
                pickle.dump(store, fh, protocol=pickle.HIGHEST_PROTOCOL)

    # The class method is what both the store's writes and the POST middleware call.
    resources.Store.dump_to_disk = save  # type: ignore[method-assign]

    access = logging.getLogger("aiohttp.access")
    access.setLevel(logging.DEBUG)
    access.addHandler(logging.StreamHandler(sys.stderr))
    print(f"localstripe on 127.0.0.1:{port} persist={persist} state={state}", flush=True)
    web.run_app(server.app, host="127.0.0.1", port=port, access_log=access, print=None)


if __name__ == "__main__":
    main()
