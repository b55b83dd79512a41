"""A/B of two versions of the cloud: flows interleaved one by one, the canned server beside them.

    python bench/flows_ab.py --base-ref HEAD~1 [--seconds 60]

Starts three servers on 127.0.0.1, each with a fresh store: Stowpay from the code at
`--base-ref` (that commit's `src/`, taken with `git archive` and run through `PYTHONPATH`),
Stowpay from the code installed here, and the canned server (`canned_server.py`, the client's
limit). Then one client thread runs create + confirm + capture (as `flows.py` does) on each
in turn, `--block` seconds at a time, for `--seconds`, as `flows.py` takes its targets in
turns: every target goes through the same minutes of a shared, noisy machine. Its minutes go
to two versions of Stowpay and the client's limit only, so a difference of a few percent
shows; blocks of whole seconds keep a server's background work (its checkpoints) inside its
own block, mostly. It measures a change; `flows.py` measures the targets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-ref", required=True, help="the commit to compare against")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--block", type=float, default=2.0, help="seconds on one target")
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
        runs = [flows.make_flow(s) for s in servers]
        for run in runs:
            for _ in range(WARMUP_FLOWS):
                run()
        done = [0 for _ in servers]
        spent = [0.0 for _ in servers]
        blocks: list[list[float]] = [[] for _ in servers]
        cpu0 = [flows.cpu_seconds(s.proc.pid) for s in servers]
        print(f"{args.seconds:.0f} s in blocks of {args.block:.1f} s ...", flush=True)
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            for i, run in enumerate(runs):
                t0 = now = time.perf_counter()
                n = 0
                while now - t0 < args.block:
                    run()
                    n += 1
                    now = time.perf_counter()
                done[i] += n
                spent[i] += now - t0
                blocks[i].append(n / (now - t0))
        cpu = [flows.cpu_seconds(s.proc.pid) - c for s, c in zip(servers, cpu0, strict=True)]
    finally:
        for s in servers:
            s.stop()

    rates = [n / t for n, t in zip(done, spent, strict=True)]
    print(f"{'target':<24} {'flows':>6} {'flows/s':>8} {'block median':>13} {'server CPU ms':>14}")
    for name, n, rate, per_block, used in zip(names, done, rates, blocks, cpu, strict=True):
        print(
            f"{name:<24} {n:>6} {rate:>8.1f} {statistics.median(per_block):>13.1f}"
            f" {used / n * 1e3:>14.3f}"
        )
    for i in (0, 1):
        # A block's ratio against the canned block right after it: the same minute.
        pairs = [a / c for a, c in zip(blocks[i], blocks[2], strict=False)]
        print(
            f"{names[i]} / canned: {rates[i] / rates[2]:.3f}"
            f" (blocks: median {statistics.median(pairs):.3f},"
            f" {min(pairs):.3f}-{max(pairs):.3f})"
        )
    print(f"this / base: {rates[1] / rates[0] - 1:+.1%} flows/s")


if __name__ == "__main__":
    main()
