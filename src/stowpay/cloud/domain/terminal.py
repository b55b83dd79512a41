"""Terminal: Locations, Configurations, Readers and connection tokens.

Objects, as Stripe shapes them (`reference/stripe-offline-spec.md` 5.1-5.2):

- `terminal.location` (`tml_`): where readers stand. Its `configuration_overrides` names the
  Configuration its readers use; without one, the account's default applies.
- `terminal.configuration` (`tmc_`): reader settings, of which Stowpay acts on
  `offline.enabled` and on its own extension `stowpay_offline_policy`, the merchant's offline
  risk policy (`merge_offline_policy`). Every account has one default configuration
  (`is_account_default`), made the first time it is listed or needed, with an id derived
  from the account so that two requests making it at once make one. It cannot be deleted.
- `terminal.reader` (`tmr_`): a registered device. `simulated-wpe` (and `simulated-s700`)
  register Stripe's simulated readers; any other code must be one a real device obtained.
- connection tokens (`pst_test_...`): short-lived, single-use credentials a POS hands to a
  reader; only a hash of the secret is stored.

No events are emitted: Stripe has no event types for these objects' creation or changes
(`terminal.reader.action_*` belong to reader actions, which the reader issue adds).

Seam for the reader's device-side endpoints
-------------------------------------------
The device-side routes (`routes.device` and `domain.devices`, authenticated by device keys
rather than an API key) plug in here:

1. **Activation.** An unregistered device asks for a code: the route calls
   `issue_registration_code(tx, DeviceInfo(...), now=...)` and the device shows the code. The
   merchant registers it (`POST /v1/terminal/readers`), which calls
   `redeem_registration_code` and creates the reader with the device's details and
   `status: "offline"`. The device polls with its code; `registration_outcome(tx, code)` tells
   it the (account, reader) it became, at which point the route issues the device's own
   credential and hands it `sealing.public_sealing_key(tx, clock)` and
   `effective_configuration(tx, account_id, reader["location"])` (`offline_enabled` of it).
2. **Connection.** A POS's connection token reaches the reader;
   `redeem_connection_token(tx, secret, now)` gives (account, location) once; a token scoped
   to a location is good only for readers at that location.
3. **Heartbeat.** Each heartbeat updates the reader's `status` ("online"), `last_seen_at`
   (milliseconds), `ip_address` and `device_sw_version` with `tx.update` (which also keeps
   the `status` column the list filter reads in step). Marking silent readers "offline" is
   the same write, done when a heartbeat is overdue.
4. **Forwarding.** Stored offline payments go to `offline_ingest.ingest(ctx, reader, batch,
   unseal=..., associated_data=...)`, with `unseal` built on `sealing.private_sealing_key`.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from ... import __version__
from ...wire.errors import InvalidRequestError, NotFoundError
from ...wire.ids import random_token
from ..api import Context
from ..settings import Settings
from ..storage import Tx
from ..storage import terminal as store
from ..storage.device_keys import forget_device_keys
from .payment_intents import merge_metadata

LOCATION = "terminal.location"
CONFIGURATION = "terminal.configuration"
READER = "terminal.reader"

#: Stripe's registration codes for simulated readers, and the device type each registers.
SIMULATED_CODES = {
    "simulated-wpe": "simulated_wisepos_e",
    "simulated-s700": "simulated_stripe_s700",
}

#: How long a code shown by an unregistered device stays redeemable.
REGISTRATION_CODE_TTL = 30 * 60.0
#: How long a redeemed code's outcome stays readable by the device that showed it.
REGISTRATION_KEPT = 24 * 3600.0

# The `ref` column of a configuration says whether it is the account default, so the list
# filter `is_account_default` is a column match (a body's flag is not indexed).
_DEFAULT = "account_default"
_CUSTOM = "custom"

# Codes are read off a screen and typed: lowercase letters without the look-alikes i, l, o.
_CODE_LETTERS = "abcdefghjkmnpqrstuvwxyz"
_CODE_GROUPS = 3
_CODE_GROUP_LEN = 5


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# -- locations -----------------------------------------------------------------------------


def get_location(ctx: Context, location_id: str, *, param: str = "id") -> dict[str, Any]:
    """This account's Location, or Stripe's 404 naming `param`."""
    location = ctx.tx.get(ctx.account_id, location_id, LOCATION)
    if location is None:
        raise NotFoundError("location", location_id, param=param)
    return location


def create_location(
    ctx: Context,
    *,
    display_name: str,
    address: dict[str, str | None],
    configuration_overrides: str | None,
    metadata: dict[str, str] | str | None,
    phone: str | None,
) -> dict[str, Any]:
    """Create a Location; `configuration_overrides` must be one of this account's."""
    if configuration_overrides is not None:
        get_configuration(ctx, configuration_overrides, param="configuration_overrides")
    location = {
        "id": ctx.ids.new("tml"),
        "object": LOCATION,
        "address": _address({}, address),
        "address_kana": None,
        "address_kanji": None,
        "configuration_overrides": configuration_overrides,
        "created": ctx.now(),
        "display_name": display_name,
        "display_name_kana": None,
        "display_name_kanji": None,
        "livemode": False,
        "metadata": merge_metadata({}, metadata),
        "phone": phone,
    }
    # `ref` holds the override, so a Configuration can tell whether a Location uses it.
    ctx.tx.insert(ctx.account_id, location, ref=configuration_overrides)
    return location


_ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")


def _address(current: dict[str, Any], given: dict[str, str | None]) -> dict[str, Any]:
    out = {k: current.get(k) for k in _ADDRESS_FIELDS}
    out.update({k: v for k, v in given.items() if k in _ADDRESS_FIELDS})
    if out["country"] is not None:
        out["country"] = out["country"].upper()
    return out


def update_location(
    ctx: Context, location: dict[str, Any], changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply the parameters the caller sent (None: the caller sent "" to unset)."""
    if "display_name" in changes:
        if changes["display_name"] is None:
            raise InvalidRequestError("A Location must have a display_name.", param="display_name")
        location["display_name"] = changes["display_name"]
    if "address" in changes:
        given = changes["address"]
        if given is None:
            raise InvalidRequestError("A Location must have an address.", param="address")
        country = given.get("country")
        if "country" in given and (
            country is None or country.upper() != location["address"]["country"]
        ):
            # Stripe: a Location's country is fixed; readers there were set up for it.
            raise InvalidRequestError(
                "You cannot change the country of a Location. Create a new Location and "
                "register its readers there instead.",
                param="address[country]",
            )
        location["address"] = _address(location["address"], given)
    if "configuration_overrides" in changes:
        override = changes["configuration_overrides"]
        if override is not None:
            get_configuration(ctx, override, param="configuration_overrides")
        location["configuration_overrides"] = override
    if "phone" in changes:
        location["phone"] = changes["phone"]
    if "metadata" in changes:
        location["metadata"] = merge_metadata(location["metadata"], changes["metadata"])
    # An empty `ref` (not None, which `update` leaves alone) records "no override".
    ctx.tx.update(ctx.account_id, location, ref=location["configuration_overrides"] or "")
    return location


def delete_location(ctx: Context, location: dict[str, Any]) -> dict[str, Any]:
    """Delete a Location that no reader is registered to."""
    if _any(ctx.tx, ctx.account_id, READER, location["id"]):
        # A reader without its Location would lose its configuration and its offline rules.
        raise InvalidRequestError(
            "This Location has readers registered to it. Delete those readers first.",
            param="location",
        )
    ctx.tx.delete(ctx.account_id, location["id"])
    return {"id": location["id"], "object": LOCATION, "deleted": True}


def _any(tx: Tx, account_id: str, type_: str, ref: str) -> bool:
    page = tx.list_page(account_id, type_, limit=1, filters={"ref": ref})
    return page is not None and bool(page.data)


# -- configurations ------------------------------------------------------------------------


def _configuration(
    config_id: str, created: int, *, is_default: bool, name: str | None, offline: bool | None
) -> dict[str, Any]:
    return {
        "id": config_id,
        "object": CONFIGURATION,
        "bbpos_wisepos_e": None,
        "cellular": None,
        "created": created,
        "is_account_default": is_default,
        "livemode": False,
        "name": name,
        "offline": None if offline is None else {"enabled": offline},
        "reboot_window": None,
        "stripe_s700": None,
        "stowpay_offline_policy": None,
        "tipping": None,
        "wifi": None,
    }


def default_configuration_id(account_id: str) -> str:
    """The id of an account's default configuration: fixed, so it is made only once."""
    return "tmc_" + _hash(f"stowpay default configuration {account_id}")[:24]


def default_configuration(tx: Tx, account_id: str) -> dict[str, Any]:
    """The account's default configuration, made now if this is its first use."""
    config_id = default_configuration_id(account_id)
    found = tx.get(account_id, config_id, CONFIGURATION)
    if found is not None:
        return found
    account = tx.account(account_id)
    # Dated with the account: the default conceptually exists as long as the account does.
    created = int(account["created"]) if account is not None else 0
    config = _configuration(config_id, created, is_default=True, name=None, offline=None)
    store.insert_object_once(tx, account_id, config, ref=_DEFAULT)
    return tx.get(account_id, config_id, CONFIGURATION) or config


def effective_configuration(tx: Tx, account_id: str, location_id: str | None) -> dict[str, Any]:
    """The Configuration a reader at `location_id` uses: the Location's override, else the
    account default (also when the Location or its override is gone).

    It may write (the default is made on first use), so a write transaction suits it best.
    """
    if location_id is not None:
        location = tx.get(account_id, location_id, LOCATION)
        override = location.get("configuration_overrides") if location else None
        if override:
            config = tx.get(account_id, override, CONFIGURATION)
            if config is not None:
                return config
    return default_configuration(tx, account_id)


def offline_enabled(configuration: dict[str, Any]) -> bool:
    """Whether a Configuration allows offline collection (Stripe: false unless enabled)."""
    offline = configuration.get("offline")
    return bool(offline and offline.get("enabled"))


def get_configuration(ctx: Context, config_id: str, *, param: str = "id") -> dict[str, Any]:
    """This account's Configuration (the default one made if it is the one asked for)."""
    if config_id == default_configuration_id(ctx.account_id):
        return default_configuration(ctx.tx, ctx.account_id)
    config = ctx.tx.get(ctx.account_id, config_id, CONFIGURATION)
    if config is None:
        raise NotFoundError("configuration", config_id, param=param)
    return config


def create_configuration(
    ctx: Context,
    *,
    name: str | None,
    offline: bool | None,
    offline_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create a Configuration (never the account default).

    `offline_policy` is the `stowpay_offline_policy` parameter as sent (see
    `merge_offline_policy`).
    """
    config = _configuration(
        ctx.ids.new("tmc"), ctx.now(), is_default=False, name=name, offline=offline
    )
    config["stowpay_offline_policy"] = merge_offline_policy(None, offline_policy)
    ctx.tx.insert(ctx.account_id, config, ref=_CUSTOM)
    return config


def update_configuration(
    ctx: Context, config: dict[str, Any], changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply `name`, `offline` and `stowpay_offline_policy` as sent (None: unset)."""
    if "name" in changes:
        config["name"] = changes["name"]
    if "offline" in changes:
        enabled = changes["offline"]
        config["offline"] = None if enabled is None else {"enabled": enabled}
    if "stowpay_offline_policy" in changes:
        config["stowpay_offline_policy"] = merge_offline_policy(
            config.get("stowpay_offline_policy"), changes["stowpay_offline_policy"]
        )
    ctx.tx.update(ctx.account_id, config)
    return config


#: The policy's limits per currency (minor units), and its plain limits.
POLICY_AMOUNTS = ("max_transaction", "max_stored_total")
POLICY_LIMITS = ("max_stored_count", "max_record_age", "max_uses_per_card")


def merge_offline_policy(
    current: dict[str, Any] | None, sent: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The risk policy after an update, or None when nothing of it is set.

    `sent` holds only what the caller sent: None (the whole policy sent empty) unsets it;
    a plain limit sent as None unsets that limit; a currency map sent as None clears it, and
    within a map a currency sent as "" is removed and the others are set, as metadata is.
    Served in full: both maps (possibly empty) and every limit (possibly null).
    """
    if sent is None:
        return None
    policy: dict[str, Any] = {name: {} for name in POLICY_AMOUNTS}
    policy.update(dict.fromkeys(POLICY_LIMITS))
    if current:
        policy.update(copy.deepcopy(current))
    for name in POLICY_AMOUNTS:
        if name not in sent:
            continue
        given = sent[name]
        if given is None:
            policy[name] = {}
            continue
        for currency, amount in given.items():
            if amount == "" or amount is None:
                policy[name].pop(currency, None)
            else:
                policy[name][currency] = amount
        policy[name] = dict(sorted(policy[name].items()))
    for name in POLICY_LIMITS:
        if name in sent:
            policy[name] = sent[name]
    if not any(policy[name] for name in POLICY_AMOUNTS) and all(
        policy[name] is None for name in POLICY_LIMITS
    ):
        return None
    return policy


def delete_configuration(ctx: Context, config: dict[str, Any]) -> dict[str, Any]:
    """Delete a Configuration that is neither the default nor a Location's override."""
    if config["is_account_default"]:
        raise InvalidRequestError("You cannot delete the account's default configuration.")
    if _any(ctx.tx, ctx.account_id, LOCATION, config["id"]):
        # Deleting it would silently move those Locations' readers to other settings.
        raise InvalidRequestError(
            "This configuration is a Location's configuration_overrides. Change those "
            "Locations first."
        )
    ctx.tx.delete(ctx.account_id, config["id"])
    return {"id": config["id"], "object": CONFIGURATION, "deleted": True}


def configuration_ref(is_account_default: bool | None) -> str | None:
    """The `ref` column value the list filter `is_account_default` matches."""
    if is_account_default is None:
        return None
    return _DEFAULT if is_account_default else _CUSTOM


# -- registration codes (filled by devices; redeemed by merchants) -------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """What a device tells the cloud about itself when it asks for a registration code."""

    device_type: str
    serial_number: str
    device_sw_version: str | None = None
    ip_address: str | None = None


def _normal_code(code: str) -> str:
    return code.strip().lower()


def issue_registration_code(
    tx: Tx, device: DeviceInfo, *, now: float, ttl: float = REGISTRATION_CODE_TTL
) -> str:
    """A fresh code for an unregistered device to show (like `quick-brown-foxes`).

    Only its hash is stored, with the device's details, until a merchant redeems it or it
    expires.
    """
    store.prune_registrations(tx, now - REGISTRATION_KEPT)
    code = "-".join(
        "".join(secrets.choice(_CODE_LETTERS) for _ in range(_CODE_GROUP_LEN))
        for _ in range(_CODE_GROUPS)
    )
    store.put_registration(tx, _hash(code), asdict(device), created=now, expires_at=now + ttl)
    return code


def redeem_registration_code(
    tx: Tx, code: str, *, account_id: str, reader_id: str, now: float
) -> DeviceInfo | None:
    """Give a pending code to a new reader of `account_id`: the device's details, or None
    when the code is unknown, expired or already used."""
    device = store.claim_registration(
        tx, _hash(_normal_code(code)), account_id=account_id, reader_id=reader_id, now=now
    )
    if device is None:
        return None
    return DeviceInfo(**device)


def registration_outcome(tx: Tx, code: str) -> tuple[str, str] | None:
    """For the device showing `code`: the (account, reader) it was registered as, if yet."""
    found = store.registration(tx, _hash(_normal_code(code)))
    if found is None or found["reader_id"] is None:
        return None
    return str(found["account_id"]), str(found["reader_id"])


@dataclass(frozen=True)
class Registration:
    """Where the code a device shows stands: waiting for a merchant, or registered."""

    #: "pending" | "registered"
    status: str
    account_id: str | None = None
    reader_id: str | None = None


def registration_state(tx: Tx, code: str, *, now: float) -> Registration | None:
    """For the device showing `code`: pending, or the (account, reader) it became; None when
    the code is unknown, expired unredeemed, or was redeemed more than `REGISTRATION_KEPT` ago.
    """
    found = store.registration(tx, _hash(_normal_code(code)))
    if found is None:
        return None
    if found["reader_id"] is None:
        return Registration("pending") if found["expires_at"] > now else None
    if now - float(found["redeemed_at"]) > REGISTRATION_KEPT:
        return None
    return Registration("registered", str(found["account_id"]), str(found["reader_id"]))


# -- readers -------------------------------------------------------------------------------


def get_reader(ctx: Context, reader_id: str) -> dict[str, Any]:
    """This account's reader, or Stripe's 404."""
    reader = ctx.tx.get(ctx.account_id, reader_id, READER)
    if reader is None:
        raise NotFoundError("reader", reader_id)
    return reader


def register_reader(
    ctx: Context,
    *,
    registration_code: str,
    location_id: str,
    label: str | None,
    metadata: dict[str, str] | str | None,
) -> dict[str, Any]:
    """Register a reader at one of this account's Locations with a registration code."""
    get_location(ctx, location_id, param="location")
    reader_id = ctx.ids.new("tmr")
    code = _normal_code(registration_code)
    simulated = SIMULATED_CODES.get(code)
    if simulated is not None:
        # Stripe's simulated readers are always reachable: they have no device to lose.
        device = DeviceInfo(
            device_type=simulated,
            serial_number=f"{code}-{random_token(9)}",
            device_sw_version=f"stowpay-simulated-{__version__}",
            ip_address="0.0.0.0",
        )
        status: str = "online"
        last_seen_at: int | None = int(ctx.clock.now() * 1000)
    else:
        found = redeem_registration_code(
            ctx.tx, code, account_id=ctx.account_id, reader_id=reader_id, now=ctx.clock.now()
        )
        if found is None:
            raise InvalidRequestError(
                "The registration code is not valid: it is unknown, expired or already used. "
                "Generate a new code on the reader.",
                param="registration_code",
            )
        device = found
        # A real device is online once it activates and sends heartbeats (reader issue).
        status, last_seen_at = "offline", None
    reader = {
        "id": reader_id,
        "object": READER,
        "action": None,
        "created": ctx.now(),
        "device_sw_version": device.device_sw_version,
        "device_type": device.device_type,
        "ip_address": device.ip_address,
        "label": label or device.serial_number,
        "last_seen_at": last_seen_at,
        "livemode": False,
        "location": location_id,
        "metadata": merge_metadata({}, metadata),
        "serial_number": device.serial_number,
        "status": status,
    }
    ctx.tx.insert(ctx.account_id, reader, ref=location_id)
    return reader


def update_reader(ctx: Context, reader: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Change a reader's `label` ("" gives back the default, its serial number) or metadata."""
    if "label" in changes:
        reader["label"] = changes["label"] or reader["serial_number"]
    if "metadata" in changes:
        reader["metadata"] = merge_metadata(reader["metadata"], changes["metadata"])
    ctx.tx.update(ctx.account_id, reader)
    return reader


def delete_reader(ctx: Context, reader: dict[str, Any]) -> dict[str, Any]:
    """Delete a reader; its device must be registered again to be used."""
    ctx.tx.delete(ctx.account_id, reader["id"])
    # The device's key stops working with it (the device API also checks the reader exists).
    forget_device_keys(ctx.tx, reader["id"])
    return {"id": reader["id"], "object": READER, "deleted": True}


# -- connection tokens ---------------------------------------------------------------------


def create_connection_token(ctx: Context, location_id: str | None) -> dict[str, Any]:
    """A new connection token, optionally good only at one of this account's Locations."""
    if location_id is not None:
        get_location(ctx, location_id, param="location")
    settings = ctx.settings if isinstance(ctx.settings, Settings) else Settings()
    now = ctx.clock.now()
    secret = "pst_test_" + random_token(36)
    # Expired tokens are dropped as new ones are made, so the table stays small.
    store.prune_connection_tokens(ctx.tx, now)
    store.put_connection_token(
        ctx.tx,
        _hash(secret),
        account_id=ctx.account_id,
        location=location_id,
        created=now,
        expires_at=now + settings.connection_token_ttl,
    )
    return {"object": "terminal.connection_token", "location": location_id, "secret": secret}


def sweep(tx: Tx, now: float) -> int:
    """Forget expired connection tokens and registrations past their keeping time (the
    cloud's hourly housekeeping; making new ones sweeps too). How many went."""
    return store.prune_connection_tokens(tx, now) + store.prune_registrations(
        tx, now - REGISTRATION_KEPT
    )


def redeem_connection_token(tx: Tx, secret: str, now: float) -> tuple[str, str | None] | None:
    """Use a connection token: (account id, location or None) the first time it is redeemed
    before it expires; None when it is unknown, expired or used already."""
    if not secret.startswith("pst_"):
        return None
    return store.take_connection_token(tx, _hash(secret), now)
