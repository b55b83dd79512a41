"""Tampering with a stopped reader's vault, then letting it forward: nothing bad reaches the cloud.

Payments are stored by a real reader process (not yet forwarded: no POS listens for token
requests and the reader is not unattended), the reader is stopped, and its vault's database
is changed behind its back. Started again (unattended, so it forwards), the reader must
quarantine the altered records and report them — the deleted one as missing — in `GET
/v1/status` and `stowpay reader status`, and forward only the intact ones. A database
restored from an older copy is refused at start; a whole vault directory restored from a
copy (which no local check can tell from a genuine one) charges nothing twice, and the
payment taken after it is charged: the cloud's heartbeat moves the vault's counter past the
sequences it has seen.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest
from procs import (
    Pos,
    Process,
    Site,
    free_port,
    order_of,
    register_reader,
    restart_reader,
    wait_drained,
    wait_for,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "reader"))
from vault_kit import side_connection

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

UNATTENDED = "--unattended-forwarding"
STOWPAY = [sys.executable, "-m", "stowpay.cli"]


def sell(url: str, site: Site, orders: list[str]) -> dict[str, int]:
    """The POS connects online and sells `orders` (force_offline); order -> amount."""
    pos = Pos(url)
    try:
        pos.connect(site.token())
        sold = {}
        for i, order in enumerate(orders):
            amount = 1000 + i
            pos.sell(order, amount)
            sold[order] = amount
        return sold
    finally:
        pos.close()


def sequences(vault_dir: Path) -> dict[str, int]:
    """order id -> sequence of the records in a stopped reader's vault."""
    with side_connection(vault_dir) as side:
        rows = side.execute("SELECT sequence, CAST(metadata AS TEXT) FROM records").fetchall()
    return {json.loads(m)["order_id"]: int(s) for s, m in rows}


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


def charged(site: Site) -> dict[str, list[int]]:
    """order id -> the amounts of its PaymentIntents."""
    out: dict[str, list[int]] = {}
    for pi in site.payment_intents():
        out.setdefault(order_of(pi), []).append(int(pi.amount))
    return out


