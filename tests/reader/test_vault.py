"""The offline vault: durable stores, exact summaries, sequences, the chain, card data at rest."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import ValidationError
from vault_kit import (
    ACCOUNT,
    CLOUD_PRIVATE,
    CLOUD_PUBLIC,
    EMV,
    READER,
    TEST_CARDS,
    OpenVault,
    card,
    payment,
    scan_for_pans,
    side_connection,
    unseal,
)

from leak_scan import PLANTED
from stowpay.cloud.routes.device import DisplayBody
from stowpay.reader import vault as vault_module
from stowpay.reader.vault import (
    FindingKind,
    SealingKey,
    Vault,
    VaultConfigError,
    VaultDurabilityError,
    VaultFullError,
    VaultInputError,
    VaultKeyError,
    VaultLockedError,
    VaultWriteError,
    forward_key,
    forward_key_for,
    new_local_id,
    verify_directory,
)
from stowpay.wire import sealed
from stowpay.wire.clock import ManualClock
from stowpay.wire.metadata import contains_card_number

# -- the durability contract -------------------------------------------------------------------


def test_runs_wal_with_synchronous_full_and_secure_delete(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    vault = open_vault()
    assert vault.durability() == {"journal_mode": "wal", "synchronous": 2, "secure_delete": 1}
    vault.store(payment())
    # WAL is a property of the file too: header bytes 18-19 are 2 for WAL.
    header = (vault_dir / "vault.db").read_bytes()[:100]
    assert header[18:20] == b"\x02\x02"


@pytest.mark.parametrize(
    "weaker",
    [
        ("journal_mode=WAL", "synchronous=NORMAL", "secure_delete=ON"),
        ("journal_mode=WAL", "synchronous=OFF", "secure_delete=ON"),
        ("journal_mode=DELETE", "synchronous=FULL", "secure_delete=ON"),
        ("journal_mode=WAL", "synchronous=FULL", "secure_delete=OFF"),
    ],
)
def test_refuses_to_open_with_weaker_settings(
    open_vault: OpenVault, monkeypatch: pytest.MonkeyPatch, weaker: tuple[str, ...]
) -> None:
    open_vault().close()
    # The check reads the settings back from SQLite; applying weaker ones must be caught.
    monkeypatch.setattr(vault_module, "_DURABILITY_PRAGMAS", weaker)
    with pytest.raises(VaultDurabilityError):
        open_vault()


def test_a_store_is_committed_when_it_returns(open_vault: OpenVault, vault_dir: Path) -> None:
    vault = open_vault()
    stored = vault.store(payment(amount=4321))
    # Another connection (another process would see the same) finds the committed row.
    with side_connection(vault_dir) as other:
        row = other.execute(
            "SELECT amount, local_id FROM records WHERE sequence = ?", (stored.sequence,)
        ).fetchone()
    assert row == (4321, stored.local_id)


# -- store, pending, remove --------------------------------------------------------------------


def test_round_trip_and_exact_summary(open_vault: OpenVault, clock: ManualClock) -> None:
    vault = open_vault()
    amounts = [("usd", 1999), ("usd", 1), ("eur", 950_000), ("jpy", 1_500_000), ("usd", 10)]
    stored = []
    first_time = clock.now()
    for i, (currency, amount) in enumerate(amounts):
        clock.advance(60)
        stored.append(
            vault.store(
                payment(
                    amount,
                    currency,
                    TEST_CARDS[i],
                    metadata={"order_id": f"A-{i}"},
                    capture_method="manual" if i == 2 else "automatic",
                )
            )
        )
    assert [s.sequence for s in stored] == [1, 2, 3, 4, 5]
    assert [s.stored_at for s in stored] == [first_time + 60 * (i + 1) for i in range(5)]

    summary = vault.summary()
    assert summary.count == 5
    assert summary.amounts == {"eur": 950_000, "jpy": 1_500_000, "usd": 2010}
    assert summary.oldest_stored_at == first_time + 60
    assert summary.quarantined == 0

    pending = vault.pending()
    assert pending == stored
    third = pending[2]
    assert third.capture_method == "manual"
    assert third.metadata == {"order_id": "A-2"}
    assert third.description == "coffee"
    assert third.local_id.startswith("pio_") and len(third.local_id) == 4 + 32
    assert third.display.as_dict() == {
        "brand": "visa",
        "last4": TEST_CARDS[2][-4:],
        "exp_month": 12,
        "exp_year": 2031,
        "cardholder_name": "Ada Lovelace",
        "read_method": "contact_emv",
        "receipt": {"application_preferred_name": "VISA CREDIT", "account_type": "credit"},
    }
    assert third.key_id == "csk_test_1"
    assert unseal(third) == {
        "number": TEST_CARDS[2],
        "exp_month": 12,
        "exp_year": 2031,
        "emv": EMV,
    }
    assert vault.pending(limit=2) == stored[:2]

    assert vault.remove(1) is True
    assert vault.remove(1) is False  # already gone: a retried removal is harmless
    assert vault.remove(4) is True
    summary = vault.summary()
    assert summary.count == 3
    assert summary.amounts == {"eur": 950_000, "usd": 11}
    assert summary.oldest_stored_at == first_time + 120
    assert [p.sequence for p in vault.pending()] == [2, 3, 5]
    for seq in (2, 3, 5):
        vault.remove(seq)
    assert vault.summary().count == 0
    assert vault.summary().amounts == {}
    assert vault.summary().oldest_stored_at is None
    assert vault.pending() == []
    assert vault.verify().ok


def test_summary_kept_in_step_matches_one_computed_from_the_records(
    open_vault: OpenVault, clock: ManualClock
) -> None:
    vault = open_vault()
    assert vault.summary().count == 0  # computed from the records, then kept by store()
    for i, (currency, amount) in enumerate([("usd", 5), ("eur", 7), ("usd", 11)]):
        clock.advance(-10 if i == 2 else 10)  # a clock set back: the oldest is still the least
        vault.store(payment(amount, currency, TEST_CARDS[i]))
        kept = vault.summary()
        vault.close()
        vault = open_vault()
        assert vault.summary() == kept  # the reopened vault computes it afresh
    assert kept.count == 3 and kept.head_sequence == 3
    kept.amounts["usd"] = 0  # the caller's copy: the vault's own is untouched
    assert vault.summary().amounts == {"eur": 7, "usd": 16}
    vault.store(payment(3, "usd"))
    vault.remove(1)
    assert vault.summary().amounts == {"eur": 7, "usd": 14}
    with side_connection(vault.directory) as conn:
        conn.execute("UPDATE records SET amount = amount + 1 WHERE sequence = 2")
    vault.verify()  # quarantines record 2: a write, so the summary is computed again
    summary = vault.summary()
    assert summary.quarantined == 1 and summary.amounts == {"eur": 8, "usd": 14}


def test_card_uses_are_counted_by_tag_and_leave_with_their_record(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    vault = open_vault()
    a, b = "a" * 64, "b" * 64
    vault.store(payment(), card_tag=a)
    vault.store(payment(), card_tag=a)
    vault.store(payment(number=TEST_CARDS[1]), card_tag=b)
    vault.store(payment())  # no tag: counts against no card
    assert (vault.card_uses(a), vault.card_uses(b)) == (2, 1)
    with pytest.raises(VaultInputError):
        vault.store(payment(), card_tag="4242424242424242")  # a keyed hash, never a number
    assert vault.summary().count == 4
    vault.remove_many([1, 3])
    assert (vault.card_uses(a), vault.card_uses(b)) == (1, 0)
    vault.close()
    vault = open_vault()
    assert vault.card_uses(a) == 1
    # Uses counted elsewhere before: only records still held and not yet tagged are noted.
    assert vault.note_card_uses({b: [4, 3, 99], a: [2]}) == 1
    assert (vault.card_uses(a), vault.card_uses(b)) == (1, 1)
    vault.close()
    # A vault made before the table existed gets it at open.
    with side_connection(vault_dir) as conn:
        conn.execute("DROP TABLE card_uses")
    vault = open_vault()
    assert vault.card_uses(a) == 0
    vault.store(payment(), card_tag=a)
    assert vault.card_uses(a) == 1 and vault.verify().ok


def test_sequence_is_never_reused_after_removal_and_reopen(open_vault: OpenVault) -> None:
    vault = open_vault()
    for _ in range(3):
        vault.store(payment())
    vault.remove(3)  # the newest, out of order
    vault.remove(1)
    vault.remove(2)
    vault.close()
    vault = open_vault()
    assert vault.head_sequence == 3
    assert vault.store(payment()).sequence == 4
    vault.close()
    vault = open_vault()
    assert vault.store(payment()).sequence == 5
    with pytest.raises(VaultInputError):
        vault.remove(99)  # never issued


def test_chain_verifies_after_removals_in_any_order_and_reopen(open_vault: OpenVault) -> None:
    vault = open_vault()
    for i in range(12):
        vault.store(payment(100 + i))
    for seq in (3, 1, 7, 2, 12, 8):
        vault.remove(seq)
        report = vault.verify()
        assert report.ok, report.findings
    vault.close()
    vault = open_vault()
    assert vault.last_report is not None and vault.last_report.ok
    report = vault.verify()
    assert report.ok and report.anchor_sequence == 3 and report.checked == 6
    assert [p.sequence for p in vault.pending()] == [4, 5, 6, 9, 10, 11]
    for seq in (4, 5, 6):
        vault.remove(seq)  # the anchor absorbs 7 and 8, removed earlier
    assert vault.verify().anchor_sequence == 8
    for seq in (9, 11, 10):
        vault.remove(seq)
    report = vault.verify()
    assert report.ok and report.anchor_sequence == 12 and report.checked == 0
    assert vault.store(payment()).sequence == 13
    assert vault.verify().ok


def test_remove_many_in_one_transaction(open_vault: OpenVault, vault_dir: Path) -> None:
    vault = open_vault()
    for i in range(10):
        vault.store(payment(100 + i))
    assert vault.remove_many([4, 1, 2, 9, 2]) == [1, 2, 4, 9]
    assert vault.remove_many([1, 3]) == [3]  # 1 is already gone
    with pytest.raises(VaultInputError):
        vault.remove_many([5, 11])  # 11 was never issued: nothing is removed
    assert [p.sequence for p in vault.pending()] == [5, 6, 7, 8, 10]
    report = vault.verify()
    assert report.ok and report.anchor_sequence == 4
    tip = json.loads((vault_dir / "vault.tip").read_text())
    assert tip["removed_total"] == 5


def test_first_sequence_of_a_replacement_vault(open_vault: OpenVault, tmp_path: Path) -> None:
    vault = open_vault(tmp_path / "new", first_sequence=501)
    assert vault.store(payment()).sequence == 501
    assert vault.verify().ok


def test_forward_key_is_derived_from_account_reader_and_sequence(open_vault: OpenVault) -> None:
    vault = open_vault()
    first = vault.store(payment())
    vault.close()
    again = open_vault().pending()[0]
    assert forward_key(first) == forward_key(again) == again.forward_key
    assert forward_key(first) == forward_key_for(ACCOUNT, READER, first.sequence)
    others = {
        forward_key_for(ACCOUNT, READER, first.sequence + 1),
        forward_key_for("acct_other", READER, first.sequence),
        forward_key_for(ACCOUNT, "tmr_other", first.sequence),
    }
    assert forward_key(first) not in others and len(others) == 3
    assert len(forward_key(first)) <= 255


def test_stored_at_comes_from_the_injected_clock(open_vault: OpenVault, clock: ManualClock) -> None:
    vault = open_vault()
    clock.set(1_234_567_890.25)
    assert vault.store(payment()).stored_at == 1_234_567_890.25
    assert vault.pending()[0].stored_at == 1_234_567_890.25


# -- capacity and write failures ---------------------------------------------------------------


def test_full_by_count_is_its_own_error(open_vault: OpenVault) -> None:
    vault = open_vault(max_records=3)
    for _ in range(3):
        vault.store(payment())
    with pytest.raises(VaultFullError) as caught:
        vault.store(payment())
    assert caught.value.limit == "records"
    assert not isinstance(caught.value, VaultWriteError)
    assert vault.head_sequence == 3  # the refused payment used no sequence
    vault.remove(1)
    assert vault.store(payment()).sequence == 4


def test_full_by_bytes_is_its_own_error(open_vault: OpenVault) -> None:
    vault = open_vault(max_bytes=64 * 1024)
    stored = 0
    with pytest.raises(VaultFullError) as caught:
        for _ in range(1000):
            vault.store(payment(metadata={f"k{i}": "x" * 400 for i in range(10)}))
            stored += 1
    assert caught.value.limit == "bytes"
    assert 0 < stored < 1000
    assert len(vault.pending()) == stored
    assert vault.verify().ok


def test_disk_full_declines_and_keeps_every_earlier_record(open_vault: OpenVault) -> None:
    vault = open_vault()
    earlier = [vault.store(payment(100 + i)) for i in range(5)]
    # SQLITE_FULL on demand: cap the database at its current size (the vault's own connection).
    conn = vault._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = {f"k{i}": "y" * 500 for i in range(40)}
    failures = 0
    for i in range(200):
        try:
            earlier.append(vault.store(payment(200 + i, metadata=big, local_id=f"pio_try_{i}")))
        except VaultWriteError as exc:
            failures += 1
            assert exc.sqlite_error == "SQLITE_FULL"
            assert not exc.indeterminate
            failed_id = f"pio_try_{i}"
            break
    assert failures == 1
    # The failed store is not visible, the counter did not move, the earlier records verify.
    pending = vault.pending()
    assert pending == earlier
    assert failed_id not in {p.local_id for p in pending}
    assert vault.head_sequence == earlier[-1].sequence
    assert vault.verify().ok
    # The vault stays usable once there is room, with the next sequence.
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert vault.store(payment()).sequence == earlier[-1].sequence + 1
    vault.close()
    vault = open_vault()
    assert vault.last_report is not None and vault.last_report.ok
    assert [p.local_id for p in vault.pending()][: len(earlier)] == [e.local_id for e in earlier]


def test_store_needs_the_clouds_sealing_key(open_vault: OpenVault) -> None:
    vault = open_vault(sealing_key=None)
    with pytest.raises(VaultConfigError):
        vault.store(payment())


# -- card data at rest -------------------------------------------------------------------------


def test_no_card_number_in_any_file(open_vault: OpenVault, vault_dir: Path) -> None:
    vault = open_vault()
    for i, number in enumerate(TEST_CARDS * 3):
        vault.store(payment(100 + i, number=number))
    for seq in (1, 5, 9):
        vault.remove(seq)
    vault.pending()
    # While open the WAL holds every page written; scan it too.
    assert (vault_dir / "vault.db-wal").exists()
    assert scan_for_pans(vault_dir) == []
    everything = b"".join(p.read_bytes() for p in vault_dir.iterdir())
    # Chip data and the cardholder's name are not in the clear either. (Short values such as
    # "0042" turn up by chance inside the hex of local ids and MACs: only long ones are telling.)
    chip = [v.encode() for v in EMV.values() if len(v) >= 12]
    assert chip
    for secret in [*chip, b"Ada Lovelace", b"VISA CREDIT"]:
        assert secret not in everything
    vault.close()
    assert scan_for_pans(vault_dir) == []


def test_the_scanner_would_find_a_card_number(tmp_path: Path) -> None:
    (tmp_path / PLANTED).touch()  # planted on purpose: the session-end leak scan skips it
    (tmp_path / "leak.log").write_text("card 4242 4242 4242 4242 declined")
    (tmp_path / "leak.db").write_bytes(b"\x00\x01" + TEST_CARDS[2].encode() + b"\xff")
    assert len(scan_for_pans(tmp_path)) >= 2


def test_removed_records_leave_no_ciphertext_after_checkpoint(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    vault = open_vault()
    records = [vault.store(payment(100 + i)) for i in range(6)]
    gone = records[:3]
    for r in gone:
        vault.remove(r.sequence)
    vault.checkpoint()
    data = b"".join(p.read_bytes() for p in vault_dir.iterdir() if p.is_file())
    for r in gone:
        assert r.sealed[-40:] not in data  # secure_delete zeroed the freed cells
    for r in records[3:]:
        assert r.sealed[-40:] in data


def test_only_the_clouds_private_key_opens_the_sealed_card_data(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    vault = open_vault()
    record = vault.store(payment())
    aad = sealed.associated_data(ACCOUNT, READER, record.sequence)
    assert unseal(record)["number"] == "4242424242424242"

    # Everything the reader holds: the device key and each key the vault derives from it.
    device_key = (vault_dir / "device.key").read_bytes()
    keys = vault._keys
    reader_material = [device_key, keys.mac, keys.display(bytes(16), record.sequence)]
    for material in reader_material:
        with pytest.raises(sealed.SealError):
            sealed.open_sealed(X25519PrivateKey.from_private_bytes(material), record.sealed, aad)
        body = record.sealed[-(len(record.sealed) - 2 - len("csk_test_1") - 32) :]
        with pytest.raises(InvalidTag):
            AESGCM(material).decrypt(body[:12], body[12:], aad)
    # And the cloud's key opens it only for this record.
    with pytest.raises(sealed.SealError):
        sealed.open_sealed(
            CLOUD_PRIVATE,
            record.sealed,
            sealed.associated_data(ACCOUNT, READER, record.sequence + 1),
        )


def test_no_column_or_field_for_cvc_track_or_pin(open_vault: OpenVault, vault_dir: Path) -> None:
    open_vault().store(payment())
    with side_connection(vault_dir) as conn:
        columns = {
            name.lower()
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for _, name, *_ in conn.execute(f"PRAGMA table_info({table})")
        }
    for forbidden in ("cvc", "cvv", "track", "pin", "pan", "number"):
        assert not any(forbidden in c for c in columns), columns
    assert not {"cvc", "cvv", "track", "track2", "pin"} & set(
        vault_module.CardRead.__dataclass_fields__
    )


@pytest.mark.parametrize("tag", ["57", "56", "9F6B", "9f1f", "9F20", "99"])
def test_track_and_pin_emv_tags_are_refused(open_vault: OpenVault, tag: str) -> None:
    vault = open_vault()
    bad = payment(card=card(emv_data={**EMV, tag: "4242424242424242D3112"}))
    with pytest.raises(VaultInputError):
        vault.store(bad)
    assert vault.summary().count == 0


@pytest.mark.parametrize(
    "over",
    [
        {"metadata": {"note": "4242424242424242"}},
        {"metadata": {"note": "card 5555 5555 5555 4444"}},
        {"description": "paid with 378282246310005"},
        {"card": card(receipt={"x": "6011-1111-1111-1117"})},
        {"card": card(cardholder_name="4000056655665556")},
        {"amount": 0},
        {"amount": True},
        {"currency": "USD"},
        {"capture_method": "later"},
        {"account": "acct\x1fother"},
        {"local_id": "pio 1"},
        {"local_id": "pio_4242424242424242"},
        {"card": card(number="4242-4242-4242-4242")},
        {"card": card(exp_month=13)},
        {"metadata": {f"k{i}": "v" for i in range(51)}},
        {"metadata": {"a[b]": "v"}},
        # Display fields the cloud's device API refuses: stored, such a record would stick.
        {"card": card(cardholder_name="")},
        {"card": card(cardholder_name="A" * 201)},
        {"card": card(brand="b" * 41)},
        {"card": card(read_method="r" * 61)},
        {"card": card(brand="4242 4242 4242 4242")},
        {"card": card(read_method="tap 4000056655665556")},
    ],
)
def test_bad_payments_are_refused_before_anything_is_written(
    open_vault: OpenVault, over: dict[str, object]
) -> None:
    vault = open_vault()
    with pytest.raises(VaultInputError):
        vault.store(payment(**over))  # type: ignore[arg-type]
    assert vault.head_sequence == 0


def test_the_widest_display_the_vault_stores_is_one_the_cloud_takes(
    open_vault: OpenVault,
) -> None:
    vault = open_vault()
    widest = card(cardholder_name="A" * 200, brand="b" * 40, read_method="r" * 60)
    vault.store(payment(card=widest))
    vault.store(payment(card=card(cardholder_name=None)))
    for record in vault.pending():
        DisplayBody.model_validate(record.display.as_dict())


@pytest.mark.parametrize("field", ["cardholder_name", "brand", "read_method"])
def test_the_cloud_refuses_a_card_number_in_shown_text(field: str) -> None:
    # Found by the sealed-record fuzzer: a forwarded display's cardholder name that was a
    # card number was stored on the PaymentMethod.
    with pytest.raises(ValidationError):
        DisplayBody.model_validate({field: "4242 4242 4242 4242"})
    assert DisplayBody.model_validate({field: "visa"}).model_dump()[field] == "visa"


def test_a_new_local_id_never_holds_what_the_cloud_reads_as_a_card_number() -> None:
    # Found by the simulator (seed 947): `pio_` + 32 random hex digits held a Luhn-valid run
    # of 13+ digits about once in 600 draws; the cloud refused the batch carrying it.
    card_like = int("abcdefabcdefabcd4242424242424242", 16)
    assert contains_card_number(f"pio_{card_like:032x}")
    draws = iter([card_like, 0xABC])
    assert new_local_id(lambda: next(draws)) == f"pio_{0xABC:032x}"
    rng = random.Random(7)
    ids = [new_local_id(lambda: rng.getrandbits(128)) for _ in range(5000)]
    assert not any(contains_card_number(i) for i in ids)
    assert all(re.fullmatch(r"pio_[0-9a-f]{32}", i) for i in ids)


def test_card_read_never_shows_its_number() -> None:
    shown = repr(card()) + repr(payment())
    assert "4242424242424242" not in shown and EMV["9F26"] not in shown


# -- the device key and the files --------------------------------------------------------------


def test_device_key_is_a_0600_file_outside_the_database(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    open_vault().store(payment())
    key = vault_dir / "device.key"
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((vault_dir / "vault.db").stat().st_mode) == 0o600
    assert key.read_bytes() not in (vault_dir / "vault.db").read_bytes()


def test_device_key_elsewhere(open_vault: OpenVault, tmp_path: Path, vault_dir: Path) -> None:
    key_path = tmp_path / "keys" / "reader.key"
    vault = open_vault(device_key_path=key_path)
    vault.store(payment())
    vault.close()
    assert key_path.exists() and not (vault_dir / "device.key").exists()
    with pytest.raises(VaultKeyError):
        open_vault()  # the default location holds no key for this vault
    assert open_vault(device_key_path=key_path).pending()[0].sequence == 1


def test_refuses_an_exposed_missing_or_wrong_device_key(
    open_vault: OpenVault, vault_dir: Path
) -> None:
    vault = open_vault()
    vault.store(payment())
    vault.close()
    key = vault_dir / "device.key"
    os.chmod(key, 0o644)
    with pytest.raises(VaultKeyError):
        open_vault()
    os.chmod(key, 0o600)
    original = key.read_bytes()
    key.write_bytes(os.urandom(32))
    with pytest.raises(VaultKeyError):
        open_vault()
    key.unlink()
    with pytest.raises(VaultKeyError):
        open_vault()
    key.write_bytes(original)
    os.chmod(key, 0o600)
    assert open_vault().verify().ok


def test_one_process_at_a_time(open_vault: OpenVault) -> None:
    open_vault()
    with pytest.raises(VaultLockedError):
        open_vault()


def test_verify_report_is_json_ready(open_vault: OpenVault) -> None:
    vault = open_vault()
    vault.store(payment())
    doc = json.loads(json.dumps(vault.verify().as_dict()))
    assert doc["ok"] is True and doc["checked"] == 1 and doc["findings"] == []
    assert str(FindingKind.MISSING) == "missing"


def test_side_connection_sees_strict_tables(vault_dir: Path, open_vault: OpenVault) -> None:
    open_vault().store(payment())
    with side_connection(vault_dir) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE records SET amount = 'lots' WHERE sequence = 1")


def test_open_in_a_fresh_directory_writes_the_tip(open_vault: OpenVault, vault_dir: Path) -> None:
    vault = open_vault()
    assert (vault_dir / "vault.tip").exists()
    assert json.loads((vault_dir / "vault.tip").read_text())["head_sequence"] == 0
    assert isinstance(vault, Vault)


def test_verify_directory_reports_instead_of_refusing(
    open_vault: OpenVault, vault_dir: Path, clock: ManualClock
) -> None:
    vault = open_vault()
    for _ in range(3):
        vault.store(payment())
    vault.close()
    assert verify_directory(vault_dir, clock=clock).ok
    (vault_dir / "vault.tip").unlink()
    report = verify_directory(vault_dir, clock=clock)
    assert [f.kind for f in report.findings] == [FindingKind.ROLLBACK]
    assert not report.ok


def test_sealing_key_from_the_clouds_document() -> None:
    doc = {
        "kid": "csk_abc",
        "public_key": base64.b64encode(CLOUD_PUBLIC).decode(),
        "alg": sealed.ALGORITHM,
    }
    assert SealingKey.from_document(doc) == SealingKey("csk_abc", CLOUD_PUBLIC)
    for bad in ({**doc, "alg": "RSA"}, {**doc, "public_key": "!!"}, {"alg": sealed.ALGORITHM}):
        with pytest.raises(VaultConfigError):
            SealingKey.from_document(bad)


def test_a_cryptogram_that_reads_like_a_card_number_is_not_refused(open_vault: OpenVault) -> None:
    # Regression: a random all-digit, Luhn-valid cryptogram refused about one payment in 2,000.
    vault = open_vault()
    lucky = "5234567812345671"  # Luhn-valid, all digits: as a random cryptogram can be
    receipt = {"application_cryptogram": lucky, "account_type": None}
    stored = vault.store(payment(card=card(receipt=receipt)))
    assert stored.display.receipt["application_cryptogram"] == lucky
    # The card's own number is refused there, and any card-like number in free text.
    with pytest.raises(VaultInputError):
        vault.store(payment(card=card(receipt={"application_cryptogram": "4242424242424242"})))
    with pytest.raises(VaultInputError):
        vault.store(payment(card=card(receipt={"note": lucky})))
