"""`/v1/terminal/...`: Locations, Configurations, Readers and connection tokens.

The merchant-facing half of Terminal, authenticated by the account's API key. The logic lives
in `domain.terminal`; the device-side endpoints (activation, heartbeat, forwarding) come with
the reader issue and use the seam documented there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from ...wire.errors import NotFoundError
from ...wire.money import SUPPORTED
from ..api import Context, api
from ..domain import offline_ingest
from ..domain import terminal as domain
from ..params import Bool, Id, ListParams, MetadataParam, Params
from .common import list_object

Country = Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]
AddressLine = Annotated[str, Field(max_length=200)]
DisplayName = Annotated[str, Field(min_length=1, max_length=1000)]
Phone = Annotated[str, Field(max_length=100)]
Label = Annotated[str, Field(max_length=200)]
ConfigurationName = Annotated[str, Field(max_length=100)]

#: Stripe's reader device types (the `device_type` list filter refuses others).
DeviceType = Literal[
    "bbpos_chipper2x",
    "bbpos_wisepad3",
    "bbpos_wisepos_e",
    "mobile_phone_reader",
    "simulated_stripe_s700",
    "simulated_stripe_s710",
    "simulated_stripe_t600",
    "simulated_verifone_m425",
    "simulated_verifone_p630",
    "simulated_verifone_ux700",
    "simulated_verifone_v660p",
    "simulated_wisepos_e",
    "stripe_m2",
    "stripe_s700",
    "stripe_s710",
    "stripe_t600",
    "verifone_P400",
    "verifone_m425",
    "verifone_p630",
    "verifone_ux700",
    "verifone_v660p",
]

TAG = "Terminal"


# -- parameters ----------------------------------------------------------------------------
# Class names are OpenAPI component names: prefixed so they cannot collide with other modules'.


class TerminalAddress(Params):
    country: Country
    city: AddressLine | None = None
    line1: AddressLine | None = None
    line2: AddressLine | None = None
    postal_code: AddressLine | None = None
    state: AddressLine | None = None


class TerminalAddressUpdate(Params):
    country: Country | None = None
    city: AddressLine | None = None
    line1: AddressLine | None = None
    line2: AddressLine | None = None
    postal_code: AddressLine | None = None
    state: AddressLine | None = None


class LocationCreate(Params):
    display_name: DisplayName
    address: TerminalAddress
    configuration_overrides: Id | None = None
    metadata: MetadataParam | None = None
    phone: Phone | None = None


class LocationUpdate(Params):
    display_name: DisplayName | None = None
    address: TerminalAddressUpdate | None = None
    configuration_overrides: Id | None = None
    metadata: MetadataParam | None = None
    phone: Phone | None = None


class TerminalOffline(Params):
    enabled: Bool


def _known_currency(code: str) -> str:
    if code not in SUPPORTED:
        raise ValueError("not a supported currency code (lowercase ISO 4217, such as usd)")
    return code


#: A policy limit: a count, seconds, or minor units. Bounded so every JSON reader keeps it exact.
PolicyLimit = Annotated[int, Field(ge=0, le=2**53 - 1)]
PolicyCurrency = Annotated[str, AfterValidator(_known_currency)]
#: Minor units per currency; a currency sent as "" is removed from the map.
PolicyAmounts = dict[PolicyCurrency, PolicyLimit | Literal[""]]


class TerminalOfflinePolicy(Params):
    """`stowpay_offline_policy`: the merchant's offline risk policy (a Stowpay extension)."""

    max_transaction: PolicyAmounts | None = None
    max_stored_total: PolicyAmounts | None = None
    max_stored_count: PolicyLimit | None = None
    max_record_age: PolicyLimit | None = None
    max_uses_per_card: PolicyLimit | None = None


class ConfigurationCreate(Params):
    name: ConfigurationName | None = None
    offline: TerminalOffline | None = None
    stowpay_offline_policy: TerminalOfflinePolicy | None = None


class ConfigurationUpdate(Params):
    name: ConfigurationName | None = None
    offline: TerminalOffline | None = None
    stowpay_offline_policy: TerminalOfflinePolicy | None = None


class ConfigurationList(ListParams):
    is_account_default: Bool | None = None


class ReaderCreate(Params):
    registration_code: Annotated[str, Field(min_length=1, max_length=100)]
    location: Id
    label: Label | None = None
    metadata: MetadataParam | None = None


class ReaderUpdate(Params):
    label: Label | None = None
    metadata: MetadataParam | None = None


class ReaderList(ListParams):
    location: Id | None = None
    status: Literal["online", "offline"] | None = None
    device_type: DeviceType | None = None
    serial_number: Annotated[str, Field(max_length=200)] | None = None


class ConnectionTokenCreate(Params):
    location: Id | None = None


def _sent(params: Params) -> dict[str, Any]:
    """The parameters the caller sent, "" (unset) included as None; nested models as dicts."""
    out: dict[str, Any] = {}
    for name in params.model_fields_set:
        value = getattr(params, name)
        out[name] = value.model_dump(exclude_unset=True) if isinstance(value, Params) else value
    return out


