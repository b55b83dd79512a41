"""`GET /openapi.json`: an OpenAPI 3 document generated from the registered operations."""

from __future__ import annotations

import json
import re
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
        out["requestBody"] = {
            "required": bool(schema.get("required")),
            "content": {"application/x-www-form-urlencoded": {"schema": schema}},
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


def openapi_route(api: Api) -> Route:
    cache: list[bytes] = []

    async def serve(request: Request) -> Response:
        if not cache:
            cache.append(json.dumps(document(api), indent=2).encode())
        # Like every answer, this one carries a request id.
        headers = {"Request-Id": request.app.state.cloud.settings.ids.new("req")}
        return Response(cache[0], headers=headers, media_type="application/json")

    return Route("/openapi.json", serve, methods=["GET"], name="openapi")
