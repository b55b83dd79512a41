"""`/openapi.json` as a document: valid OpenAPI 3, its links lead where ids go, its form
bodies are described as Stripe's brackets encode them.

The links are generated from the operations (see `stowpay.cloud.openapi.add_links`); these
tests hold them to the objects a client creates and then addresses by id, and check every
link resolves: its target operation exists, takes the parameter it fills, and the answer it
reads from has the field its expression names. `tests/cloud/test_openapi_fuzz.py` follows
them with schemathesis's state machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from stowpay.cloud.app import create_app
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.settings import Settings


class App:
    def __init__(self, app: Any, client: TestClient, key: str) -> None:
        self.app = app
        self.client = client
        self.key = key


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    db = Path(tmp_path_factory.mktemp("document")) / "cloud.db"
    app = create_app(Settings(db=str(db), background=False))
    cloud = app.state.cloud
    with TestClient(app) as client:
        with cloud.store.write() as tx:
            key = create_account(tx, cloud.settings.clock, cloud.settings.ids).secret_key
        yield App(app, client, key)
    cloud.store.close()


@pytest.fixture(scope="module")
def document(served: App) -> dict[str, Any]:
    got: dict[str, Any] = served.client.get("/openapi.json").json()
    return got


def _operations(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        op["operationId"]: (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
    }


def _links(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(source operationId, link name, link) of every link in the document."""
    for _, _, op in _operations(document).values():
        for name, link in op["responses"]["200"].get("links", {}).items():
            yield op["operationId"], name, link


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validate(document)  # the OpenAPI 3.0 schema, links and their operationIds included
    assert sum(1 for _ in _links(document)) > 100


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _at(document: dict[str, Any], schema: dict[str, Any], pointer: str) -> dict[str, Any] | None:
    """The schema of what `pointer` reaches in an answer of `schema`, if it can reach one."""
    for part in pointer.strip("/").split("/"):
        schema = _resolve(document, schema)
        if part.isdigit() and schema.get("type") == "array":
            schema = schema["items"]
        elif part in schema.get("properties", {}):
            schema = schema["properties"][part]
        else:
            return None
    return _resolve(document, schema)


def test_every_link_resolves(document: dict[str, Any]) -> None:
    operations = _operations(document)
    for source, name, link in _links(document):
        assert link["operationId"] in operations, (source, name)
        _, _, target = operations[link["operationId"]]
        taken = {(p["in"], p["name"]) for p in target["parameters"]}
        form = target.get("requestBody", {}).get("content", {})
        body = form.get("application/x-www-form-urlencoded", {}).get("schema", {})
        expressions = dict(link.get("parameters", {}))
        for field, expression in link.get("requestBody", {}).items():
            assert field in body.get("properties", {}), (source, name, field)
            expressions[f"body.{field}"] = expression
        assert expressions, (source, name)
        for where_name, expression in expressions.items():
            where, param = where_name.split(".", 1)
            assert where == "body" or (where, param) in taken, (source, name, where_name)
            pointer = re.fullmatch(r"\$response\.body#(/[\w/]+)", expression)
            assert pointer, (source, name, expression)
            _, _, op = operations[source]
            answer = op["responses"]["200"]["content"]["application/json"]["schema"]
            found = _at(document, answer, pointer[1])
            assert found is not None, (source, name, expression)
            # An id, by its pattern, or an expandable id (`anyOf` id or object).
            assert "pattern" in found or "anyOf" in found, (source, name, expression, found)


