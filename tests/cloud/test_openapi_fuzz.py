"""Fuzz every operation of `/openapi.json` with schemathesis 4, in process (ASGI).

No input may produce a 500, and every answer must match the document: its status code is
listed, its content type and headers are the documented ones, its body validates against the
answer schema, an invalid request (by the document) is refused, and a missing or wrong key is
a 401. schemathesis sends valid and invalid inputs alike; half the cases have their ids (in
the path, or in body fields like `payment_intent`) aimed at real objects of the account, so
handlers run on PaymentIntents in every status, Charges, Refunds, ... and not only into 404s.

`STOWPAY_FUZZ_EXAMPLES` raises the number of examples per operation (default 100, the CI size; about
two minutes per database on two cores). It runs over SQLite, and over PostgreSQL when
`STOWPAY_TEST_POSTGRES_URL` is set (as in CI).

How it was seen to fail. Breaking the document on purpose, from a throwaway pytest plugin
(`-p`) that patched `stowpay.cloud.schemas` in `pytest_configure`:
- `_PI_STATUS` without "canceled" -> ST108 "Response violates schema" ('"canceled" is not one
  of ...') on six PaymentIntent operations;
- `disputed` taken out of the `charge` schema -> ST108 "Additional properties are not
  allowed ('disputed' was unexpected)": the answers are closed below.
Before the fixes made alongside it, it found 500s from `created` filters beyond 64 bits
(SQLite overflow) and beyond 32 bits (PostgreSQL, before `created` became BIGINT), and from
`expand[]` on an event's `data` (an unhashable dict); and `location=` accepted where the
document said 1+ characters (ST201). Found while reading for it, and covered since:
`page=page_<huge>`,
`amount:'²'` and `expand[²]=x` (`str.isdigit` passes what `int()` refuses), NUL characters
(PostgreSQL refuses them in text), `amount=` unsetting a PaymentIntent's amount.

Sequences (`test_sequences_along_the_links_answer_as_documented`). schemathesis's state
machine follows the document's links (generated from code, `stowpay.cloud.openapi`; links it
could infer are turned off): a PaymentIntent created is retrieved, updated, confirmed,
captured, cancelled by its `id`, its `latest_charge` is retrieved and refunded, a Location
created is given readers, a reader listed is updated and deleted, ... Half the ids no link
chose are aimed at seeded objects, as above. Every step gets the checks above, plus
`ensure_resource_availability` (what was just created is found) and `use_after_free` (what
was deleted is gone). `STOWPAY_FUZZ_EXAMPLES / 2` sequences (50 in CI) of up to
`STOWPAY_FUZZ_STEPS` calls (default 30). Seen to fail: a throwaway plugin making
`GET /v1/refunds/{refund}` raise for a refund of another amount than the seeded ones (so
only for a refund made during the run) passes the stateless test and fails this one
(not_a_server_error on `POST /v1/refunds -> GET /v1/refunds/{refund}`). Found with it: the
document described form bodies without `encoding`, so a client reading it (schemathesis
among them) sent `address[country]` as a bare `country`, refused as unknown: it now says
`deepObject` for every object and array, `tests/cloud/test_openapi_document.py`.

Two accounts (`test_another_accounts_ids_are_not_found`). Account A's key, and every id a
case carries (path, body fields, list filters and cursors; a list is given one even when
schemathesis drew none) aimed at account B's real objects, in the same database. Each such
answer must be what an id that does not exist gets: the same request is sent again with ids
that name nothing, and status, error type, code and param must agree (a 404, a 400 for a
malformed request, an empty list for a filter); no answer may hold any id of B's beyond those
sent; B's rows, in every table, must be unchanged after every call. A quarter of the
stateless test's examples per operation, fuzzing phase only. Seen to fail: a throwaway
plugin letting `Tx.get` find a refund of any account -> "B's ids [ch_..., pi_...] in the
answer to GET /v1/refunds/{refund}".
"""

from __future__ import annotations

