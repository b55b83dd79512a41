"""`GET /openapi.json`: an OpenAPI 3 document generated from the registered operations."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from .api import Api, Operation
from .schemas import ERROR_SCHEMA, REF, list_of, object_schemas

#: What every answer carries; the replay and retry headers only sometimes.
HEADERS: dict[str, Any] = {
    "Request-Id": {
        "required": True,
        "schema": {"type": "string", "pattern": "^req_"},
        "description": "The request's id, to quote to support.",
    },
    "Stripe-Version": {"required": True, "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Set when the answer is the stored one for this Idempotency-Key.",
    },
    "Original-Request": {
        "schema": {"type": "string", "pattern": "^req_"},
        "description": "On a replay: the id of the request whose answer this is.",
    },
}

#: The error statuses an operation may answer with, by method (Stripe's meanings): 400 bad
#: parameters or state, 401 bad key, 402 a declined card, 404 no such object (or another
#: account's), 409 the same Idempotency-Key still in flight. Never a 5xx.
ERRORS = {
    "GET": ("400", "401", "404"),
    "DELETE": ("400", "401", "404"),
    "POST": ("400", "401", "402", "404", "409"),
}

IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retries with the same key get the first answer, byte for byte (24 h).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def document(api: Api) -> dict[str, Any]:
    """The OpenAPI document of `api`."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA, **object_schemas()}
    paths: dict[str, Any] = {}
    for op in api.operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, components)
    add_links(paths, components)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Stowpay cloud API",
            "version": __version__,
            "description": "The Stripe-wire-compatible API of Stowpay's cloud. Bodies are "
            "form-encoded with Stripe's nested keys; answers are JSON.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"basic": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": HEADERS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
    }


def _params_schema(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = op.params.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = _openapi30(sub)
    schema = dict(_openapi30(schema))
    props = schema.setdefault("properties", {})
    props["expand"] = {
        "type": "array",
        "items": {"type": "string", "maxLength": 100},
        "maxItems": 10,
    }
    return schema


def _openapi30(schema: Any) -> Any:
    """Pydantic writes JSON Schema 2020-12; turn the parts OpenAPI 3.0 lacks into its words."""
    if isinstance(schema, list):
        return [_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _openapi30(v) for k, v in schema.items() if k not in {"title", "default"}}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list):
        out["example"] = out.pop("examples")[0]  # OpenAPI 3.0 has one example per schema
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            # An optional parameter: a form has no null, but an empty value unsets it.
            rest = [o for o in options if o != {"type": "null"}]
            if UNSET not in rest:
                rest.append(UNSET)
            out[key] = rest
    return out


#: The empty value, which unsets an optional parameter (`description=`).
UNSET: dict[str, Any] = {"type": "string", "enum": [""]}


def _operation(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    schema = _params_schema(op, components)
    returns = op.returns
    ok = list_of(returns[5:]) if returns.startswith("list:") else _ref(returns)
    responses = {"200": _response("OK", ok)}
    for status in ERRORS[op.method]:
        responses[status] = _response(HTTPStatus(int(status)).phrase, _ref("Error"))
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
            for name in re.findall(r"{(\w+)}", op.path)
        ],
        "responses": responses,
    }
    if op.method == "POST":
        out["parameters"].append(IDEMPOTENCY_KEY)
        form: dict[str, Any] = {"schema": schema}
        # Stripe's brackets in the body too: `address[city]=...`, `metadata[order]=...`.
        # Without it a form's object is exploded into bare keys (`city=...`), which the
        # server refuses as unknown parameters.
        encoding = {
            name: {"style": "deepObject", "explode": True}
            for name, prop in schema.get("properties", {}).items()
            if _nested(prop)
        }
        if encoding:
            form["encoding"] = encoding
        out["requestBody"] = {
            "required": bool(schema.get("required")),
            "content": {"application/x-www-form-urlencoded": form},
        }
        return out
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", []),
            "schema": prop,
        }
        if _nested(prop):
            # Stripe's brackets: `created[gte]=...`, `expand[0]=...` (as Stripe's own document
            # writes them, `deepObject` also for arrays).
            param["style"] = "deepObject"
            param["explode"] = True
        out["parameters"].append(param)
    return out


def _nested(prop: dict[str, Any]) -> bool:
    if prop.get("type") in ("object", "array") or "$ref" in prop:
        return True
    return any(_nested(o) for o in prop.get("anyOf", []))


def _ref(model: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=model)}


def _response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in HEADERS},
        "content": {"application/json": {"schema": schema}},
    }


# -- links: where an answer's ids go next ------------------------------------------------
#
# Derived from the operations and answer schemas, never listed by hand: an operation that
# retrieves one object (`GET .../{p}` answering with `X`) says that the path parameter `p`
# names an `X`, and `X`'s `id` pattern gives its prefix (`pi_`). Then every id an answer
# holds (by its pattern: `id`, `latest_charge`, `data/0/id`, ...) links to every operation
# that takes an id of that kind: in its path, or as a body or query field named after the
# kind (`payment_intent`) or after the answer field that holds that kind
# (`configuration_overrides`).


