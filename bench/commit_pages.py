"""What a durable SQLite commit costs on this disk, by the number of pages it writes.

    python bench/commit_pages.py [--pages 1,5,10,19,30] [--commits 400] [--page-size 4096]

A bare loop on one connection (WAL, `synchronous=FULL`, as the cloud's store): each commit
rewrites N rows of 3/4 of a page each, so it writes N pages to the WAL and flushes once.
Prints the median and mean time of the COMMIT alone. The cloud's API request commits about
17 pages; the difference between 1 and N pages is what each page adds to every request.
A first pass of 1,000 pages is thrown away: while the WAL file still grows, each flush also
writes the file's new size, which later commits (the WAL is reused from its start) do not.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

ROWS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", default="1,5,10,19,30")
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--page-size", type=int, default=4096)
    args = parser.parse_args()
    row = args.page_size * 3 // 4

    db = Path(tempfile.mkdtemp(prefix="stowpay-bench-commit-")) / "pages.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA page_size={args.page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, ?)", ((i, os.urandom(row)) for i in range(ROWS)))
    conn.execute("COMMIT")

    def commit_of(pages: int, k: int) -> float:
        conn.execute("BEGIN IMMEDIATE")
        for i in range(pages):
            conn.execute("UPDATE t SET b = ? WHERE id = ?", (os.urandom(row), (i * 3 + k) % ROWS))
        t0 = time.perf_counter()
        conn.execute("COMMIT")
        return time.perf_counter() - t0

    for k in range(100):  # the WAL file grows to its working size first
        commit_of(10, k)
    print(f"{'pages':>5} {'median µs':>10} {'mean µs':>8}")
    for pages in (int(p) for p in args.pages.split(",")):
        spent = [commit_of(pages, k) for k in range(args.commits)]
        median, mean = statistics.median(spent) * 1e6, statistics.mean(spent) * 1e6
        print(f"{pages:>5} {median:>10.0f} {mean:>8.0f}")
    conn.close()


if __name__ == "__main__":
    main()