import os
import re
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from schemathesis.checks import (
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.generation.stateful import run_state_machine_as_test
from schemathesis.python import asgi
from starlette.testclient import TestClient

from stowpay.cloud.app import create_app
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.settings import Settings
from stowpay.cloud.storage import tables
from stowpay.wire import formcodec
from stowpay.wire.cards import TEST_PAYMENT_METHODS
from stowpay.wire.errors import InvalidRequestError

EXAMPLES = int(os.environ.get("STOWPAY_FUZZ_EXAMPLES", "100"))

# One test item runs every operation: its time grows with the examples asked for.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, 10 * EXAMPLES))]

#: Answer schemas not held to "no field the document does not name" (see `_closed`); none.
STILL_OPEN: set[str] = set()


# -- the wire: Stripe's bracket encoding --------------------------------------------------


@schemathesis.serializer("application/x-www-form-urlencoded")
def _stripe_form(ctx: schemathesis.SerializationContext, value: Any) -> bytes | None:
    """Bodies as Stripe's clients send them: `metadata[k]=v`, `expand[0]=x`."""
    if value is None:
        return None
    if isinstance(value, dict):
        return formcodec.encode(value).encode()
    # Negative mode may make the whole body a list or a scalar: send its text as it is.
    return str(value).encode()


def _bracket_query(query: dict[str, Any] | None) -> dict[str, Any] | None:
    """Arrays in a query string the Stripe way (`expand[0]=a`), not as repeated keys.

    schemathesis has already written `deepObject` objects as `created[gte]=...`.
    """
    if not query:
        return query
    out: dict[str, Any] = {}
    for key, value in query.items():
        if isinstance(value, list | tuple):
            out.update({f"{key}[{i}]": item for i, item in enumerate(value)})
        else:
            out[key] = value
    return out


# -- checks -------------------------------------------------------------------------------

#: The document under test, as `fuzz_schema` loaded it.
DOCUMENT: dict[str, Any] = {}


def invalid_input_rejected(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's `negative_data_rejection`, read through Stripe's form encoding.

    A form carries only text: a "negative" string `"0"` where the document wants the integer
    0 reaches the server as `created[lte]=0`, which is valid. schemathesis sees through that
    for flat fields only; here what was sent is decoded as the server decodes it and checked
    against the document, and a request only has to be refused if it is invalid as sent.
    """
    try:
        return negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData:
        if _valid_as_sent(case, response.request):
            return None
        raise


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    invalid_input_rejected,
    ignored_auth,
]


def _valid_as_sent(case: Any, request: Any) -> bool:
    operation = DOCUMENT["paths"][case.operation.path][case.method.lower()]
    body = request.body or b""
    try:
        query = formcodec.decode(urlsplit(request.url).query)
        form = formcodec.decode(body if isinstance(body, bytes) else body.encode())
    except InvalidRequestError:
        return False
    params = operation.get("parameters", [])
    in_query = {p["name"]: p for p in params if p["in"] == "query"}
    query_schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: p["schema"] for name, p in in_query.items()},
        "additionalProperties": False,
    }
    required = [name for name, p in in_query.items() if p["required"]]
    if required:
        query_schema["required"] = required
    checks = [(query_schema, query)]
    if "requestBody" in operation:
        content = operation["requestBody"]["content"]
        checks.append((content["application/x-www-form-urlencoded"]["schema"], form))
    for p in params:
        if p["in"] == "path":
            checks.append((p["schema"], str(case.path_parameters.get(p["name"]))))
        elif p["in"] == "header" and p["name"] in request.headers:
            checks.append((p["schema"], request.headers[p["name"]]))
    return all(_valid(schema, _read(value, schema)) for schema, value in checks)


def _valid(schema: dict[str, Any], value: Any) -> bool:
    root = {**schema, "components": DOCUMENT["components"]}
    return bool(jsonschema_rs.Draft4Validator(root).is_valid(value))


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _read(value: Any, schema: dict[str, Any]) -> Any:
    """`value` (form text) with numbers and booleans read where the schema takes them."""
    options = [_resolve(schema)] + [_resolve(o) for o in _resolve(schema).get("anyOf", [])]
    if isinstance(value, str):
        types = {o.get("type") for o in options}
        if "integer" in types and re.fullmatch(r"-?[0-9]+", value):
            return int(value)
        if "boolean" in types and value in ("true", "false"):
            return value == "true"
        return value
    if isinstance(value, list):
        items = next((o["items"] for o in options if "items" in o), {})
        return [_read(v, items) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            named = [o["properties"][key] for o in options if key in o.get("properties", {})]
            extra = [
                o["additionalProperties"]
                for o in options
                if isinstance(o.get("additionalProperties"), dict)
            ]
            out[key] = _read(v, (named or extra or [{}])[0])
        return out
    return value


def _closed(node: Any) -> Any:
    """An answer schema with every object closed: no field the document does not name.

    The served document leaves objects open (clients must ignore fields they do not know);
    the server is held to it here. An object the document means to leave open says so with
    `additionalProperties: true`.
    """
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


# -- the app under test, with objects to aim at --------------------------------------------


class Target:
    """The app, an account's secret key, and ids of its objects by path parameter name."""

    def __init__(self, app: Any, key: str, ids: dict[str, list[str]], database: str) -> None:
        self.app = app
        self.key = key
        self.ids = ids
        self.database = database  # "sqlite" or "postgres"


def _seed(client: TestClient, key: str) -> dict[str, list[str]]:
    """PaymentIntents in every status, with their charges and methods; refunds, webhook
    endpoints, events, terminal locations, readers and configurations."""
    auth = {"Authorization": f"Bearer {key}"}

    def post(path: str, data: dict[str, Any], status: int = 200) -> dict[str, Any]:
        form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
        r = client.post(path, content=formcodec.encode(data), headers=form)
        assert r.status_code == status, r.text
        return dict(r.json())

    ids: dict[str, list[str]] = {}
    card = {"currency": "usd", "payment_method": "pm_card_visa"}
    ids["payment_method"] = sorted(TEST_PAYMENT_METHODS)
    for n in range(8):
        fresh = post("/v1/payment_intents", {"amount": 1000 + n, "currency": "usd"})
        post("/v1/payment_intents/" + fresh["id"], {"description": "seeded"})
        ready = post("/v1/payment_intents", {**card, "amount": 2000, "metadata": {"n": n}})
        held = {**card, "amount": 3000, "capture_method": "manual", "confirm": True}
        paid = post("/v1/payment_intents", {**card, "amount": 4000, "confirm": True})
        declined = {**card, "amount": 5000, "payment_method": "pm_card_chargeDeclined"}
        dropped = post("/v1/payment_intents", {"amount": 6000, "currency": "eur"})
        intents = [
            fresh,
            ready,
            post("/v1/payment_intents", held),
            paid,
            post("/v1/payment_intents", {**declined, "confirm": True}, status=402)["error"][
                "payment_intent"
            ],
            post(
                f"/v1/payment_intents/{dropped['id']}/cancel", {"cancellation_reason": "abandoned"}
            ),
        ]
        refund = post("/v1/refunds", {"payment_intent": paid["id"], "amount": 100})
        endpoint = {"url": "https://example.invalid/hook", "enabled_events": ["*"]}
        location = {"display_name": f"Shop {n}", "address": {"country": "US", "city": "Town"}}
        configuration = {"name": f"Config {n}", "offline": {"enabled": True}}
        for pi in intents:
            ids.setdefault("intent", []).append(pi["id"])
            if pi["latest_charge"]:
                ids.setdefault("charge", []).append(pi["latest_charge"])
            if pi["payment_method"]:
                ids.setdefault("payment_method", []).append(pi["payment_method"])
        ids.setdefault("refund", []).append(refund["id"])
        ids.setdefault("webhook_endpoint", []).append(post("/v1/webhook_endpoints", endpoint)["id"])
        location_id = post("/v1/terminal/locations", location)["id"]
        ids.setdefault("location", []).append(location_id)
        if n < 2:
            # A reader registered at that Location, as a device registers itself.
            device = {"device_type": "bbpos_wisepos_e", "serial_number": f"SN-{key[-6:]}-{n}"}
            device["device_sw_version"] = "1"
            code = client.post("/device/v1/registration_codes", json=device).json()
            reader = {"registration_code": code["registration_code"], "location": location_id}
            ids.setdefault("reader", []).append(post("/v1/terminal/readers", reader)["id"])
        ids.setdefault("configuration", []).append(
            post("/v1/terminal/configurations", configuration)["id"]
        )
    events = client.get("/v1/events", params={"limit": 30}, headers=auth).json()["data"]
    ids["event_id"] = [e["id"] for e in events]
    return ids


#: The PostgreSQL server of the storage-parametrised tests (CI sets it; locally optional).
POSTGRES_URL = os.environ.get("STOWPAY_TEST_POSTGRES_URL")


def _database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if kind == "sqlite":
        return str(tmp_path_factory.mktemp("fuzz") / "cloud.db")
    if POSTGRES_URL is None:
        pytest.skip("STOWPAY_TEST_POSTGRES_URL is not set")
    import psycopg

    name = "fuzz_" + uuid.uuid4().hex[:12]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


# PostgreSQL refuses what SQLite stores (NUL in text, say): both are fuzzed.
@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzz_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    db = _database(request.param, tmp_path_factory)
    # No background work: the dispatcher must not call the fuzzed webhook endpoints.
    app = create_app(Settings(db=db, background=False))
    cloud = app.state.cloud
    with TestClient(app) as client:  # runs the lifespan, which migrates the database
        with cloud.store.write() as tx:
            key = create_account(tx, cloud.settings.clock, cloud.settings.ids).secret_key
        ids = _seed(client, key)
    yield Target(app, key, ids, request.param)
    asgi.shutdown_lifespans()  # schemathesis started the app's lifespan again for its calls
    cloud.store.close()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_target: Target) -> Any:
    with TestClient(fuzz_target.app) as client:
        document = client.get("/openapi.json").json()
    answers = document["components"]["schemas"]
    for name in answers.keys() - STILL_OPEN:
        answers[name] = _closed(answers[name])
    DOCUMENT.clear()
    DOCUMENT.update(document)
    return _load(document, fuzz_target, EXAMPLES)


def _load(document: dict[str, Any], target: Target, max_examples: int, **phases: Any) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": target.key}}},
            "generation": {"max-examples": max_examples},
            # The stateful test follows the document's links only, not links schemathesis
            # would infer from the answers: it shows the document's links are right.
            "phases": {"stateful": {"inference": {"algorithms": []}}, **phases},
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config)
    schema.app = target.app  # calls go to the app in process, as with `from_asgi`
    return schema