def cli_status(url: str) -> dict[str, object]:
    out = subprocess.run(
        [*STOWPAY, "reader", "status", "--reader", url, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def test_tampered_and_deleted_records_are_reported_and_never_forwarded(tmp_path: Path) -> None:
    site = Site(tmp_path)
    data = tmp_path / "reader"
    reader = None
    try:
        reader, url, _ = register_reader(site, data)
        orders = [f"T-{i}" for i in range(8)]
        sold = sell(url, site, orders)
        assert Pos(url).status()["offline"]["count"] == 8
        assert reader.stop() == 0

        seq = sequences(data / "vault")
        with side_connection(data / "vault") as side:
            (sealed,) = side.execute(
                "SELECT sealed FROM records WHERE sequence = ?", (seq["T-2"],)
            ).fetchone()
            side.execute(
                "UPDATE records SET sealed = ? WHERE sequence = ?",
                (flip(bytes(sealed), len(sealed) // 2), seq["T-2"]),
            )
            (display,) = side.execute(
                "SELECT display FROM records WHERE sequence = ?", (seq["T-4"],)
            ).fetchone()
            side.execute(
                "UPDATE records SET display = ? WHERE sequence = ?",
                (flip(bytes(display), 3), seq["T-4"]),
            )
            side.execute("UPDATE records SET amount = 1 WHERE sequence = ?", (seq["T-5"],))
            side.execute("DELETE FROM records WHERE sequence = ?", (seq["T-6"],))
        tampered = {"T-2", "T-4", "T-5"}

        reader, url = restart_reader(site, data, UNATTENDED)
        status = wait_drained(url, left=len(tampered))
        shown = cli_status(url)
        assert reader.stop() == 0
        held = sequences(data / "vault")
        verify = subprocess.run(
            [*STOWPAY, "reader", "vault", "verify", "--data", str(data), "--json"],
            capture_output=True,
            text=True,
        )
        report = json.loads(verify.stdout)
        at_cloud = charged(site)
    finally:
        if reader is not None:
            reader.stop()
        site.close()
    figures = (
        f"status offline={status['offline']}; cli quarantined={shown['offline']}; "  # type: ignore[index]
        f"vault verify: {[(f['kind'], f['sequence']) for f in report['findings']]}; "
        f"charged: {sorted(at_cloud)}"
    )
    print(figures)
    # The three altered records are quarantined and still held; the deleted one is missing.
    assert status["offline"]["quarantined"] == 3, figures
    assert status["offline"]["missing"] == [seq["T-6"]], figures
    assert shown["offline"]["quarantined"] == 3, figures  # type: ignore[index]
    assert shown["offline"]["missing"] == [seq["T-6"]], figures  # type: ignore[index]
    assert set(held) == tampered, figures
    assert verify.returncode == 1 and not report["ok"], figures
    kinds = {q["sequence"]: q["kind"] for q in report["quarantined"]}
    assert kinds == dict.fromkeys((seq["T-2"], seq["T-4"], seq["T-5"]), "altered"), figures
    found = {(f["kind"], f["sequence"]) for f in report["findings"]}
    assert ("missing", seq["T-6"]) in found, figures
    # None of them reached the cloud; every intact one did, once, with its amount.
    intact = {o for o in orders if o not in tampered | {"T-6"}}
    assert at_cloud == {o: [sold[o]] for o in intact}, figures


def test_an_older_vault_is_refused_and_a_whole_copy_charges_nothing_twice(tmp_path: Path) -> None:
    """The whole-copy case: the three restored records are replays, and O-5, taken after the
    restore, is charged under a fresh sequence (not rejected as a conflict with O-3's)."""
    site = Site(tmp_path)
    data = tmp_path / "reader"
    vault = data / "vault"
    reader = None
    try:
        reader, url, _ = register_reader(site, data)
        sold = sell(url, site, ["O-0", "O-1", "O-2"])
        assert reader.stop() == 0
        # Backups of the vault as it is now: the database alone, and the whole directory.
        old_db = tmp_path / "old-db"
        old_db.mkdir()
        for name in ("vault.db", "vault.db-wal"):
            if (vault / name).exists():
                shutil.copy2(vault / name, old_db / name)
        snapshot = tmp_path / "snapshot"
        shutil.copytree(vault, snapshot, ignore=shutil.ignore_patterns("*.lock", "*-shm"))

        # Forward them, and sell two more (forwarded at once: the reader is unattended).
        reader, url = restart_reader(site, data, UNATTENDED)
        wait_drained(url)
        sold |= sell(url, site, ["O-3", "O-4"])
        wait_drained(url)
        assert reader.stop() == 0
        assert sorted(charged(site)) == ["O-0", "O-1", "O-2", "O-3", "O-4"]

        # 1. The older database put back beside the newer tip file: the reader refuses to run.
        for name in ("vault.db", "vault.db-wal", "vault.db-shm"):
            (vault / name).unlink(missing_ok=True)
        for name in ("vault.db", "vault.db-wal"):
            if (old_db / name).exists():
                shutil.copy2(old_db / name, vault / name)
        port = free_port()
        refused = Process(
            ["reader", "run", "--cloud", site.url, "--data", str(data), "--port", str(port)],
            site.logs / "refused.log",
        )
        code = refused.proc.wait(30)
        refused.stop()
        said = (site.logs / "refused.log").read_text()
        assert code == 1 and "older than its tip" in said and "Traceback" not in said, said

        # 2. The whole directory put back (database, tip file, key): locally undetectable. The
        # reader forwards the three old records again; the cloud answers them as replays.
        shutil.rmtree(vault)
        shutil.copytree(snapshot, vault)
        reader, url = restart_reader(site, data, UNATTENDED, "--log-level", "info")
        wait_drained(url)
        advanced = httpx.get(url + "/v1/status").json()["sequence_check"]
        # The copy's counter was 3; the cloud had seen 5 (O-4's): the reader moved past it, so
        # the payment taken now gets sequence 6, not O-3's 4.
        sold |= sell(url, site, ["O-5"])
        wait_for(
            "O-5 to leave the vault",
            lambda: httpx.get(url + "/v1/status").json()["offline"]["count"] == 0,
        )
        wait_drained(url)
        assert reader.stop() == 0
        at_cloud = charged(site)
    finally:
        if reader is not None:
            reader.stop()
        site.close()
    log = (site.logs / "reader.log").read_text()
    print(f"refused: {said.strip().splitlines()[-1]}; charged after the restore: {at_cloud}")
    assert "replayed=3" in log, "the three restored records were not answered as replays"
    assert advanced["checked"] is True, advanced
    assert (advanced["advanced"]["from"], advanced["advanced"]["to"]) == (3, 5), advanced
    assert "vault_behind_the_cloud" in log
    # Nothing charged twice, O-3 still carries its own amount, and O-5 is charged.
    assert at_cloud == {o: [sold[o]] for o in ["O-0", "O-1", "O-2", "O-3", "O-4", "O-5"]}, at_cloud
