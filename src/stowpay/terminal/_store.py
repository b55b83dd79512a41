"""What the SDK remembers in its data directory between runs.

``terminal.json`` (mode 0600, replaced atomically): this POS's id, the pairing secret each
reader handed over at the last online connection (needed to connect to it offline), and the
readers of the last online discovery per Location (offline discovery answers with them).
In-process readers keep their own state and vault under ``readers/<kind>/``.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

from ._models import DiscoveryMethod, NetworkStatus, Reader

STORE_NAME = "terminal.json"


class StoreError(Exception):
    """The data directory cannot be used."""


class SdkStore:
    """The SDK's small JSON state in `directory` (created if missing, mode 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {directory}: {exc}") from exc
        self._lock = threading.Lock()
        self._doc = self._load()
        if not isinstance(self._doc.get("pos_id"), str):
            self._doc["pos_id"] = "pos_" + secrets.token_hex(8)
            self._save()

    @property
    def pos_id(self) -> str:
        """This POS's stable id (readers pair with it)."""
        return str(self._doc["pos_id"])

    def reader_dir(self, kind: str) -> Path:
        """Where an in-process reader of `kind` keeps its state and vault."""
        return self.directory / "readers" / kind

    # -- pairings ------------------------------------------------------------------------------

    def pairing_secret(self, key: str) -> str | None:
        """The pairing secret the reader `key` gave at the last online connection."""
        value = dict(self._doc.get("pairings") or {}).get(key)
        return value if isinstance(value, str) else None

    def save_pairing(self, key: str, secret: str) -> None:
        """Keep the pairing secret of reader `key` (replacing an older one)."""
        with self._lock:
            pairings = dict(self._doc.get("pairings") or {})
            if pairings.get(key) == secret:
                return
            pairings[key] = secret
            self._doc["pairings"] = pairings
            self._save()

    # -- discovered readers --------------------------------------------------------------------

    def cached_readers(self, location: str | None) -> list[Reader]:
        """The readers of the last online discovery at `location`, network status UNKNOWN."""
        raw = dict(self._doc.get("readers") or {}).get(location or "")
        if not isinstance(raw, list):
            return []
        return [_reader(doc) for doc in raw if isinstance(doc, dict)]

    def save_readers(self, location: str | None, readers: list[Reader]) -> None:
        """Remember an online discovery's readers for offline discovery."""
        with self._lock:
            cache = dict(self._doc.get("readers") or {})
            cache[location or ""] = [_reader_doc(r) for r in readers]
            self._doc["readers"] = cache
            self._save()

    # -- the file ------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        path = self.directory / STORE_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise StoreError(f"{path} is damaged (not JSON): {exc}") from exc
        if not isinstance(doc, dict):
            raise StoreError(f"{path} is damaged (not a JSON object)")
        return doc

    def _save(self) -> None:
        path = self.directory / STORE_NAME
        data = json.dumps(self._doc, indent=1, sort_keys=True).encode() + b"\n"
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".terminal-", suffix=".tmp")
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc}") from exc


def _reader_doc(reader: Reader) -> dict[str, Any]:
    return {
        "id": reader.id,
        "label": reader.label,
        "device_type": reader.device_type,
        "serial_number": reader.serial_number,
        "location": reader.location,
        "ip_address": reader.ip_address,
        "lan_url": reader.lan_url,
    }


def _reader(doc: dict[str, Any]) -> Reader:
    def text(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) else None

    return Reader(
        id=text("id"),
        label=text("label"),
        device_type=text("device_type"),
        serial_number=text("serial_number"),
        location=text("location"),
        network_status=NetworkStatus.UNKNOWN,
        ip_address=text("ip_address"),
        lan_url=text("lan_url"),
        discovery_method=DiscoveryMethod.INTERNET,
    )
