"""Tampering with the vault is detected, quarantined and never forwarded.

The attacker here can read and write the vault's files (or its SQLite database through any
connection) but does not hold the device key.

How a random mutation of a file is classified: "refused at open" (a clean `VaultError`:
integrity_check, state MAC, tip, schema), "flagged by verify" (a finding; the record is
quarantined), "refused on use" (a `VaultError` from verify or pending), "no semantic change"
(everything the vault exposes — each pending record byte for byte, the summary, counter,
anchor and quarantine — equals the original), or undetected (anything else: a failure).
Where it landed is classified too, from the SQLite page layout: "slack" (unallocated bytes of
a b-tree page: the gap between cell pointers and cells, freeblocks, free pages), "file
header", or the table or index owning the page. Only slack, the file header and the schema's
SQL text may show "no semantic change"; every byte of the vault's own tables must be caught.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from vault_kit import TEST_CARDS, OpenVault, allocated_bytes, payment, side_connection

from stowpay.reader.vault import (
    FindingKind,
    StoredPayment,
    Vault,
    VaultCorruptError,
    VaultError,
    VaultRollbackError,
)
from stowpay.wire.clock import ManualClock

COLUMNS = (
    "prev_mac",
    "stored_at",
    "account",
    "reader",
    "amount",
    "currency",
    "capture_method",
    "metadata",
    "description",
    "local_id",
    "sealed",
    "display",
    "mac",
)


def fill(vault: Vault, n: int) -> list[StoredPayment]:
    currencies = ("usd", "eur", "gbp")
    return [
        vault.store(
            payment(
                100 + 7 * i,
                currencies[i % 3],
                TEST_CARDS[i % len(TEST_CARDS)],
                metadata={"order_id": f"A-{i}"},
            )
        )
        for i in range(n)
    ]


def pending_seqs(vault: Vault) -> list[int]:
    return [p.sequence for p in vault.pending()]


def kinds_at(vault: Vault, seq: int) -> set[FindingKind]:
    return {f.kind for f in vault.verify().findings if f.sequence == seq}


# -- every byte of three records ---------------------------------------------------------------


def _as_bytes(value: Any, kind: str) -> bytes:
    if kind == "integer":
        return int(value).to_bytes(8, "big", signed=True)
    if kind == "real":
        return struct.pack(">d", value)
    return bytes(value)


def _from_bytes(data: bytes, kind: str) -> Any:
    if kind == "integer":
        return int.from_bytes(data, "big", signed=True)
    if kind == "real":
        return struct.unpack(">d", data)[0]
    return data


def test_every_byte_of_three_records_flipped_is_detected(open_vault: OpenVault) -> None:
    vault = open_vault()
    records = fill(vault, 8)
    vault.remove(2)  # a removed link in the middle of the chain as well
    samples = [records[0].sequence, records[4].sequence, records[-1].sequence]  # first, mid, head
    others = set(pending_seqs(vault)) - set(samples)
    side = side_connection(vault.directory)
    tried = detected = unrepresentable = 0
    for seq in samples:
        for column in COLUMNS:
            value, kind = side.execute(
                f"SELECT {column}, typeof({column}) FROM records WHERE sequence = ?", (seq,)
            ).fetchone()
            if isinstance(value, str):
                value = value.encode()
            original = _as_bytes(value, kind)
            for i in range(len(original)):
                for flip in (0xFF, 0x01):
                    bad = bytearray(original)
                    bad[i] ^= flip
                    new = _from_bytes(bytes(bad), kind)
                    if kind == "real" and math.isnan(new):
                        unrepresentable += 1  # SQLite stores NaN as NULL: not a state it can hold
                        continue
                    # Text is written back byte for byte, valid UTF-8 or not.
                    expr = "CAST(? AS TEXT)" if kind == "text" else "?"
                    side.execute(
                        f"UPDATE records SET {column} = {expr} WHERE sequence = ?", (new, seq)
                    )
                    tried += 1
                    in_pending = seq in pending_seqs(vault)
                    report = vault.verify(integrity=False)
                    flagged = any(f.sequence == seq for f in report.findings)
                    held = seq in {q.sequence for q in report.quarantined}
                    if flagged and held and not in_pending:
                        detected += 1
                    # The other records are untouched and still go.
                    assert others <= set(pending_seqs(vault)), (seq, column, i)
                    restore = "CAST(? AS TEXT)" if kind == "text" else "?"
                    side.execute(
                        f"UPDATE records SET {column} = {restore} WHERE sequence = ?",
                        (_from_bytes(original, kind), seq),
                    )
                    side.execute("DELETE FROM quarantine")
    print(f"\nbyte flips: {tried} tried, {detected} detected, {unrepresentable} unrepresentable")
    assert tried > 2000
    assert detected == tried
    assert vault.verify().ok


# -- 1,000 random mutations of the database file -----------------------------------------------


def _snapshot(vault: Vault) -> tuple[Any, ...]:
    """Everything a mutation could change that matters: what is forwarded, counted, held."""
    report = vault.verify(integrity=False)
    return (
        vault.pending(),
        vault.summary(),
        report.head_sequence,
        report.anchor_sequence,
        report.checked,
        tuple(vault.quarantined()),
    )


@dataclass
class Campaign:
    """Mutations of one file of a vault copy, each opened and checked from scratch."""

    src: Path
    target: str  # file name inside the vault directory
    baseline: tuple[Any, ...]
    stored: dict[int, StoredPayment]
    clock: ManualClock
    where: Callable[[int], str] = lambda offset: "file"
    #: count "the newest records vanished, nothing else changed" apart from undetected
    prefix_is_rollback: bool = False
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    undetected: list[str] = field(default_factory=list)

    def run(self, work: Path, offsets: Sequence[int], rng: random.Random, rounds: int) -> None:
        for n in range(rounds):
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(self.src, work, ignore=shutil.ignore_patterns("*.lock", "*-shm"))
            offset = rng.choice(offsets)
            data = bytearray((work / self.target).read_bytes())
            data[offset] ^= rng.randrange(1, 256)
            (work / self.target).write_bytes(bytes(data))
            place = self.where(offset)
            try:
                copy = Vault.open(work, clock=self.clock)
            except VaultError:
                self.outcomes[place, "refused at open"] += 1
                continue
            try:
                report = copy.verify()
                # Never forwarded: anything pending is byte for byte a record that was stored.
                for p in copy.pending():
                    assert p == self.stored[p.sequence], (n, offset)
                if not report.ok:
                    self.outcomes[place, "flagged by verify"] += 1
                elif (now := _snapshot(copy)) == self.baseline:
                    self.outcomes[place, "no semantic change"] += 1
                elif self.prefix_is_rollback and _is_older(now, self.baseline):
                    self.outcomes[place, "silent rollback"] += 1
                else:
                    self.undetected.append(f"round {n}: offset {offset} ({place})")
                    self.outcomes[place, "UNDETECTED"] += 1
            except VaultError:
                self.outcomes[place, "refused on use"] += 1
            finally:
                copy.close()

    def print(self, title: str) -> None:
        print(f"\n{title}")
        for (place, outcome), count in sorted(self.outcomes.items()):
            print(f"  {place:20} {outcome:20} {count:5}")


def _is_older(now: tuple[Any, ...], baseline: tuple[Any, ...]) -> bool:
    """The vault as it was some commits ago: what it holds is a prefix, nothing altered."""
    pending, old_pending = now[0], baseline[0]
    return bool(
        len(pending) < len(old_pending)
        and pending == old_pending[: len(pending)]
        and now[2] < baseline[2]  # its counter is behind
        and not now[5]  # nothing quarantined
    )


def _seed() -> tuple[random.Random, int, int]:
    seed = int(os.environ.get("STOWPAY_TAMPER_SEED", "20240601"))
    rounds = int(os.environ.get("STOWPAY_TAMPER_MUTATIONS", "1000"))
    return random.Random(seed), seed, rounds


def _baseline(src: Path, clock: ManualClock) -> tuple[Any, ...]:
    vault = Vault.open(src, clock=clock)
    try:
        return _snapshot(vault)
    finally:
        vault.close()


@pytest.mark.parametrize("target", ["anywhere", "allocated bytes only"])
def test_random_mutations_of_the_database_file(
    open_vault: OpenVault, tmp_path: Path, clock: ManualClock, target: str
) -> None:
    rng, seed, rounds = _seed()
    src = tmp_path / "original"
    vault = open_vault(src)
    records = fill(vault, 30)
    for seq in (1, 2, 3, 10, 11, 20):  # an anchor and out-of-order removed links
        vault.remove(seq)
    vault.close()
    assert not (src / "vault.db-wal").exists()  # a clean close left everything in vault.db
    used, owners, page_size = allocated_bytes(src / "vault.db")

    def where(offset: int) -> str:
        if offset < 100:
            return "file header"
        if not used[offset]:
            return "slack"
        return owners.get(offset // page_size + 1, "unowned page")

    size = (src / "vault.db").stat().st_size
    offsets = range(size) if target == "anywhere" else [i for i in range(size) if used[i]]
    campaign = Campaign(
        src, "vault.db", _baseline(src, clock), {r.sequence: r for r in records}, clock, where
    )
    campaign.run(tmp_path / "work", offsets, rng, rounds)
    campaign.print(f"seed {seed}, {rounds} mutations ({target}) of a {size}-byte vault.db:")
    assert campaign.undetected == [], campaign.undetected
    assert sum(campaign.outcomes.values()) == rounds
    # A mutation may change nothing only where nothing is: slack space, or SQLite bookkeeping
    # it does not need (header counters, the letter case or spacing of the schema's SQL).
    # Every byte of the vault's own tables and index is refused or flagged.
    benign = {p for (p, o) in campaign.outcomes if o == "no semantic change"}
    assert benign <= {"slack", "file header", "sqlite_schema"}, benign
    assert all(o == "no semantic change" for (p, o) in campaign.outcomes if p == "slack")


@pytest.mark.parametrize("tip_every", [1, 0])
def test_random_mutations_of_the_wal(
    open_vault: OpenVault, tmp_path: Path, clock: ManualClock, tip_every: int
) -> None:
    """A damaged WAL frame makes SQLite stop reading the WAL there: the vault looks older.

    With ``tip_every=1`` the tip file always names the newest commit, so that is always
    caught. With the default (tip at open, removal and close) the stores since the last tip
    write can vanish unnoticed — the documented limit; this test measures it and checks that
    such a loss is only ever the newest records, never a changed or reordered one.
    """
    rng, seed, rounds = _seed()
    rounds = max(rounds // 5, 20)
    live = tmp_path / "live"
    vault = open_vault(live, tip_every=tip_every)
    records = fill(vault, 12)
    for seq in (1, 2, 5):
        vault.remove(seq)  # tip written here whatever tip_every says
    records += fill(vault, 4)  # in the WAL, after the last removal
    src = tmp_path / "original"
    shutil.copytree(live, src, ignore=shutil.ignore_patterns("*.lock", "*-shm"))
    vault.close()
    wal = (src / "vault.db-wal").read_bytes()
    assert len(wal) > 32
    campaign = Campaign(
        src,
        "vault.db-wal",
        _baseline_copy(src, tmp_path, clock),
        {r.sequence: r for r in records},
        clock,
        lambda offset: "wal header" if offset < 32 else "wal frames",
        prefix_is_rollback=True,
    )
    campaign.run(tmp_path / "work", range(len(wal)), rng, rounds)
    campaign.print(
        f"seed {seed}, {rounds} mutations of a {len(wal)}-byte WAL, tip_every={tip_every}:"
    )
    assert campaign.undetected == [], campaign.undetected
    silent = sum(n for (_, o), n in campaign.outcomes.items() if o == "silent rollback")
    if tip_every == 1:
        assert silent == 0


def _baseline_copy(src: Path, tmp_path: Path, clock: ManualClock) -> tuple[Any, ...]:
    # Opening writes the tip and checkpoints at close; take the baseline from a copy.
    copy = tmp_path / "baseline"
    shutil.copytree(src, copy)
    return _baseline(copy, clock)


# -- deleted, reordered, replayed --------------------------------------------------------------


def test_deleted_record_is_reported_missing(open_vault: OpenVault) -> None:
    vault = open_vault()
    fill(vault, 8)
    with side_connection(vault.directory) as side:
        side.execute("DELETE FROM records WHERE sequence IN (5, 8)")  # one inside, the newest
    report = vault.verify()
    assert [(f.kind, f.sequence) for f in report.findings] == [
        (FindingKind.MISSING, 5),
        (FindingKind.MISSING, 8),
    ]
    # The records around the gap are authentic on their own, so they still go.
    assert pending_seqs(vault) == [1, 2, 3, 4, 6, 7]
    assert not report.ok


def test_deleting_a_removed_link_entry_is_caught(open_vault: OpenVault) -> None:
    vault = open_vault()
    records = fill(vault, 6)
    vault.remove(4)
    with side_connection(vault.directory) as side:
        side.execute("DELETE FROM removed_links")
    assert FindingKind.STATE in {f.kind for f in vault.verify().findings}
    with pytest.raises(VaultCorruptError):
        vault.pending()
    vault.close()
    with pytest.raises(VaultCorruptError):
        open_vault()
    salvaged = open_vault(salvage=True)
    assert salvaged.store_refused is not None
    assert {p.sequence for p in salvaged.pending()} <= {r.sequence for r in records}


def test_swapped_records_are_reported_reordered(open_vault: OpenVault) -> None:
    vault = open_vault()
    fill(vault, 6)
    cols = ", ".join(COLUMNS)
    with side_connection(vault.directory) as side:
        a = side.execute(f"SELECT {cols} FROM records WHERE sequence = 3").fetchone()
        b = side.execute(f"SELECT {cols} FROM records WHERE sequence = 4").fetchone()
        sets = ", ".join(f"{c} = ?" for c in COLUMNS)
        side.execute(f"UPDATE records SET {sets} WHERE sequence = 3", b)
        side.execute(f"UPDATE records SET {sets} WHERE sequence = 4", a)
    report = vault.verify()
    assert {(f.kind, f.sequence) for f in report.findings} == {
        (FindingKind.REORDERED, 3),
        (FindingKind.REORDERED, 4),
    }
    assert pending_seqs(vault) == [1, 2, 5, 6]


def test_record_moved_to_another_sequence_is_reported(open_vault: OpenVault) -> None:
    vault = open_vault()
    fill(vault, 6)
    with side_connection(vault.directory) as side:
        side.execute("UPDATE records SET sequence = 40 WHERE sequence = 6")
    report = vault.verify()
    assert {(f.kind, f.sequence) for f in report.findings} == {
        (FindingKind.REORDERED, 40),
        (FindingKind.MISSING, 6),
    }
    assert pending_seqs(vault) == [1, 2, 3, 4, 5]


def test_forwarded_record_put_back_is_reported_replayed(open_vault: OpenVault) -> None:
    vault = open_vault()
    fill(vault, 10)
    cols = "sequence, " + ", ".join(COLUMNS)
    with side_connection(vault.directory) as side:
        saved = {
            s: side.execute(f"SELECT {cols} FROM records WHERE sequence = ?", (s,)).fetchone()
            for s in (2, 7)
        }
    for seq in (1, 2, 3, 7):  # 1-3 under the anchor, 7 a removed link
        vault.remove(seq)
    marks = ", ".join("?" * (len(COLUMNS) + 1))
    with side_connection(vault.directory) as side:
        for row in saved.values():
            side.execute(f"INSERT INTO records ({cols}) VALUES ({marks})", row)
    assert pending_seqs(vault) == [4, 5, 6, 8, 9, 10]
    report = vault.verify()
    assert {(f.kind, f.sequence) for f in report.findings} == {
        (FindingKind.REPLAYED, 2),
        (FindingKind.REPLAYED, 7),
    }


def test_copy_of_a_record_under_a_new_sequence_is_reported_replayed(
    open_vault: OpenVault,
) -> None:
    vault = open_vault()
    fill(vault, 5)
    cols = ", ".join(COLUMNS)
    with side_connection(vault.directory) as side:
        side.execute(
            f"INSERT INTO records (sequence, {cols}) SELECT 6, {cols} FROM records "
            "WHERE sequence = 3"
        )
    assert kinds_at(vault, 6) == {FindingKind.REPLAYED}
    assert pending_seqs(vault) == [1, 2, 3, 4, 5]


def test_altered_record_is_caught_by_pending_without_a_verify(open_vault: OpenVault) -> None:
    vault = open_vault()
    fill(vault, 4)
    with side_connection(vault.directory) as side:
        side.execute("UPDATE records SET amount = 1 WHERE sequence = 2")
    assert pending_seqs(vault) == [1, 3, 4]
    assert [q.sequence for q in vault.quarantined()] == [2]
    # Clearing the quarantine mark does not help the altered record: it is re-checked.
    with side_connection(vault.directory) as side:
        side.execute("DELETE FROM quarantine")
    assert pending_seqs(vault) == [1, 3, 4]


def test_quarantine_persists_and_is_reported_after_reopen(open_vault: OpenVault) -> None:
    vault = open_vault()
    fill(vault, 3)
    with side_connection(vault.directory) as side:
        side.execute("UPDATE records SET currency = 'xxx' WHERE sequence = 1")
    vault.verify()
    vault.close()
    vault = open_vault()
    assert vault.last_report is not None and not vault.last_report.ok
    assert [q.sequence for q in vault.last_report.quarantined] == [1]
    assert vault.summary().quarantined == 1
    # An operator removes it once dealt with; the chain still verifies.
    vault.remove(1)
    assert vault.verify().ok


def test_state_row_altered_refuses_to_open(open_vault: OpenVault) -> None:
    vault = open_vault()
    fill(vault, 3)
    vault.close()
    with side_connection(vault.directory) as side:
        side.execute("UPDATE vault_state SET head_sequence = head_sequence - 1")
    with pytest.raises(VaultError):
        open_vault()


# -- restored older copies ---------------------------------------------------------------------


def _copy_db(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("vault.db", "vault.db-wal", "vault.db-shm"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def _restore_db(backup: Path, vault_dir: Path) -> None:
    for name in ("vault.db", "vault.db-wal", "vault.db-shm"):
        (vault_dir / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, vault_dir / name)


def test_restored_older_database_is_refused(
    open_vault: OpenVault, vault_dir: Path, tmp_path: Path
) -> None:
    vault = open_vault()
    fill(vault, 5)
    vault.close()
    _copy_db(vault_dir, tmp_path / "backup")
    vault = open_vault()
    fill(vault, 3)
    vault.remove(1)
    vault.close()
    _restore_db(tmp_path / "backup", vault_dir)
    with pytest.raises(VaultRollbackError):
        open_vault()
    # Salvage opens it to forward what it holds, but will not store on a rolled-back counter.
    salvaged = open_vault(salvage=True)
    assert salvaged.last_report is not None
    assert FindingKind.ROLLBACK in {f.kind for f in salvaged.last_report.findings}
    assert pending_seqs(salvaged) == [1, 2, 3, 4, 5]
    with pytest.raises(VaultRollbackError):
        salvaged.store(payment())


def test_copy_taken_while_open_then_restored_is_refused(
    open_vault: OpenVault, vault_dir: Path, tmp_path: Path
) -> None:
    vault = open_vault()
    fill(vault, 4)
    vault.remove(1)  # tip written: head 4, one removal
    _copy_db(vault_dir, tmp_path / "hot")  # database and WAL, as a backup tool might
    fill(vault, 2)
    vault.remove(2)
    vault.close()
    _restore_db(tmp_path / "hot", vault_dir)
    with pytest.raises(VaultRollbackError):
        open_vault()


def test_a_forwarded_record_brought_back_with_an_old_copy_is_refused(
    open_vault: OpenVault, vault_dir: Path, tmp_path: Path
) -> None:
    # Same counter in both copies: only the removal count tells them apart.
    vault = open_vault()
    fill(vault, 3)
    vault.close()
    _copy_db(vault_dir, tmp_path / "backup")
    vault = open_vault()
    vault.remove(1)
    vault.close()
    _restore_db(tmp_path / "backup", vault_dir)
    with pytest.raises(VaultRollbackError):
        open_vault()


def test_forked_copy_with_the_same_counts_is_refused(
    open_vault: OpenVault, vault_dir: Path, tmp_path: Path
) -> None:
    vault = open_vault()
    fill(vault, 3)
    vault.close()
    old = tmp_path / "old"
    _copy_db(vault_dir, old)
    shutil.copy2(vault_dir / "vault.tip", old / "vault.tip")
    vault = open_vault()
    fill(vault, 1)  # the real history: record 4
    vault.close()
    real = tmp_path / "real"
    _copy_db(vault_dir, real)
    # The whole directory goes back (not detectable), and a different record 4 is stored...
    _restore_db(old, vault_dir)
    shutil.copy2(old / "vault.tip", vault_dir / "vault.tip")
    vault = open_vault()
    vault.store(payment(999_999))
    vault.close()
    # ... then the real database comes back beside the forked tip: same counts, other history.
    _restore_db(real, vault_dir)
    with pytest.raises(VaultRollbackError, match="another path"):
        open_vault()


def test_whole_directory_restore_is_left_to_the_cloud(
    open_vault: OpenVault, vault_dir: Path, tmp_path: Path
) -> None:
    """The documented limit: database and tip restored together look like a valid vault.

    What protects the money then is the cloud's per-(account, reader, sequence) record: the
    reissued sequence carries the same forward key but different content, which the cloud
    refuses as a conflict instead of charging it as the earlier payment.
    """
    vault = open_vault()
    fill(vault, 2)
    vault.close()
    shutil.copytree(vault_dir, tmp_path / "snapshot", ignore=shutil.ignore_patterns("*.lock"))
    vault = open_vault()
    lost = vault.store(payment(5000))
    vault.close()
    shutil.rmtree(vault_dir)
    shutil.copytree(tmp_path / "snapshot", vault_dir)
    vault = open_vault()
    assert vault.last_report is not None and vault.last_report.ok
    reissued = vault.store(payment(7000))
    assert reissued.sequence == lost.sequence
    assert reissued.forward_key == lost.forward_key
    assert reissued.sealed != lost.sealed and reissued.local_id != lost.local_id


def test_deleted_or_forged_tip_file_is_refused(open_vault: OpenVault, vault_dir: Path) -> None:
    vault = open_vault()
    fill(vault, 2)
    vault.close()
    tip = vault_dir / "vault.tip"
    good = tip.read_bytes()
    tip.write_bytes(good.replace(b'"head_sequence": 2', b'"head_sequence": 1'))
    with pytest.raises(VaultRollbackError, match="damaged or forged"):
        open_vault()
    tip.unlink()
    with pytest.raises(VaultRollbackError, match="missing"):
        open_vault()
    tip.write_bytes(good)
    assert open_vault().verify().ok
