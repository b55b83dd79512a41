"""A/B of two versions of the cloud, in turns of a few seconds, the canned server beside them.

    python bench/flows_ab.py --base-ref HEAD~1 [--seconds 60]

Starts three servers on 127.0.0.1, each with a fresh store: Stowpay from the code at
`--base-ref` (that commit's `src/`, taken with `git archive` and run through `PYTHONPATH`),
Stowpay from the code installed here, and the canned server (`canned_server.py`, the client's
limit). Then one client thread runs create + confirm + capture on each in turn, `--block`
seconds at a time (each round in another order), for `--seconds`, as `flows.py` takes its
targets in turns (`flows.interleave`): every target goes through the same minutes of a
shared, noisy machine. Here those minutes go to two versions of Stowpay and the client's
limit only, so a difference of a few percent shows; blocks of whole seconds keep a server's
background work (its checkpoints) inside its own block, mostly. It measures a change;
`flows.py` measures the targets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
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
    servers: dict[str, flows.Server] = {}
    try:
        here = dict(os.environ)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(base_src), here.get("PYTHONPATH")) if p
        )
        servers[names[0]] = flows.start_target("stowpay", work, 0, None)
        os.environ.clear()
        os.environ.update(here)
        servers[names[1]] = flows.start_target("stowpay", work, 1, None)
        servers[names[2]] = flows.start_target("canned", work, 2, None)
        runs = {name: flows.warm_flow(s, WARMUP_FLOWS) for name, s in servers.items()}
        results = {name: flows.Run(name, 1) for name in names}
        print(f"{args.seconds:.0f} s in blocks of {args.block:.1f} s ...", flush=True)
        flows.interleave(servers, runs, results, args.seconds, args.block)
    finally:
        for s in servers.values():
            s.stop()

    rates = [results[name].rate for name in names]
    print(f"{'target':<24} {'flows':>6} {'flows/s':>8} {'block median':>13} {'server CPU ms':>14}")
    for name in names:
        r = results[name]
        print(
            f"{name:<24} {r.flows:>6} {r.rate:>8.1f} {statistics.median(r.blocks):>13.1f}"
            f" {r.server_cpu / max(r.flows, 1) * 1e3:>14.3f}"
        )
    canned = results[names[2]].blocks
    for i in (0, 1):
        # A block's ratio against the canned block of the same round: the same minute.
        pairs = [a / c for a, c in zip(results[names[i]].blocks, canned, strict=False)]
        print(
            f"{names[i]} / canned: {rates[i] / rates[2]:.3f}"
            f" (blocks: median {statistics.median(pairs):.3f},"
            f" {min(pairs):.3f}-{max(pairs):.3f})"
        )
    print(f"this / base: {rates[1] / rates[0] - 1:+.1%} flows/s")


if __name__ == "__main__":
    main()