def add_links(paths: dict[str, Any], components: dict[str, Any]) -> None:
    """Add OpenAPI links to the 200 answer of every operation whose answer holds ids."""
    operations = [(path, method, op) for path, item in paths.items() for method, op in item.items()]
    kinds: dict[str, str] = {}  # path parameter -> the object type it names
    for path, method, op in operations:
        last = re.fullmatch(r".*/{(\w+)}", path)
        answer = _answer(op)
        if method == "get" and last and "$ref" in answer:
            kinds[last[1]] = _model(answer)
    prefixes: dict[str, str] = {}  # id prefix -> object type
    for kind in kinds.values():
        prefix = _id_prefix(components[kind]["properties"]["id"])
        if prefix is not None:
            prefixes[prefix] = kind
    consumers = [
        (op["operationId"], where, name, kind)
        for _, _, op in operations
        for where, name, kind in _consumers(op, kinds, prefixes, components)
    ]
    for _, _, op in operations:
        links: dict[str, Any] = {}
        ids = _ids_in(_answer(op), "", components, prefixes, follow=True)
        # The shortest way to an id wins: `id` before `refunds/data/0/charge`.
        for pointer, kind in sorted(ids, key=lambda found: (len(found[0]), found[0])):
            for target, where, name, wanted in consumers:
                link_name = f"{target}.{name}"
                if wanted != kind or link_name in links:
                    continue
                value = f"$response.body#{pointer}"
                link: dict[str, Any] = {"operationId": target}
                if where == "body":
                    # OpenAPI's `requestBody` is a value or one expression; a reader such as
                    # schemathesis also evaluates expressions inside the value, and merges it
                    # into the body it makes: only this field comes from the answer.
                    link["requestBody"] = {name: value}
                else:
                    link["parameters"] = {f"{where}.{name}": value}
                links[link_name] = link
        if links:
            op["responses"]["200"]["links"] = dict(sorted(links.items()))


def _answer(op: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = op["responses"]["200"]["content"]["application/json"]["schema"]
    return schema


def _model(schema: dict[str, Any]) -> str:
    return str(schema["$ref"]).rsplit("/", 1)[1]


def _id_prefix(schema: dict[str, Any]) -> str | None:
    found = re.match(r"\^([a-z]+)_", schema.get("pattern", ""))
    return found[1] if found else None


def _kind(schema: dict[str, Any], prefixes: dict[str, str]) -> str | None:
    """The object type whose id `schema` holds, if it holds one."""
    for option in [schema, *schema.get("anyOf", [])]:
        kind = prefixes.get(_id_prefix(option) or "")
        if kind is not None:
            return kind
    return None


def _ids_in(
    schema: dict[str, Any],
    pointer: str,
    components: dict[str, Any],
    prefixes: dict[str, str],
    *,
    follow: bool,
) -> Iterator[tuple[str, str]]:
    """(JSON pointer, object type) of every id in an answer of `schema`.

    References are followed at the top and into list items, not into expandable fields
    (their id is found as the id itself).
    """
    if "$ref" in schema:
        if not follow:
            return
        schema = components[_model(schema)]
    kind = _kind(schema, prefixes)
    if kind is not None:
        yield pointer, kind
        return
    for name, sub in schema.get("properties", {}).items():
        yield from _ids_in(sub, f"{pointer}/{name}", components, prefixes, follow=False)
    if schema.get("type") == "array":
        yield from _ids_in(schema["items"], f"{pointer}/0", components, prefixes, follow=True)


def _consumers(
    op: dict[str, Any], kinds: dict[str, str], prefixes: dict[str, str], components: dict[str, Any]
) -> Iterator[tuple[str, str, str]]:
    """(`path`, `query` or `body`, name, object type) of each id `op` takes."""
    fields: dict[str, tuple[str, dict[str, Any]]] = {}
    for param in op["parameters"]:
        if param["in"] == "path" and param["name"] in kinds:
            yield "path", param["name"], kinds[param["name"]]
        elif param["in"] == "query":
            fields[param["name"]] = ("query", param["schema"])
    body = op.get("requestBody", {}).get("content", {}).get("application/x-www-form-urlencoded")
    for name, sub in (body or {}).get("schema", {}).get("properties", {}).items():
        fields[name] = ("body", sub)
    # What the answer says a field holds: a Location's `configuration_overrides` is a
    # Configuration's id, and so is the field of that name in the request.
    answer = _answer(op)
    if "$ref" not in answer:
        answer = answer["properties"]["data"]["items"] if "data" in answer["properties"] else {}
    answer_fields = components[_model(answer)]["properties"] if "$ref" in answer else {}
    short_names = {kind.rsplit(".", 1)[-1]: kind for kind in kinds.values()}
    for name, (where, sub) in fields.items():
        if not _takes_text(sub):
            continue
        kind = short_names.get(name) or _kind(answer_fields.get(name, {}), prefixes)
        if kind is not None:
            yield where, name, kind


def _takes_text(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" or any(
        o.get("type") == "string" and "enum" not in o for o in schema.get("anyOf", [])
    )


def openapi_route(api: Api) -> Route:
    cache: list[bytes] = []

    async def serve(request: Request) -> Response:
        if not cache:
            cache.append(json.dumps(document(api), indent=2).encode())
        # Like every answer, this one carries a request id.
        headers = {"Request-Id": request.app.state.cloud.settings.ids.new("req")}
        return Response(cache[0], headers=headers, media_type="application/json")

    return Route("/openapi.json", serve, methods=["GET"], name="openapi")
