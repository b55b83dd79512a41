"""A/B of two versions of the cloud: flows interleaved one by one, the canned server beside them.

    python bench/flows_ab.py --base-ref HEAD~1 [--seconds 60]

Starts three servers on 127.0.0.1, each with a fresh store: Stowpay from the code at
`--base-ref` (that commit's `src/`, taken with `git archive` and run through `PYTHONPATH`),
Stowpay from the code installed here, and the canned server (`canned_server.py`, the client's
limit). Then one client thread runs create + confirm + capture (as `flows.py` does) on each
in turn, one flow at a time, for `--seconds`. Interleaving flow by flow puts every target
through the same moments of a shared, noisy machine, so a difference of 1-2 % shows where
`flows.py`'s runs of 20 s, one target after another, spread by 5-10 %. It measures a
change; `flows.py` measures the targets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import stripe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import flows  # noqa: E402

WARMUP_FLOWS = 20


def base_source(ref: str, into: Path) -> Path:
    """The `src/` folder of commit `ref`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def one_flow(server: flows.Server) -> Callable[[], None]:
    client = stripe.StripeClient(
        server.key, base_addresses={"api": server.url}, max_network_retries=0
    )
    intents = client.v1.payment_intents
    create = {"amount": 1000, "currency": "usd", "capture_method": "manual"}
    create["payment_method"] = "pm_card_visa"

    def flow() -> None:
        pi = intents.create(params=create)  # type: ignore[arg-type]
        pi = intents.confirm(pi.id)
        if pi.status != "requires_capture":
            raise AssertionError(f"after confirm: {pi.status}")
        pi = intents.capture(pi.id)
        if pi.status != "succeeded":
            raise AssertionError(f"after capture: {pi.status}")

    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-ref", required=True, help="the commit to compare against")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stowpay-bench-ab-"))
    base_src = base_source(args.base_ref, work)
    names = [f"base ({args.base_ref})", "this", "canned"]
    servers: list[flows.Server] = []
    try:
        here = dict(os.environ)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(base_src), here.get("PYTHONPATH")) if p
        )
        servers.append(flows.start_target("stowpay", work, 0, None))
        os.environ.clear()
        os.environ.update(here)
        servers.append(flows.start_target("stowpay", work, 1, None))
        servers.append(flows.start_target("canned", work, 2, None))
        runs = [one_flow(s) for s in servers]
        for run in runs:
            for _ in range(WARMUP_FLOWS):
                run()
        times: list[list[float]] = [[] for _ in servers]
        cpu0 = [flows.cpu_seconds(s.proc.pid) for s in servers]
        print(f"interleaving flows for {args.seconds:.0f} s ...", flush=True)
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            for run, spent in zip(runs, times, strict=True):
                t0 = time.perf_counter()
                run()
                spent.append(time.perf_counter() - t0)
        cpu = [flows.cpu_seconds(s.proc.pid) - c for s, c in zip(servers, cpu0, strict=True)]
    finally:
        for s in servers:
            s.stop()

    print(f"{'target':<24} {'flows':>6} {'median ms':>10} {'mean ms':>8} {'server CPU ms':>14}")
    for name, spent, used in zip(names, times, cpu, strict=True):
        print(
            f"{name:<24} {len(spent):>6} {statistics.median(spent) * 1e3:>10.3f}"
            f" {statistics.mean(spent) * 1e3:>8.3f} {used / len(spent) * 1e3:>14.3f}"
        )
    canned_median, canned_mean = statistics.median(times[2]), statistics.mean(times[2])
    for name, spent in zip(names[:2], times[:2], strict=True):
        print(
            f"{name} / canned: {canned_median / statistics.median(spent):.3f} (medians),"
            f" {canned_mean / statistics.mean(spent):.3f} (means)"
        )
    change = statistics.mean(times[1]) / statistics.mean(times[0]) - 1
    print(f"this / base, mean flow time: {change:+.1%}")


if __name__ == "__main__":
    main()
