"""Several cloud processes on one PostgreSQL behind nginx, on loopback (tests and bench).

`Balancer` runs Debian's nginx as a child process with its own configuration, pid, logs and
temporary files in a scratch folder: in the foreground (`daemon off`), listening on
127.0.0.1 only. It spreads requests round-robin over the cloud processes and passes a request
whose process refused or dropped the connection to the next one, POSTs included
(`non_idempotent`): every POST the readers and the official client make carries a key that
makes a second try safe (a forwarded record's own key, an `Idempotency-Key`).

`Cluster` starts the cloud processes (`stowpay cloud serve --db <PostgreSQL URL>`) and the
balancer, and can kill one process or start it again.
"""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
from procs import Process, free_port, wait_for


def nginx_binary() -> str | None:
    """Where nginx is installed (Debian puts it in /usr/sbin), or None."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


CONFIG = """\
worker_processes 1;
daemon off;
master_process on;
{user}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$request_method $uri $status $upstream_addr';
    access_log {root}/access.log upstream;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    # A forwarded batch of 500 records is a few MB: kept in memory, never refused.
    client_max_body_size 16m;
    client_body_buffer_size 16m;
    upstream cloud {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://cloud;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            # A process that died: the request goes to the next one, POSTs too (see above).
            proxy_next_upstream error timeout non_idempotent;
            proxy_next_upstream_tries 0;
        }}
    }}
}}
"""


class Balancer:
    """nginx in the foreground on 127.0.0.1, in front of `backends` (ports)."""

    def __init__(self, root: Path, backends: list[int]) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in backends
        )
        # As root, nginx's workers would otherwise switch to `nobody`, who cannot write here.
        user = f"user {getpass.getuser()};" if getpass.getuser() == "root" else ""
        conf = root / "nginx.conf"
        conf.write_text(CONFIG.format(root=root, servers=servers, port=self.port, user=user))
        self.log = (root / "nginx.out").open("a")
        self.proc = subprocess.Popen(
            [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for("nginx", self._listening, timeout=15)

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {(self.root / 'error.log').read_text()[-2000:]}")
        httpx.get(self.url + "/openapi.json", timeout=2)
        return True

    def served(self, path: str) -> Counter[str]:
        """How many requests for `path` each cloud process answered (by its address, in the
        order they first answered one)."""
        counts: Counter[str] = Counter()
        for line in (self.root / "access.log").read_text().splitlines():
            _, uri, _, upstream = [*line.split(" ", 3), "", "", "", ""][:4]
            if uri == path:
                counts[upstream.split(",")[-1].strip()] += 1
        return counts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Cluster:
    """`count` cloud processes on the PostgreSQL database `db`, behind one `Balancer`."""

    def __init__(self, db: str, count: int, root: Path, *, webhook_timeout: float = 10.0):
        self.db = db
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.webhook_timeout = webhook_timeout
        self.ports = [free_port() for _ in range(count)]
        self.clouds: list[Process | None] = [None] * count
        for i in range(count):
            self.start(i)
        self.balancer = Balancer(root / "nginx", self.ports)
        self.url = self.balancer.url

    def start(self, i: int) -> None:
        """Start (or start again) cloud process `i` and wait until it answers."""
        args = ["cloud", "serve", "--db", self.db, "--port", str(self.ports[i])]
        args += ["--log-level", "warning", "--webhook-timeout", str(self.webhook_timeout)]
        self.clouds[i] = proc = Process(args, self.logs / f"cloud{i}.log")
        proc.expect("Stowpay cloud on")
        url = f"http://127.0.0.1:{self.ports[i]}"
        wait_for(f"cloud {i}", lambda: httpx.get(url + "/openapi.json").status_code == 200)

    def kill(self, i: int) -> None:
        """SIGKILL cloud process `i`: no shutdown, its transactions cut off where they were."""
        proc = self.clouds[i]
        assert proc is not None
        proc.kill()
        self.clouds[i] = None

    def close(self) -> None:
        self.balancer.stop()
        for proc in self.clouds:
            if proc is not None:
                proc.stop()


class EventCounter:
    """A merchant's webhook receiver on loopback: counts the deliveries of each event id and
    answers 200 to every one."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with counter.lock:
                    counter.seen[str(json.loads(body)["id"])] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 512  # every process's dispatcher sends up to 20 at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.seen)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(what: str, check: Any, timeout: float) -> None:
    """Poll `check()` until true (no HTTP involved); fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