#: Body fields that name another object, and the pool of ids they are aimed at.
BODY_IDS = {
    "payment_intent": "intent",
    "charge": "charge",
    "payment_method": "payment_method",
    "location": "location",
    "configuration_overrides": "configuration",
}


def _aim(
    case: Any, pick: int, ids: dict[str, list[str]], linked: frozenset[str] = frozenset()
) -> None:
    """Point the case's ids (path, and body fields that name objects) at real objects.

    Only where the case is meant to be valid: a negative id stays as schemathesis made it,
    and so does one a link took from an earlier answer (`linked`, by name).
    """

    def real(pool_name: str) -> str | None:
        pool = ids.get(pool_name)
        return pool[pick % len(pool)] if pool else None

    def negative(location: ParameterLocation) -> bool:
        return case.meta is not None and case.meta.is_negative_at(location)

    if not negative(ParameterLocation.PATH):
        for name in (case.path_parameters or {}).keys() - linked:
            case.path_parameters[name] = real(name) or case.path_parameters[name]
    if isinstance(case.body, dict) and not negative(ParameterLocation.BODY):
        for name, pool_name in BODY_IDS.items():
            if isinstance(case.body.get(name), str) and case.body[name] and name not in linked:
                case.body[name] = real(pool_name) or case.body[name]
    _tidy(case, pick)


