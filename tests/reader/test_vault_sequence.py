"""`Vault.advance_sequence`: a restored vault moves its counter past what the cloud has seen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from vault_kit import OpenVault, payment, side_connection, unseal

from stowpay.reader.vault import (
    MAX_HELD_SKIP,
    FindingKind,
    VaultInputError,
    VaultRollbackError,
)


def test_empty_vault_jumps_and_the_next_payment_follows(open_vault: OpenVault) -> None:
    vault = open_vault()
    assert vault.advance_sequence(1_000_000) == 1_000_000
    stored = vault.store(payment())
    assert stored.sequence == 1_000_001
    assert unseal(stored)["number"] == "4242424242424242"
    report = vault.verify()
    assert report.ok, report.findings
    assert [r.sequence for r in vault.pending()] == [stored.sequence]


def test_with_records_held_the_skipped_sequences_are_accounted_for(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    vault = open_vault()
    held = [vault.store(payment(amount=100 + i)).sequence for i in range(3)]
    assert vault.advance_sequence(7) == 4
    after = vault.store(payment(amount=999)).sequence
    assert after == 8
    report = vault.verify()
    # Nothing missing, nothing quarantined: 4..7 were skipped, not lost.
    assert report.ok, report.findings
    assert [r.sequence for r in vault.pending()] == [*held, after]
    # The held records leave as usual; the anchor then walks over the skipped links.
    assert vault.remove_many([*held, after]) == [*held, after]
    assert vault.summary().count == 0
    assert vault.verify().ok
    vault.close()
    reopened = open_vault(vault_dir)
    assert reopened.head_sequence == 8 and reopened.verify().ok
    assert reopened.store(payment()).sequence == 9


def test_it_never_goes_backwards(open_vault: OpenVault) -> None:
    vault = open_vault()
    for _ in range(5):
        vault.store(payment())
    assert vault.advance_sequence(3) == 0
    assert vault.advance_sequence(5) == 0
    assert vault.head_sequence == 5
    assert vault.store(payment()).sequence == 6
    with pytest.raises(VaultInputError):
        vault.advance_sequence(-1)
    with pytest.raises(VaultInputError):
        vault.advance_sequence(1 << 62)


def test_a_copy_from_before_the_advance_is_refused(
    open_vault: OpenVault, vault_dir: Path, tmp_path: Path
) -> None:
    vault = open_vault()
    vault.store(payment())
    vault.close()
    old = tmp_path / "old-db"
    old.mkdir()
    for name in ("vault.db", "vault.db-wal"):
        if (vault_dir / name).exists():
            shutil.copy2(vault_dir / name, old / name)
    vault = open_vault(vault_dir)
    vault.advance_sequence(40)
    vault.close()
    # The tip file moved with the counter: the database from before it is an older copy.
    for name in ("vault.db", "vault.db-wal", "vault.db-shm"):
        (vault_dir / name).unlink(missing_ok=True)
    for name in ("vault.db", "vault.db-wal"):
        if (old / name).exists():
            shutil.copy2(old / name, vault_dir / name)
    with pytest.raises(VaultRollbackError):
        open_vault(vault_dir)


def test_a_long_jump_waits_for_the_held_records(open_vault: OpenVault) -> None:
    vault = open_vault()
    first = vault.store(payment()).sequence
    with pytest.raises(VaultInputError):
        vault.advance_sequence(first + MAX_HELD_SKIP + 1)
    assert vault.head_sequence == first
    vault.remove(first)
    assert vault.advance_sequence(first + MAX_HELD_SKIP + 1) == MAX_HELD_SKIP + 1
    assert vault.verify().ok


def test_a_record_under_a_skipped_sequence_is_a_replay(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    vault = open_vault()
    kept = vault.store(payment())
    vault.advance_sequence(5)
    vault.close()
    with side_connection(vault_dir) as side:
        side.execute(
            "INSERT INTO records SELECT 3, prev_mac, stored_at, account, reader, amount, "
            "currency, capture_method, metadata, description, local_id, sealed, display, mac "
            "FROM records WHERE sequence = ?",
            (kept.sequence,),
        )
    vault = open_vault(vault_dir)
    report = vault.verify()
    kinds = {(f.kind, f.sequence) for f in report.findings}
    assert (FindingKind.REPLAYED, 3) in kinds
    assert [r.sequence for r in vault.pending()] == [kept.sequence]
