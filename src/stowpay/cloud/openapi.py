"""`GET /openapi.json`: an OpenAPI 3 document generated from the registered operations."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from .api import Api, Operation
from .schemas import ERROR_SCHEMA, object_schemas

REF = "#/components/schemas/{model}"


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
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            out.pop(key)
            if len(rest) == 1:
                if "$ref" in rest[0]:
                    out["allOf"] = rest
                else:
                    out.update(rest[0])
            else:
                out[key] = rest
            out["nullable"] = True
    return out


def _operation(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    schema = _params_schema(op, components)
    returns = op.returns
    if returns.startswith("list:"):
        item = returns[5:]
        ok: dict[str, Any] = {
            "type": "object",
            "required": ["object", "data", "has_more", "url"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {"type": "array", "items": {"$ref": REF.format(model=item)}},
                "has_more": {"type": "boolean"},
                "url": {"type": "string"},
            },
        }
    else:
        ok = {"$ref": REF.format(model=returns)}
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "maxLength": 255},
            }
            for name in re.findall(r"{(\w+)}", op.path)
        ],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": ok}}},
            "default": {
                "description": "Error",
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
            },
        },
    }
    if op.method == "POST":
        out["requestBody"] = {
            "required": bool(schema.get("required")),
            "content": {"application/x-www-form-urlencoded": {"schema": schema}},
        }
    else:
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in schema.get("required", []),
                "schema": prop,
            }
            if prop.get("type") == "object" or "$ref" in prop or "anyOf" in prop:
                param["style"] = "deepObject"
                param["explode"] = True
            out["parameters"].append(param)
    return out


def openapi_route(api: Api) -> Route:
    cache: list[bytes] = []

    async def serve(request: Request) -> Response:
        if not cache:
            cache.append(json.dumps(document(api), indent=2).encode())
        return Response(cache[0], media_type="application/json")

    return Route("/openapi.json", serve, methods=["GET"], name="openapi")