def _tidy(case: Any, pick: int) -> None:
    """`expand[]` paths that exist, and no drawn Idempotency-Key, where the case is valid."""

    def negative(location: ParameterLocation) -> bool:
        return case.meta is not None and case.meta.is_negative_at(location)

    body = case.body if isinstance(case.body, dict) else {}
    if isinstance(body.get("expand"), list) and not negative(ParameterLocation.BODY):
        body["expand"] = _expand_paths(body["expand"], pick)
    query = case.query if isinstance(case.query, dict) else {}
    if isinstance(query.get("expand"), list) and not negative(ParameterLocation.QUERY):
        query["expand"] = _expand_paths(query["expand"], pick)
    if not negative(ParameterLocation.HEADER):
        # A key drawn again with other parameters only ever meets the idempotency check.
        case.headers.pop("Idempotency-Key", None)


#: Paths `expand[]` takes on some object or list, and some it refuses.
EXPAND = [
    "latest_charge",
    "payment_method",
    "payment_intent",
    "charge",
    "latest_charge.payment_intent.payment_method",
    "payment_method_details.card_present.location",
    "data.latest_charge",
    "data.payment_intent",
    "data.object.latest_charge",
    "location",
    "metadata.order",
    "status",
]


def _expand_paths(drawn: list[Any], pick: int) -> list[str]:
    return [EXPAND[(pick + i) % len(EXPAND)] for i in range(len(drawn))]


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_operation_answers_as_documented(case: Any, fuzz_target: Target) -> None:
    # Half the cases are aimed at real objects. The choice is a function of the case itself
    # (schemathesis refuses `@given` next to the document's examples), so a failure replays.
    pick = zlib.crc32(repr((case.path_parameters, case.body, case.query)).encode())
    if pick % 2:
        _aim(case, pick // 2, fuzz_target.ids)
    case.query = _bracket_query(case.query)
    case.call_and_validate(checks=CHECKS)


# -- sequences: one answer's ids in the next request ----------------------------------------

#: Scenarios of the stateful test (each up to `STEPS` calls): half the examples asked for.
SCENARIOS = max(1, EXAMPLES // 2)
STEPS = int(os.environ.get("STOWPAY_FUZZ_STEPS", "30"))

#: The stateless checks, and two that need a sequence: an object just created is found
#: (`ensure_resource_availability`), and one deleted is gone (`use_after_free`).
STATEFUL_CHECKS = [*CHECKS, ensure_resource_availability, use_after_free]


def test_sequences_along_the_links_answer_as_documented(
    fuzz_schema: Any, fuzz_target: Target
) -> None:
    """schemathesis's state machine over the document's links: a PaymentIntent created,
    then confirmed, captured, refunded by its `latest_charge`, a Location created, then a
    reader listed at it, updated, deleted, ... each step checked as the stateless test checks
    its cases."""
    links = {
        (op_id, name)
        for item in DOCUMENT["paths"].values()
        for op_id, op in ((o["operationId"], o) for o in item.values())
        for name in op["responses"]["200"].get("links", {})
    }
    statuses: Counter[int] = Counter()
    findings: list[str] = []
    followed: set[str] = set()
    counts = Counter[str]()

    class Sequences(fuzz_schema.as_state_machine()):  # type: ignore[misc]
        linked: frozenset[str] = frozenset()

        def setup(self) -> None:
            counts["scenarios"] += 1

        def step(self, input: Any) -> Any:
            self.linked = frozenset(name for _, name in input.applied_parameters if name)
            if input.transition is not None and input.is_applied:
                counts["linked"] += 1
                followed.add(input.transition.id)
            return super().step(input)

        def before_call(self, case: Any) -> None:
            # As in the stateless test, half the ids no link chose are aimed at real objects:
            # a sequence can also start from a seeded PaymentIntent, Location, ...
            pick = zlib.crc32(repr((case.path_parameters, case.body, case.query)).encode())
            if pick % 2:
                _aim(case, pick // 2, fuzz_target.ids, self.linked)
            else:
                _tidy(case, pick // 2)
            case.query = _bracket_query(case.query)

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            statuses[response.status_code] += 1
            try:
                case.validate_response(
                    response,
                    checks=STATEFUL_CHECKS,
                    transport_kwargs=kwargs or None,
                    recorder=self.recorder,
                )
            except Exception as exc:
                findings.append(f"{case.operation.label}: {exc}\n{case.as_curl_command()}")
                raise

    started, cpu = time.monotonic(), time.process_time()
    # Hypothesis replays sequences (to report a failure, or to explore from a known prefix);
    # against a database that has moved on since, a replay may draw otherwise and Hypothesis
    # calls it "Flaky". That is no finding of its own (as schemathesis's runner also treats
    # it): what a check found is reported, and otherwise the run goes on with new sequences.
    for _ in range(10):
        try:
            run_state_machine_as_test(
                Sequences,
                settings=settings(
                    max_examples=SCENARIOS - counts["scenarios"],
                    stateful_step_count=STEPS,
                    deadline=None,
                    phases=[Phase.generate],
                    database=None,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        except Exception as exc:
            if findings:
                pytest.fail(f"{len(findings)} findings; the first:\n{findings[0]}")
            if not isinstance(exc, Flaky) and not is_inconsistent_replay(exc):
                raise
            counts["replays gone elsewhere"] += 1
        if counts["scenarios"] >= SCENARIOS:
            break
    steps = sum(statuses.values())
    print(
        f"\nstateful fuzz [{fuzz_target.database}]: {counts['scenarios']} sequences, "
        f"{steps} calls, {counts['linked']} of them along a link ({len(followed)} of the "
        f"document's {len(links)} links followed), answers {dict(sorted(statuses.items()))}, "
        f"findings 0 ({counts['replays gone elsewhere']} replays gone elsewhere); "
        f"{time.monotonic() - started:.0f} s ({time.process_time() - cpu:.0f} s CPU)"
    )
    # The links lead somewhere: a run that never followed one would test nothing stateful.
    # About a fifth of the calls follow a link (216 of 1,091 in one CI run, 19.8%): a tenth
    # is the floor, well clear of the run-to-run spread.
    assert counts["linked"] > steps // 10 and len(followed) >= min(50, SCENARIOS)


# -- two accounts: account A's key, account B's ids -----------------------------------------

#: Examples per operation of the two-account test: a quarter of the stateless test's.
FOREIGN_EXAMPLES = max(1, EXAMPLES // 4)

#: Query fields that name another object, and the pool of ids they are aimed at (list
#: filters); `starting_after` and `ending_before` take the listed kind (see `_cursor_pool`).
QUERY_IDS = {"payment_intent": "intent", "charge": "charge", "location": "location"}


class Foreign:
    """Account B, in the database account A is fuzzed in: its ids, all it owns, its rows."""

    def __init__(
        self, store: Any, account_id: str, ids: dict[str, list[str]], caller_key: str
    ) -> None:
        self.store = store
        self.caller_key = caller_key  # account A's
        self.account_id = account_id
        self.ids = ids
        with store.engine.connect() as conn:
            owned = conn.execute(
                sa.select(tables.objects.c.id).where(tables.objects.c.account_id == account_id)
            )
            self.owned = {account_id, *owned.scalars()}
        self.rows = self.snapshot()
        self.counts: Counter[str] = Counter()

    def snapshot(self) -> str:
        """Every row of B's, in every table that has an account (as text, to compare)."""
        with self.store.engine.connect() as conn:
            dump = [
                (
                    table.name,
                    sorted(
                        repr(tuple(row))
                        for row in conn.execute(
                            sa.select(table).where(table.c[column] == self.account_id)
                        )
                    ),
                )
                for table in tables.metadata.sorted_tables
                for column in ("account_id", "id")
                if column in table.c and (column == "account_id" or table is tables.accounts)
            ]
        return repr(dump)


@pytest.fixture(scope="module")
def foreign(fuzz_target: Target) -> Iterator[Foreign]:
    cloud = fuzz_target.app.state.cloud
    with TestClient(fuzz_target.app) as client:
        with cloud.store.write() as tx:
            account = create_account(tx, cloud.settings.clock, cloud.settings.ids)
        ids = _seed(client, account.secret_key)
        # Listing configurations makes an account's default one (lazily): made before the
        # snapshot, so that only A's calls could change B's rows after it.
        auth = {"Authorization": f"Bearer {account.secret_key}"}
        assert client.get("/v1/terminal/configurations", headers=auth).status_code == 200
    # The test payment methods (`pm_card_visa`) are everyone's; B's own are the ones made.
    ids["payment_method"] = [pm for pm in ids["payment_method"] if pm not in TEST_PAYMENT_METHODS]
    b = Foreign(cloud.store, account.account["id"], ids, fuzz_target.key)
    started, cpu = time.monotonic(), time.process_time()
    yield b
    c = b.counts
    print(
        f"\ntwo accounts [{fuzz_target.database}]: {c['cases']} cases with A's key, "
        f"{c['aimed']} carrying B's ids ({c['twins']} answered as for ids that do not exist: "
        f"{c['404']} 404, {c['400']} 400, {c['empty']} empty lists); answers with B's ids "
        f"{c['leaks']}, B's rows changed {c['changed']}, findings {c['findings']}; "
        f"{time.monotonic() - started:.0f} s ({time.process_time() - cpu:.0f} s CPU)"
    )


def _cursor_pool(path: str) -> str | None:
    """The pool of ids a list at `path` takes as a cursor: its objects' kind."""
    return next(
        (
            p[len(path) + 2 : -1]
            for p in DOCUMENT["paths"]
            if re.fullmatch(re.escape(path) + r"/{\w+}", p)
        ),
        None,
    )


def _aim_at_foreign(case: Any, pick: int, ids: dict[str, list[str]]) -> set[str]:
    """Every id the case carries (path, body, query filters and cursors) aimed at B's
    objects, where the case is meant to be valid; the ids placed."""
    placed: set[str] = set()

    def real(pool_name: str | None, i: int) -> str | None:
        pool = ids.get(pool_name or "")
        if not pool:
            return None
        placed.add(pool[(pick + i) % len(pool)])
        return pool[(pick + i) % len(pool)]

    def negative(location: ParameterLocation) -> bool:
        return case.meta is not None and case.meta.is_negative_at(location)

    if not negative(ParameterLocation.PATH):
        for i, name in enumerate(case.path_parameters or {}):
            case.path_parameters[name] = real(name, i) or case.path_parameters[name]
    if isinstance(case.body, dict) and not negative(ParameterLocation.BODY):
        for i, (name, pool_name) in enumerate(BODY_IDS.items()):
            if isinstance(case.body.get(name), str) and case.body[name]:
                case.body[name] = real(pool_name, i) or case.body[name]
    if case.method == "GET" and not negative(ParameterLocation.QUERY):
        if not isinstance(case.query, dict):
            case.query = {}
        pools = {**QUERY_IDS, "starting_after": _cursor_pool(case.path)}
        pools["ending_before"] = pools["starting_after"]
        taken = [n for n in case.operation.query if n.name in pools]
        given = [n for n in taken if isinstance(case.query.get(n.name), str)]
        # A list is asked with one of B's ids even when schemathesis drew none.
        if taken and not given:
            given = [taken[pick % len(taken)]]
        if given:
            for name in ("starting_after", "ending_before"):
                case.query.pop(name, None)
            param = given[0].name
            value = real(pools[param], 0)
            if value is not None:
                case.query[param] = value
    _tidy(case, pick)
    return placed


def _replace_ids(value: Any, replace: dict[str, str]) -> Any:
    if isinstance(value, str):
        return replace.get(value, value)
    if isinstance(value, dict):
        return {k: _replace_ids(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_ids(v, replace) for v in value]
    return value


def _outcome(response: Any) -> tuple[int, Any, Any, Any]:
    """What an answer says, without the ids and text that differ between two calls."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code, None, None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return response.status_code, error.get("type"), error.get("code"), error.get("param")
    return response.status_code, body.get("object"), body.get("data") == [], None


CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def foreign_schema(fuzz_schema: Any, fuzz_target: Target) -> Any:
    """The document, fuzzed only (no examples, no coverage phase): the ids are B's anyway."""
    off = {"enabled": False}
    return _load(DOCUMENT, fuzz_target, FOREIGN_EXAMPLES, examples=off, coverage=off)


foreign_lazy_schema = schemathesis.pytest.from_fixture("foreign_schema")


@foreign_lazy_schema.parametrize()
@settings(
    max_examples=FOREIGN_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_another_accounts_ids_are_not_found(case: Any, foreign: Foreign) -> None:
    """Account A's key with account B's ids: each such answer is the one an id that does not
    exist gets (a 404, a 400 for a malformed request, an empty list for a list filter), no
    answer names any of B's objects beyond the ids the request sent, and B's rows stay as
    they were."""
    pick = zlib.crc32(repr((case.path_parameters, case.body, case.query)).encode())
    sent = _aim_at_foreign(case, pick, foreign.ids)
    case.query = _bracket_query(case.query)
    # Always A's key (schemathesis leaves it out of some cases, to see them refused).
    case.headers["Authorization"] = f"Bearer {foreign.caller_key}"
    foreign.counts["cases"] += 1
    try:
        response = case.call()
        case.validate_response(response, checks=CONFORMANCE)
        leaked = sorted(x for x in foreign.owned - sent if x in response.text)
        foreign.counts["leaks"] += bool(leaked)
        assert leaked == [], f"B's ids {leaked} in the answer to {case.operation.label}"
        changed = foreign.snapshot() != foreign.rows
        foreign.counts["changed"] += changed
        assert not changed, f"{case.operation.label} changed B's rows"
        if sent:
            foreign.counts["aimed"] += 1
            got = _outcome(response)
            empty = case.method == "GET" and got[0] == 200 and got[2] is True
            assert got[0] in (400, 404) or empty, (case.operation.label, response.text)
            # The same request with ids that name nothing: it must be answered alike.
            unknown = {x: x.split("_", 1)[0] + "_NoSuchObject" + str(i) for i, x in enumerate(sent)}
            case.path_parameters = _replace_ids(case.path_parameters, unknown)
            case.body = _replace_ids(case.body, unknown)
            case.query = _replace_ids(case.query, unknown)
            twin = _outcome(case.call())
            assert got == twin, (case.operation.label, got, twin, response.text)
            foreign.counts["twins"] += 1
            foreign.counts["empty" if empty else str(got[0])] += 1
    except BaseException:
        foreign.counts["findings"] += 1
        raise