#: What a client creates and then addresses by id: (source operation, link) pairs that must
#: be in the document, as `operationId: "link name"` with the link's parameter expression.
EXPECTED = {
    "post_create_payment_intent": {
        "get_retrieve_payment_intent.intent": "$response.body#/id",
        "post_update_payment_intent.intent": "$response.body#/id",
        "post_confirm_payment_intent.intent": "$response.body#/id",
        "post_capture_payment_intent.intent": "$response.body#/id",
        "post_cancel_payment_intent.intent": "$response.body#/id",
        "get_retrieve_charge.charge": "$response.body#/latest_charge",
        "post_create_refund.charge": "$response.body#/latest_charge",
        "post_create_refund.payment_intent": "$response.body#/id",
        "get_retrieve_payment_method.payment_method": "$response.body#/payment_method",
        "get_list_charges.payment_intent": "$response.body#/id",
    },
    "post_confirm_payment_intent": {
        "get_retrieve_charge.charge": "$response.body#/latest_charge",
        "post_create_refund.charge": "$response.body#/latest_charge",
    },
    "post_create_refund": {
        "get_retrieve_refund.refund": "$response.body#/id",
        "get_retrieve_charge.charge": "$response.body#/charge",
    },
    "get_retrieve_charge": {"get_retrieve_payment_intent.intent": "$response.body#/payment_intent"},
    "post_create_location": {
        "get_retrieve_location.location": "$response.body#/id",
        "post_update_location.location": "$response.body#/id",
        "delete_delete_location.location": "$response.body#/id",
        "post_create_reader.location": "$response.body#/id",
        "get_list_readers.location": "$response.body#/id",
        "post_create_connection_token.location": "$response.body#/id",
        "get_retrieve_configuration.configuration": "$response.body#/configuration_overrides",
    },
    "post_create_configuration": {
        "get_retrieve_configuration.configuration": "$response.body#/id",
        "post_update_configuration.configuration": "$response.body#/id",
        "delete_delete_configuration.configuration": "$response.body#/id",
        "post_create_location.configuration_overrides": "$response.body#/id",
    },
    "post_create_reader": {
        "get_retrieve_reader.reader": "$response.body#/id",
        "post_update_reader.reader": "$response.body#/id",
        "delete_delete_reader.reader": "$response.body#/id",
        "get_list_offline_rejections.reader": "$response.body#/id",
        "get_retrieve_location.location": "$response.body#/location",
    },
    "get_list_readers": {"get_retrieve_reader.reader": "$response.body#/data/0/id"},
    "post_create_webhook_endpoint": {
        "get_retrieve_webhook_endpoint.webhook_endpoint": "$response.body#/id",
        "post_update_webhook_endpoint.webhook_endpoint": "$response.body#/id",
        "delete_delete_webhook_endpoint.webhook_endpoint": "$response.body#/id",
    },
    "get_list_events": {
        "get_retrieve_event.event_id": "$response.body#/data/0/id",
        "get_list_event_deliveries.event_id": "$response.body#/data/0/id",
    },
}


def test_what_is_created_is_linked_to_where_its_id_goes(document: dict[str, Any]) -> None:
    found = {(source, name): link for source, name, link in _links(document)}
    for source, expected in EXPECTED.items():
        for name, expression in expected.items():
            link = found.get((source, name))
            assert link is not None, f"no link {name} from {source}"
            values = [*link.get("parameters", {}).values(), *link.get("requestBody", {}).values()]
            assert values == [expression], (source, name, values)


def test_every_operation_that_takes_an_id_in_its_path_is_a_link_target(
    document: dict[str, Any],
) -> None:
    targets = {link["operationId"] for _, _, link in _links(document)}
    for op_id, (_, path, _) in _operations(document).items():
        if "{" in path:
            assert op_id in targets, path


def test_nested_form_fields_are_described_with_brackets(document: dict[str, Any]) -> None:
    """Every object or array in a form body has `deepObject` encoding (`address[city]=`)."""
    for op_id, (_, _, op) in _operations(document).items():
        form = op.get("requestBody", {}).get("content", {}).get("application/x-www-form-urlencoded")
        if form is None:
            continue
        for name, prop in form["schema"].get("properties", {}).items():
            options = [_resolve(document, o) for o in [prop, *prop.get("anyOf", [])]]
            if any(o.get("type") in ("object", "array") for o in options):
                assert form.get("encoding", {}).get(name) == {
                    "style": "deepObject",
                    "explode": True,
                }, (op_id, name)


def test_a_client_that_reads_the_document_sends_a_body_the_server_takes(
    served: App, document: dict[str, Any]
) -> None:
    """A nested body, encoded by schemathesis from the document alone, is what the server
    reads: without the encoding, `address` went out as bare `country=US` and was refused."""
    schema = schemathesis.openapi.from_dict(document)
    schema.app = served.app
    operation = schema["/v1/terminal/locations"]["POST"]
    body = {"display_name": "Shop", "address": {"country": "US"}, "metadata": {"till": "3"}}
    case = operation.Case(body=body, media_type="application/x-www-form-urlencoded")
    response = case.call(headers={"Authorization": f"Bearer {served.key}"})
    assert response.status_code == 200, response.text
    location = response.json()
    assert location["address"]["country"] == "US" and location["metadata"] == {"till": "3"}
