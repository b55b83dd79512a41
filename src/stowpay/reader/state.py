"""What a reader remembers across restarts, in its data directory.

Files (all mode 0600, each replaced atomically so a crash leaves the old or the new version):

- ``identity.json``: the reader's identity once registered: ``{reader, account, device_key}``.
  The device key is the reader's credential at the cloud (`rdk_test_...`).
- ``reader.json``: everything else: the serial number, the registration code being shown, the
  cloud context of the last heartbeat (Location, Configuration, sealing key), the connection
  history the offline rules read, the hashes of the POS pairing secrets, and the key of the
  card tags (an HMAC of the card number). The per-card use counts of payments held offline
  live in the vault, under those tags (never the number), in each payment's own transaction.
  A ``card_uses`` entry here is from an older version and is moved to the vault at start.
- ``vault/``: the offline vault (`stowpay.reader.vault`), opened by whoever runs the reader.

Pairing secrets are kept as SHA-256 hashes only: a copy of the directory does not let anyone
connect as the POS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import secrets
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _durable
from .cloud_link import Activation, ReaderContext, RegistrationCode
from .rules import ConnectionHistory, RiskPolicy

IDENTITY_NAME = "identity.json"
STATE_NAME = "reader.json"
VAULT_DIR = "vault"
FORMAT = 1
#: How many POS pairings are remembered (the oldest is forgotten first).
MAX_PAIRINGS = 32
#: How far apart two software checks must be to be written to disk (each heartbeat is one).
_SOFTWARE_CHECK_PERSIST = 3600.0


class StateError(Exception):
    """The data directory cannot be used (unreadable, damaged, or open to other users)."""


@dataclass(frozen=True)
class Identity:
    """Who the reader is at the cloud, once a merchant registered it."""

    reader: str
    account: str
    device_key: str = field(repr=False)


@dataclass(frozen=True)
class CachedContext:
    """The cloud context of the last successful heartbeat, kept for offline use."""

    reader: Mapping[str, Any]
    account: str
    location: Mapping[str, Any]
    configuration: Mapping[str, Any]
    sealing_key: Mapping[str, str]
    server_time: float
    fetched_at: float

    @classmethod
    def from_context(cls, ctx: ReaderContext, *, now: float) -> CachedContext:
        """Keep a heartbeat's answer, with when it arrived."""
        return cls(
            reader=dict(ctx.reader),
            account=ctx.account,
            location=dict(ctx.location),
            configuration=dict(ctx.configuration),
            sealing_key=dict(ctx.sealing_key),
            server_time=ctx.server_time,
            fetched_at=now,
        )

    @property
    def location_id(self) -> str | None:
        """The id of the reader's Location."""
        value = self.location.get("id")
        return value if isinstance(value, str) else None

    @property
    def offline_enabled(self) -> bool:
        """True when the effective Configuration enables offline payments."""
        offline = self.configuration.get("offline")
        return isinstance(offline, Mapping) and offline.get("enabled") is True

    @property
    def policy(self) -> RiskPolicy:
        """The merchant's offline risk policy (`stowpay_offline_policy`)."""
        raw = self.configuration.get("stowpay_offline_policy")
        return RiskPolicy.from_config(raw if isinstance(raw, Mapping) else None)

    @property
    def country(self) -> str | None:
        """The Location's country (ISO 3166-1 alpha-2), for the SCA rules."""
        address = self.location.get("address")
        if isinstance(address, Mapping) and isinstance(address.get("country"), str):
            return str(address["country"]).upper()
        return None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form kept in ``reader.json``."""
        return {
            "reader": dict(self.reader),
            "account": self.account,
            "location": dict(self.location),
            "configuration": dict(self.configuration),
            "sealing_key": dict(self.sealing_key),
            "server_time": self.server_time,
            "fetched_at": self.fetched_at,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CachedContext:
        """Read the JSON form back."""
        return cls(
            reader=dict(doc["reader"]),
            account=str(doc["account"]),
            location=dict(doc["location"]),
            configuration=dict(doc["configuration"]),
            sealing_key={str(k): str(v) for k, v in dict(doc["sealing_key"]).items()},
            server_time=float(doc["server_time"]),
            fetched_at=float(doc["fetched_at"]),
        )


def hash_secret(secret: str) -> str:
    """The stored form of a pairing secret."""
    return hashlib.sha256(b"stowpay pairing v1\x00" + secret.encode()).hexdigest()


class ReaderState:
    """The reader's persisted identity and history. Thread-safe; every change is durable."""

    def __init__(
        self,
        directory: Path,
        doc: dict[str, Any],
        identity: Identity | None,
        *,
        write_hook: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = directory
        self._write_hook = write_hook
        self._doc = doc
        self._identity = identity
        self._mutex = threading.RLock()
        self._software_check_saved = float(doc.get("software_updated_at") or 0.0)
        # The parsed form of the context dict it was read from (a confirm reads it 3 times).
        self._context_cache: tuple[object, CachedContext] | None = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        rng: random.Random,
        write_hook: Callable[[str], None] | None = None,
    ) -> ReaderState:
        """Open (or start) the state in `directory`; `StateError` if it cannot be used.

        `write_hook`, when given, is called with a name just before and just after each file
        write (``state.write``, ``state.written``): the simulator raises from it to crash the
        reader at that boundary (`stowpay.sim`).
        """
        root = Path(directory)
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot use {root} as the reader's data directory: {exc}") from exc
        if not root.is_dir():
            raise StateError(f"{root} is not a directory")
        identity = _load_identity(root / IDENTITY_NAME)
        raw = _read_json(root / STATE_NAME)
        doc: dict[str, Any] = raw if raw is not None else {}
        if doc.get("format", FORMAT) != FORMAT:
            raise StateError(f"{root / STATE_NAME} has an unknown format {doc.get('format')!r}")
        state = cls(root, doc, identity, write_hook=write_hook)
        if raw is None or "serial_number" not in doc or "card_key" not in doc:
            doc.setdefault("format", FORMAT)
            doc.setdefault("serial_number", f"STOWSIM-{rng.getrandbits(48):012X}")
            # A key, so from the OS's generator and not from the (possibly seeded) rng.
            doc.setdefault("card_key", secrets.token_hex(32))
            state._save()
        return state

    @classmethod
    def inspect(cls, directory: str | os.PathLike[str]) -> ReaderState:
        """Open an existing data directory without creating or writing anything."""
        root = Path(directory)
        if not root.is_dir():
            raise StateError(f"{root} is not a reader's data directory (no such directory)")
        raw = _read_json(root / STATE_NAME)
        if raw is None:
            raise StateError(f"{root} is not a reader's data directory (no {STATE_NAME})")
        return cls(root, raw, _load_identity(root / IDENTITY_NAME))

    @property
    def vault_dir(self) -> Path:
        """Where the offline vault lives."""
        return self.directory / VAULT_DIR

    # -- identity ------------------------------------------------------------------------------

    @property
    def serial_number(self) -> str:
        """The device's serial number, made once."""
        return str(self._doc["serial_number"])

    @property
    def identity(self) -> Identity | None:
        """The reader's identity, or None while unregistered."""
        return self._identity

    @property
    def device_key(self) -> str | None:
        """The reader's credential at the cloud, or None while unregistered."""
        identity = self._identity
        return None if identity is None else identity.device_key

    def save_identity(self, activation: Activation) -> Identity:
        """Keep the identity the cloud gave at activation (before it is used for anything)."""
        identity = Identity(activation.reader, activation.account, activation.device_key)
        data = json.dumps(
            {
                "reader": identity.reader,
                "account": identity.account,
                "device_key": identity.device_key,
            }
        ).encode()
        with self._mutex:
            self._write(self.directory / IDENTITY_NAME, data)
            self._identity = identity
            self._doc.pop("registration", None)
            self._save()
        return identity

    # -- registration --------------------------------------------------------------------------

    @property
    def registration(self) -> RegistrationCode | None:
        """The registration code being shown while unregistered."""
        raw = self._doc.get("registration")
        if not isinstance(raw, Mapping):
            return None
        return RegistrationCode(str(raw["code"]), float(raw["expires_at"]))

    def save_registration(self, code: RegistrationCode | None) -> None:
        """Remember the shown code, so a restart keeps showing (and polling) the same one."""
        with self._mutex:
            if code is None:
                self._doc.pop("registration", None)
            else:
                self._doc["registration"] = {"code": code.code, "expires_at": code.expires_at}
            self._save()

    # -- the cloud's context -------------------------------------------------------------------

    @property
    def context(self) -> CachedContext | None:
        """The context of the last heartbeat, or None before the first one."""
        raw = self._doc.get("context")
        cached = self._context_cache
        if cached is not None and cached[0] is raw:
            return cached[1]
        if not isinstance(raw, Mapping):
            return None
        try:
            context = CachedContext.from_dict(raw)
        except (KeyError, TypeError, ValueError):
            return None
        # `save_context` puts a new dict in place, so the identity check sees every change.
        self._context_cache = (raw, context)
        return context

    def save_context(self, context: CachedContext) -> None:
        """Keep a heartbeat's context; written only when something in it changed."""
        with self._mutex:
            old = self._doc.get("context")
            new = context.as_dict()
            if isinstance(old, dict) and _same_context(old, new):
                self._doc["context"] = new
                return
            self._doc["context"] = new
            self._save()

    # -- connection history --------------------------------------------------------------------

    @property
    def history(self) -> ConnectionHistory:
        """What the offline rules need to know of the reader's online life."""
        with self._mutex:
            raw = self._doc.get("history") or {}
            online_at = {
                (str(e["device_type"]), str(e["location"])): float(e["at"])
                for e in raw.get("online_at", [])
            }
            updated = self._doc.get("software_updated_at")
            return ConnectionHistory(
                account=raw.get("account"),
                online_at=online_at,
                software_updated_at=None if updated is None else float(updated),
                network_id=raw.get("network_id"),
            )

    def record_online_connection(
        self, *, device_type: str, location: str, account: str, network_id: str | None, now: float
    ) -> None:
        """A POS connected online at `location`: offline use there is open for 30 days."""
        with self._mutex:
            raw = dict(self._doc.get("history") or {})
            entries = [
                e
                for e in raw.get("online_at", [])
                if (e["device_type"], e["location"]) != (device_type, location)
            ]
            entries.append({"device_type": device_type, "location": location, "at": now})
            raw.update(online_at=entries[-64:], account=account, network_id=network_id)
            self._doc["history"] = raw
            self._save()

    def record_software_check(self, now: float) -> None:
        """The cloud accepted this software version (a heartbeat): it counts as up to date."""
        with self._mutex:
            self._doc["software_updated_at"] = now
            if now - self._software_check_saved >= _SOFTWARE_CHECK_PERSIST:
                self._software_check_saved = now
                self._save()

    # -- POS pairings --------------------------------------------------------------------------

    def save_pairing(self, pos_id: str, secret: str, *, now: float) -> None:
        """Remember (the hash of) the pairing secret handed to `pos_id` at an online connection."""
        with self._mutex:
            pairings = {
                k: v for k, v in dict(self._doc.get("pairings") or {}).items() if k != pos_id
            }
            pairings[pos_id] = {"hash": hash_secret(secret), "at": now}
            while len(pairings) > MAX_PAIRINGS:
                oldest = min(pairings, key=lambda k: float(pairings[k]["at"]))
                del pairings[oldest]
            self._doc["pairings"] = pairings
            self._save()

    def pairing_matches(self, pos_id: str, secret: str) -> bool:
        """True when `secret` is the one last handed to `pos_id` (compared in constant time)."""
        entry = dict(self._doc.get("pairings") or {}).get(pos_id)
        if not isinstance(entry, Mapping):
            # Compare anyway, so an unknown POS takes as long as a wrong secret.
            hmac.compare_digest(hash_secret(secret), "0" * 64)
            return False
        return hmac.compare_digest(hash_secret(secret), str(entry["hash"]))

    # -- card tags ---------------------------------------------------------------------------------

    def card_tag(self, number: str) -> str:
        """A keyed hash of a card number: stable on this reader, useless without its key."""
        key = bytes.fromhex(str(self._doc["card_key"]))
        return hmac.new(key, b"stowpay card v1\x00" + number.encode(), hashlib.sha256).hexdigest()

    def legacy_card_uses(self) -> dict[str, list[int]]:
        """Per-card uses an older version kept here (card tag -> sequences), to move over."""
        with self._mutex:
            raw = self._doc.get("card_uses")
            if not isinstance(raw, Mapping):
                return {}
            return {
                str(tag): [int(s) for s in seqs if type(s) is int]
                for tag, seqs in raw.items()
                if isinstance(seqs, list)
            }

    def drop_legacy_card_uses(self) -> None:
        """The uses an older version kept here are in the vault now: forget them here."""
        with self._mutex:
            if "card_uses" in self._doc:
                del self._doc["card_uses"]
                self._save()

    # -- writing -------------------------------------------------------------------------------

    def _save(self) -> None:
        data = json.dumps(self._doc, indent=1, sort_keys=True).encode() + b"\n"
        try:
            self._write(self.directory / STATE_NAME, data)
        except OSError as exc:
            raise StateError(f"cannot write {self.directory / STATE_NAME}: {exc}") from exc

    def _write(self, path: Path, data: bytes) -> None:
        hook = self._write_hook
        if hook is not None:
            hook("state.write")
        _durable.write_atomically(path, data, mode=0o600)
        if hook is not None:
            hook("state.written")


def _same_context(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    # server_time, fetched_at and the reader's own last_seen_at change on every heartbeat;
    # not worth an fsync each time.
    return _lasting(old) == _lasting(new)


def _lasting(context: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in context.items() if k not in ("server_time", "fetched_at")}
    reader = kept.get("reader")
    if isinstance(reader, Mapping):
        kept["reader"] = {k: v for k, v in reader.items() if k != "last_seen_at"}
    return kept


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = _durable.read_if_present(path)
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StateError(f"{path} is damaged (not JSON): {exc}") from exc
    if not isinstance(doc, dict):
        raise StateError(f"{path} is damaged (not a JSON object)")
    return doc


def _load_identity(path: Path) -> Identity | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StateError(f"{path} holds the reader's credential and is open to others; chmod 600")
    doc = _read_json(path)
    if doc is None:
        return None
    try:
        return Identity(str(doc["reader"]), str(doc["account"]), str(doc["device_key"]))
    except KeyError as exc:
        raise StateError(f"{path} is damaged (no {exc.args[0]})") from exc