# -- locations -----------------------------------------------------------------------------


@api.post(
    "/v1/terminal/locations",
    params=LocationCreate,
    returns="terminal.location",
    summary="Create a Location",
    tag=TAG,
)
def create_location(ctx: Context, params: LocationCreate) -> dict[str, Any]:
    return domain.create_location(
        ctx,
        display_name=params.display_name,
        address=params.address.model_dump(exclude_unset=True),
        configuration_overrides=params.configuration_overrides,
        metadata=params.metadata,
        phone=params.phone,
    )


@api.get(
    "/v1/terminal/locations/{location}",
    returns="terminal.location",
    summary="Retrieve a Location",
    tag=TAG,
)
def retrieve_location(ctx: Context, params: Params, location: str) -> dict[str, Any]:
    return domain.get_location(ctx, location)


@api.post(
    "/v1/terminal/locations/{location}",
    params=LocationUpdate,
    returns="terminal.location",
    summary="Update a Location",
    tag=TAG,
)
def update_location(ctx: Context, params: LocationUpdate, location: str) -> dict[str, Any]:
    return domain.update_location(ctx, domain.get_location(ctx, location), _sent(params))


@api.get(
    "/v1/terminal/locations",
    params=ListParams,
    returns="list:terminal.location",
    summary="List Locations",
    tag=TAG,
)
def list_locations(ctx: Context, params: ListParams) -> dict[str, Any]:
    return list_object(ctx, domain.LOCATION, params, "/v1/terminal/locations")


@api.delete(
    "/v1/terminal/locations/{location}",
    returns="deleted",
    summary="Delete a Location",
    tag=TAG,
)
def delete_location(ctx: Context, params: Params, location: str) -> dict[str, Any]:
    return domain.delete_location(ctx, domain.get_location(ctx, location))


# -- configurations ------------------------------------------------------------------------


def _offline(params: ConfigurationCreate | ConfigurationUpdate) -> bool | None:
    return None if params.offline is None else params.offline.enabled


def _offline_policy(params: ConfigurationCreate | ConfigurationUpdate) -> dict[str, Any] | None:
    """The policy parameters the caller sent (None: sent empty, to unset)."""
    policy = params.stowpay_offline_policy
    return None if policy is None else policy.model_dump(exclude_unset=True)


@api.post(
    "/v1/terminal/configurations",
    params=ConfigurationCreate,
    returns="terminal.configuration",
    summary="Create a Configuration",
    tag=TAG,
)
def create_configuration(ctx: Context, params: ConfigurationCreate) -> dict[str, Any]:
    return domain.create_configuration(
        ctx, name=params.name, offline=_offline(params), offline_policy=_offline_policy(params)
    )


@api.get(
    "/v1/terminal/configurations/{configuration}",
    returns="terminal.configuration",
    summary="Retrieve a Configuration",
    tag=TAG,
)
def retrieve_configuration(ctx: Context, params: Params, configuration: str) -> dict[str, Any]:
    return domain.get_configuration(ctx, configuration)


