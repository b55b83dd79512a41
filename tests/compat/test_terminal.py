"""The official `stripe` client against a live cloud: Terminal Locations, Configurations,
Readers and connection tokens."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import pytest
import stripe

from stowpay.cloud.domain import terminal
from stowpay.cloud.testing import LiveCloud

ADDRESS = {
    "line1": "1 Main St",
    "city": "Springfield",
    "state": "IL",
    "postal_code": "62701",
    "country": "US",
}


def client(cloud: LiveCloud, n: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        cloud.accounts[n].secret_key,
        base_addresses={"api": cloud.url},
        max_network_retries=0,
    )


def new_location(c: stripe.StripeClient, **extra: Any) -> stripe.terminal.Location:
    return c.v1.terminal.locations.create(
        params={"display_name": "Main St shop", "address": ADDRESS, **extra}
    )


def test_location_crud(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    loc = new_location(c, metadata={"store": "17"}, phone="+1 555 0100")
    assert loc.id.startswith("tml_")
    assert loc.object == "terminal.location"
    assert loc.display_name == "Main St shop"
    assert loc.address.country == "US" and loc.address.line2 is None
    assert loc.configuration_overrides is None
    assert loc.metadata.to_dict() == {"store": "17"}
    assert loc.phone == "+1 555 0100"
    assert loc.livemode is False

    got = c.v1.terminal.locations.retrieve(loc.id)
    assert got.to_dict() == loc.to_dict()

    loc = c.v1.terminal.locations.update(
        loc.id,
        params={
            "display_name": "Main Street",
            "address": {"line2": "Unit 4", "state": ""},
            "metadata": {"store": "", "region": "west"},
            "phone": "",
        },
    )
    assert loc.display_name == "Main Street"
    assert loc.address.line2 == "Unit 4" and loc.address.state is None
    assert loc.address.line1 == "1 Main St" and loc.address.country == "US"
    assert loc.metadata.to_dict() == {"region": "west"}
    assert loc.phone is None

    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.locations.update(loc.id, params={"address": {"country": "GB"}})
    assert err.value.param == "address[country]"

    listed = c.v1.terminal.locations.list(params={"limit": 10})
    assert [x.id for x in listed.data] == [loc.id]

    deleted = c.v1.terminal.locations.delete(loc.id)
    assert deleted.id == loc.id and deleted.deleted is True
    assert deleted.object == "terminal.location"
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.locations.retrieve(loc.id)
    assert err.value.http_status == 404 and err.value.code == "resource_missing"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"address": ADDRESS}, "display_name"),
        ({"display_name": "x"}, "address"),
        ({"display_name": "x", "address": {"city": "Springfield"}}, "address[country]"),
        ({"display_name": "x", "address": {"country": "USA"}}, "address[country]"),
        ({"display_name": "", "address": ADDRESS}, "display_name"),
    ],
)
def test_location_requires_name_and_country(
    cloud: LiveCloud, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as err:
        client(cloud).v1.terminal.locations.create(params=params)  # type: ignore[arg-type]
    assert err.value.http_status == 400 and err.value.param == param


def test_configuration_with_offline_assigned_to_location(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    config = c.v1.terminal.configurations.create(
        params={"name": "Offline shops", "offline": {"enabled": True}}
    )
    assert config.id.startswith("tmc_") and config.object == "terminal.configuration"
    assert config.offline is not None and config.offline.enabled is True
    assert config.is_account_default is False and config.name == "Offline shops"

    loc = new_location(c, configuration_overrides=config.id)
    assert loc.configuration_overrides == config.id
    plain = new_location(c)

    account = any_cloud.accounts[0].account["id"]
    with any_cloud.store.read() as tx:
        effective = terminal.effective_configuration(tx, account, loc.id)
    assert effective["id"] == config.id and terminal.offline_enabled(effective)
    with any_cloud.store.write() as tx:
        fallback = terminal.effective_configuration(tx, account, plain.id)
        nowhere = terminal.effective_configuration(tx, account, None)
    assert fallback["is_account_default"] is True and not terminal.offline_enabled(fallback)
    assert nowhere["id"] == fallback["id"]

    # Every account has exactly one default; the filter tells it from the others.
    all_configs = c.v1.terminal.configurations.list()
    assert {x.id for x in all_configs.data} == {config.id, fallback["id"]}
    defaults = c.v1.terminal.configurations.list(params={"is_account_default": True})
    assert [x.id for x in defaults.data] == [fallback["id"]]
    custom = c.v1.terminal.configurations.list(params={"is_account_default": False})
    assert [x.id for x in custom.data] == [config.id]

    default = c.v1.terminal.configurations.retrieve(fallback["id"])
    assert default.is_account_default is True and default.offline is None
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.terminal.configurations.delete(default.id)
    # The default may be changed, as on Stripe: offline for every Location without override.
    default = c.v1.terminal.configurations.update(default.id, params={"offline": {"enabled": True}})
    assert default.offline is not None and default.offline.enabled is True
    with any_cloud.store.read() as tx:
        assert terminal.offline_enabled(terminal.effective_configuration(tx, account, plain.id))

    # "" unsets: the offline setting falls back to Stripe's default (disabled).
    config = c.v1.terminal.configurations.update(config.id, params={"offline": "", "name": ""})
    assert config.offline is None and config.name is None
    with any_cloud.store.read() as tx:
        assert not terminal.offline_enabled(terminal.effective_configuration(tx, account, loc.id))

    # A configuration a Location uses cannot go; once unassigned it can.
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.terminal.configurations.delete(config.id)
    loc = c.v1.terminal.locations.update(loc.id, params={"configuration_overrides": ""})
    assert loc.configuration_overrides is None
    deleted = c.v1.terminal.configurations.delete(config.id)
    assert deleted.deleted is True and deleted.id == config.id
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.configurations.retrieve(config.id)
    assert err.value.http_status == 404


def test_configuration_override_must_be_this_accounts(cloud: LiveCloud) -> None:
    theirs = client(cloud, 1).v1.terminal.configurations.create(params={"name": "B"})
    with pytest.raises(stripe.InvalidRequestError) as err:
        new_location(client(cloud), configuration_overrides=theirs.id)
    assert err.value.http_status == 404 and err.value.param == "configuration_overrides"
    with pytest.raises(stripe.InvalidRequestError) as err:
        client(cloud).v1.terminal.configurations.create(params={"offline": {"enabled": "maybe"}})  # type: ignore[typeddict-item]
    assert err.value.param == "offline[enabled]"


def test_register_simulated_reader(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    loc = new_location(c)
    reader = c.v1.terminal.readers.create(
        params={
            "registration_code": "simulated-wpe",
            "location": loc.id,
            "label": "Front counter",
            "metadata": {"till": "1"},
        }
    )
    assert reader.id.startswith("tmr_") and reader.object == "terminal.reader"
    assert reader.device_type == "simulated_wisepos_e"
    assert reader.location == loc.id
    assert reader.label == "Front counter"
    assert reader.metadata.to_dict() == {"till": "1"}
    assert reader.status == "online"
    assert reader.action is None and reader.livemode is False
    assert reader.serial_number and reader.device_sw_version and reader.ip_address
    # Stripe gives last_seen_at in milliseconds, unlike its other timestamps.
    assert reader.last_seen_at is not None and reader.last_seen_at > 10**12

    got = c.v1.terminal.readers.retrieve(reader.id, params={"expand": ["location"]})
    assert isinstance(got.location, stripe.terminal.Location) and got.location.id == loc.id

    reader = c.v1.terminal.readers.update(
        reader.id, params={"label": "Back office", "metadata": {"till": "2"}}
    )
    assert reader.label == "Back office" and reader.metadata.to_dict() == {"till": "2"}
    reader = c.v1.terminal.readers.update(reader.id, params={"label": ""})
    assert reader.label == reader.serial_number

    # A Location with readers cannot be deleted from under them.
    with pytest.raises(stripe.InvalidRequestError):
        c.v1.terminal.locations.delete(loc.id)

    deleted = c.v1.terminal.readers.delete(reader.id)
    assert deleted.id == reader.id and deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.readers.retrieve(reader.id)
    assert err.value.http_status == 404
    assert c.v1.terminal.locations.delete(loc.id).deleted is True


def test_registration_errors(cloud: LiveCloud) -> None:
    c = client(cloud)
    loc = new_location(c)
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.readers.create(
            params={"registration_code": "purple-monkey-dishwasher", "location": loc.id}
        )
    assert err.value.http_status == 400 and err.value.param == "registration_code"
    assert err.value.error is not None and err.value.error.type == "invalid_request_error"
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.readers.create(params={"registration_code": "simulated-wpe"})
    assert err.value.param == "location"
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.readers.create(
            params={"registration_code": "simulated-wpe", "location": "tml_nope"}
        )
    assert err.value.http_status == 404 and err.value.param == "location"


def test_register_with_a_device_code(cloud: LiveCloud) -> None:
    """A code a real device obtained registers that device, once."""
    device = terminal.DeviceInfo(
        device_type="bbpos_wisepos_e",
        serial_number="WSC513105011295",
        device_sw_version="2.30.1.0",
        ip_address="192.168.1.40",
    )
    with cloud.store.write() as tx:
        code = terminal.issue_registration_code(tx, device, now=cloud.settings.clock.now())
    with cloud.store.read() as tx:
        assert terminal.registration_outcome(tx, code) is None
    c = client(cloud)
    loc = new_location(c)
    # Typed by a person: case and surrounding spaces do not matter.
    reader = c.v1.terminal.readers.create(
        params={"registration_code": f" {code.upper()} ", "location": loc.id}
    )
    assert reader.device_type == "bbpos_wisepos_e"
    assert reader.serial_number == "WSC513105011295"
    assert reader.device_sw_version == "2.30.1.0" and reader.ip_address == "192.168.1.40"
    assert reader.status == "offline" and reader.last_seen_at is None
    assert reader.label == "WSC513105011295"
    with cloud.store.read() as tx:
        assert terminal.registration_outcome(tx, code) == (
            cloud.accounts[0].account["id"],
            reader.id,
        )
    for n in (0, 1):
        other = new_location(client(cloud, n))
        with pytest.raises(stripe.InvalidRequestError) as err:
            client(cloud, n).v1.terminal.readers.create(
                params={"registration_code": code, "location": other.id}
            )
        assert err.value.param == "registration_code"


def test_reader_list_filters(cloud: LiveCloud) -> None:
    c = client(cloud)
    a, b = new_location(c), new_location(c)
    made = []
    for code, loc in [
        ("simulated-wpe", a),
        ("simulated-s700", a),
        ("simulated-wpe", b),
        ("simulated-wpe", a),
        ("simulated-s700", b),
        ("simulated-wpe", a),
    ]:
        made.append(
            c.v1.terminal.readers.create(params={"registration_code": code, "location": loc.id})
        )
    newest_first = [r.id for r in reversed(made)]

    def ids(**params: Any) -> list[str]:
        return [r.id for r in c.v1.terminal.readers.list(params=params).data]

    assert ids(limit=100) == newest_first
    assert ids(location=a.id) == [r.id for r in reversed(made) if r.location == a.id]
    assert ids(status="online") == newest_first
    assert ids(status="offline") == []
    wpe = [r.id for r in reversed(made) if r.device_type == "simulated_wisepos_e"]
    assert ids(device_type="simulated_wisepos_e") == wpe
    assert ids(device_type="simulated_wisepos_e", location=b.id) == [made[2].id]
    assert ids(serial_number=made[4].serial_number) == [made[4].id]
    assert ids(device_type="bbpos_wisepos_e") == []

    # A filter the store has no column for still pages like any list.
    walked = c.v1.terminal.readers.list(params={"device_type": "simulated_wisepos_e", "limit": 1})
    assert [r.id for r in walked.auto_paging_iter()] == wpe
    first = c.v1.terminal.readers.list(params={"device_type": "simulated_wisepos_e", "limit": 2})
    assert first.has_more and [r.id for r in first.data] == wpe[:2]
    last = c.v1.terminal.readers.list(
        params={"device_type": "simulated_wisepos_e", "limit": 2, "starting_after": wpe[1]}
    )
    assert [r.id for r in last.data] == wpe[2:] and not last.has_more
    back = c.v1.terminal.readers.list(
        params={"device_type": "simulated_wisepos_e", "limit": 1, "ending_before": wpe[3]}
    )
    assert [r.id for r in back.data] == [wpe[2]] and back.has_more
    back = c.v1.terminal.readers.list(
        params={"device_type": "simulated_wisepos_e", "limit": 5, "ending_before": wpe[1]}
    )
    assert [r.id for r in back.data] == [wpe[0]] and not back.has_more

    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.readers.list(params={"status": "asleep"})
    assert err.value.param == "status"
    with pytest.raises(stripe.InvalidRequestError) as err:
        c.v1.terminal.readers.list(params={"device_type": "toaster"})
    assert err.value.param == "device_type"


def test_connection_tokens(any_cloud: LiveCloud) -> None:
    c = client(any_cloud)
    loc = new_location(c)
    token = c.v1.terminal.connection_tokens.create(params={"location": loc.id})
    assert token.object == "terminal.connection_token"
    assert token.secret.startswith("pst_test_") and token.location == loc.id
    plain = c.v1.terminal.connection_tokens.create()
    assert plain.location is None and plain.secret != token.secret

    account = any_cloud.accounts[0].account["id"]
    now = any_cloud.settings.clock.now()
    with any_cloud.store.write() as tx:
        assert terminal.redeem_connection_token(tx, token.secret, now) == (account, loc.id)
        assert terminal.redeem_connection_token(tx, token.secret, now) is None
        assert terminal.redeem_connection_token(tx, plain.secret, now) == (account, None)

    with pytest.raises(stripe.InvalidRequestError) as err:
        client(any_cloud, 1).v1.terminal.connection_tokens.create(params={"location": loc.id})
    assert err.value.http_status == 404 and err.value.param == "location"


def test_another_account_sees_nothing(cloud: LiveCloud) -> None:
    a, b = client(cloud, 0), client(cloud, 1)
    config = a.v1.terminal.configurations.create(params={"offline": {"enabled": True}})
    loc = new_location(a, configuration_overrides=config.id)
    reader = a.v1.terminal.readers.create(
        params={"registration_code": "simulated-wpe", "location": loc.id}
    )
    a_default = a.v1.terminal.configurations.list(params={"is_account_default": True}).data[0]

    for call in (
        lambda: b.v1.terminal.locations.retrieve(loc.id),
        lambda: b.v1.terminal.locations.update(loc.id, params={"display_name": "mine"}),
        lambda: b.v1.terminal.locations.delete(loc.id),
        lambda: b.v1.terminal.configurations.retrieve(config.id),
        lambda: b.v1.terminal.configurations.retrieve(a_default.id),
        lambda: b.v1.terminal.configurations.update(config.id, params={"name": "mine"}),
        lambda: b.v1.terminal.configurations.delete(config.id),
        lambda: b.v1.terminal.readers.retrieve(reader.id),
        lambda: b.v1.terminal.readers.update(reader.id, params={"label": "mine"}),
        lambda: b.v1.terminal.readers.delete(reader.id),
        lambda: b.v1.terminal.readers.create(
            params={"registration_code": "simulated-wpe", "location": loc.id}
        ),
    ):
        with pytest.raises(stripe.InvalidRequestError) as err:
            call()
        assert err.value.http_status == 404

    assert b.v1.terminal.locations.list().data == []
    assert b.v1.terminal.readers.list().data == []
    assert b.v1.terminal.readers.list(params={"location": loc.id}).data == []
    assert b.v1.terminal.readers.list(params={"device_type": "simulated_wisepos_e"}).data == []
    b_configs = b.v1.terminal.configurations.list().data
    assert [x.is_account_default for x in b_configs] == [True]
    assert b_configs[0].id not in {config.id, a_default.id}
    # Another account's ids do not work as cursors either.
    with pytest.raises(stripe.InvalidRequestError) as err:
        b.v1.terminal.readers.list(params={"starting_after": reader.id, "device_type": "stripe_m2"})
    assert err.value.http_status == 404
    # And A's objects are untouched.
    assert a.v1.terminal.readers.retrieve(reader.id).label == reader.label


def test_openapi_documents_terminal(cloud: LiveCloud) -> None:
    doc = httpx.get(cloud.url + "/openapi.json").json()
    for path in (
        "/v1/terminal/locations",
        "/v1/terminal/locations/{location}",
        "/v1/terminal/configurations",
        "/v1/terminal/configurations/{configuration}",
        "/v1/terminal/readers",
        "/v1/terminal/readers/{reader}",
        "/v1/terminal/connection_tokens",
    ):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    for name in (
        "terminal.location",
        "terminal.configuration",
        "terminal.reader",
        "terminal.connection_token",
    ):
        assert schemas[name]["properties"]["object"]["enum"] == [name]