@api.post(
    "/v1/terminal/configurations/{configuration}",
    params=ConfigurationUpdate,
    returns="terminal.configuration",
    summary="Update a Configuration",
    tag=TAG,
)
def update_configuration(
    ctx: Context, params: ConfigurationUpdate, configuration: str
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if "name" in params.model_fields_set:
        changes["name"] = params.name
    if "offline" in params.model_fields_set:
        changes["offline"] = _offline(params)
    if "stowpay_offline_policy" in params.model_fields_set:
        changes["stowpay_offline_policy"] = _offline_policy(params)
    return domain.update_configuration(ctx, domain.get_configuration(ctx, configuration), changes)


@api.get(
    "/v1/terminal/configurations",
    params=ConfigurationList,
    returns="list:terminal.configuration",
    summary="List Configurations",
    tag=TAG,
)
def list_configurations(ctx: Context, params: ConfigurationList) -> dict[str, Any]:
    # The default configuration is made on the account's first look at its configurations.
    # This GET may thus write once; the insert ignores a racing twin, so it cannot fail.
    domain.default_configuration(ctx.tx, ctx.account_id)
    return list_object(
        ctx,
        domain.CONFIGURATION,
        params,
        "/v1/terminal/configurations",
        filters={"ref": domain.configuration_ref(params.is_account_default)},
    )


@api.delete(
    "/v1/terminal/configurations/{configuration}",
    returns="deleted",
    summary="Delete a Configuration",
    tag=TAG,
)
def delete_configuration(ctx: Context, params: Params, configuration: str) -> dict[str, Any]:
    return domain.delete_configuration(ctx, domain.get_configuration(ctx, configuration))


# -- readers -------------------------------------------------------------------------------


@api.post(
    "/v1/terminal/readers",
    params=ReaderCreate,
    returns="terminal.reader",
    summary="Register a Reader",
    tag=TAG,
)
def create_reader(ctx: Context, params: ReaderCreate) -> dict[str, Any]:
    return domain.register_reader(
        ctx,
        registration_code=params.registration_code,
        location_id=params.location,
        label=params.label,
        metadata=params.metadata,
    )


@api.get(
    "/v1/terminal/readers/{reader}",
    returns="terminal.reader",
    summary="Retrieve a Reader",
    tag=TAG,
)
def retrieve_reader(ctx: Context, params: Params, reader: str) -> dict[str, Any]:
    return domain.get_reader(ctx, reader)


@api.post(
    "/v1/terminal/readers/{reader}",
    params=ReaderUpdate,
    returns="terminal.reader",
    summary="Update a Reader",
    tag=TAG,
)
def update_reader(ctx: Context, params: ReaderUpdate, reader: str) -> dict[str, Any]:
    return domain.update_reader(ctx, domain.get_reader(ctx, reader), _sent(params))


@api.get(
    "/v1/terminal/readers",
    params=ReaderList,
    returns="list:terminal.reader",
    summary="List Readers",
    tag=TAG,
)
def list_readers(ctx: Context, params: ReaderList) -> dict[str, Any]:
    url = "/v1/terminal/readers"
    columns = {"ref": params.location, "status": params.status}
    wanted = {
        k: v
        for k, v in (("device_type", params.device_type), ("serial_number", params.serial_number))
        if v is not None
    }
    if not wanted:
        return list_object(ctx, domain.READER, params, url, filters=columns)
    return _walk_list(
        ctx,
        domain.READER,
        params,
        url,
        columns,
        lambda obj: all(obj.get(k) == v for k, v in wanted.items()),
    )


_WALK_PAGE = 100


def _walk_list(
    ctx: Context,
    type_: str,
    params: ListParams,
    url: str,
    columns: dict[str, str | None],
    keep: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """A Stripe list filtered on fields the store has no column for.

    Pages of the column-filtered list are read away from the cursor until `limit + 1`
    objects pass `keep`, so `has_more` and the cursors mean what they mean on any list. Its
    cost grows with the objects skipped, which is fine for an account's readers.
    """
    filters = {k: v for k, v in columns.items() if v is not None}
    backwards = params.ending_before is not None
    after, before = params.starting_after, params.ending_before
    found: list[dict[str, Any]] = []
    while len(found) <= params.limit:
        page = ctx.tx.list_page(
            ctx.account_id,
            type_,
            limit=_WALK_PAGE,
            starting_after=after,
            ending_before=before,
            created=params.created_bounds(),
            filters=filters,
        )
        if page is None:
            # Only the caller's own cursor can be unknown; later ones come from pages read.
            cursor = params.starting_after or params.ending_before or ""
            raise NotFoundError(
                type_, cursor, param="ending_before" if backwards else "starting_after"
            )
        # A page is newest first; walking back toward newer objects reads it oldest first.
        batch = list(reversed(page.data)) if backwards else page.data
        found.extend(obj for obj in batch if keep(obj))
        if not page.has_more or not page.data:
            break
        if backwards:
            before = page.data[0]["id"]
        else:
            after = page.data[-1]["id"]
    has_more = len(found) > params.limit
    found = found[: params.limit]
    if backwards:
        found.reverse()
    return {"object": "list", "data": found, "has_more": has_more, "url": url}


@api.get(
    "/v1/terminal/readers/{reader}/stowpay_offline_rejections",
    params=ListParams,
    returns="list:stowpay.offline_rejection",
    summary="List a Reader's rejected offline records (Stowpay extension)",
    tag=TAG,
)
def list_offline_rejections(ctx: Context, params: ListParams, reader: str) -> dict[str, Any]:
    """Records the reader forwarded that the cloud rejected for good, newest first.

    Each is money taken at the till that will never be charged. A deleted reader's stay
    listed; an id with neither a reader nor a rejection of this account is not found.
    """
    if ctx.tx.get(ctx.account_id, reader, domain.READER) is None:
        kept = ctx.tx.list_page(
            ctx.account_id, offline_ingest.REJECTION, limit=1, filters={"ref": reader}
        )
        if kept is None or not kept.data:
            raise NotFoundError("reader", reader)
    return list_object(
        ctx,
        offline_ingest.REJECTION,
        params,
        f"/v1/terminal/readers/{reader}/stowpay_offline_rejections",
        filters={"ref": reader},
    )


@api.delete(
    "/v1/terminal/readers/{reader}",
    returns="deleted",
    summary="Delete a Reader",
    tag=TAG,
)
def delete_reader(ctx: Context, params: Params, reader: str) -> dict[str, Any]:
    return domain.delete_reader(ctx, domain.get_reader(ctx, reader))


# -- connection tokens ---------------------------------------------------------------------


@api.post(
    "/v1/terminal/connection_tokens",
    params=ConnectionTokenCreate,
    returns="terminal.connection_token",
    summary="Create a connection token",
    tag=TAG,
)
def create_connection_token(ctx: Context, params: ConnectionTokenCreate) -> dict[str, Any]:
    return domain.create_connection_token(ctx, params.location)
