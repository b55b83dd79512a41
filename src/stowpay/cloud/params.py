"""Request parameter models: pydantic with Stripe's conventions.

Unknown parameters are refused, an empty value unsets a field, and a validation failure
becomes Stripe's error naming the parameter the way the client wrote it (`metadata[key]`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.functional_validators import AfterValidator, BeforeValidator

from ..wire import metadata as metadata_limits
from ..wire.errors import InvalidRequestError
from ..wire.money import MAXIMUM_AMOUNT, SUPPORTED

MAX_METADATA_KEYS = metadata_limits.MAX_KEYS
MAX_METADATA_KEY = metadata_limits.MAX_KEY
MAX_METADATA_VALUE = metadata_limits.MAX_VALUE


def _check_count(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"metadata can have at most {MAX_METADATA_KEYS} keys")
    return value


def _no_card_number_keys(value: Any) -> Any:
    if isinstance(value, dict) and metadata_limits.any_key_is_card_number(value):
        raise ValueError(metadata_limits.KEY_CARD_NUMBER)
    return value


def _check_key(key: str) -> str:
    problem = metadata_limits.key_problem(key)
    if problem is not None:
        raise ValueError(problem)
    return key


def _check_value(value: str) -> str:
    problem = metadata_limits.value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


#: Each key and value checked on its own, so an error names it: `metadata[note]`.
MetadataKey = Annotated[str, AfterValidator(_check_key)]
MetadataValue = Annotated[str, AfterValidator(_check_value)]

#: Metadata as sent: a value of "" deletes that key; the whole of it as "" clears all keys.
Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    BeforeValidator(_no_card_number_keys),
    AfterValidator(_check_count),
]
MetadataParam = Metadata | Literal[""]


def _form_bool(value: Any) -> Any:
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value


#: A boolean as a form carries it: `true` or `false`, as Stripe takes it and as the OpenAPI
#: document says (pydantic alone would also take `0`, `1`, `yes`, `off`, ...).
Bool = Annotated[bool, BeforeValidator(_form_bool)]

Currency = Annotated[
    str, Field(pattern=r"^[a-zA-Z]{3}$", json_schema_extra={"enum": sorted(SUPPORTED)})
]
Amount = Annotated[int, Field(ge=1, le=MAXIMUM_AMOUNT)]
ShortText = Annotated[str, Field(max_length=500)]
Id = Annotated[str, Field(min_length=1, max_length=255)]
# An address longer than 254 characters cannot be delivered (RFC 5321's path limit), and
# the receipt outbox stores addresses in columns sized to it.
Email = Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class Params(BaseModel):
    """Base of every request's parameters."""

    model_config = ConfigDict(extra="forbid", str_max_length=5000, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_unsets(cls, data: Any) -> Any:
        # Stripe: an empty value unsets an optional field. Metadata keeps its own meaning.
        if isinstance(data, dict) and "" in data.values():
            return {
                k: (None if v == "" and k != "metadata" and _nullable(cls, k) else v)
                for k, v in data.items()
            }
        return data


def _nullable(model: type[BaseModel], name: str) -> bool:
    field = model.model_fields.get(name)
    return field is not None and not field.is_required()


class NoParams(Params):
    """An operation that takes no parameters besides `expand`."""


#: A Unix time as a filter takes it; the bounds keep it within a 64-bit database integer.
Timestamp = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]

#: Where a stored `created` lies (a 64-bit column).
CREATED_MIN, CREATED_MAX = -(2**63), 2**63 - 1


def clamp_created(value: int) -> int:
    """A `created` bound moved into the stored range, where it selects the same objects."""
    return min(max(value, CREATED_MIN), CREATED_MAX)


class CreatedFilter(Params):
    gt: Timestamp | None = None
    gte: Timestamp | None = None
    lt: Timestamp | None = None
    lte: Timestamp | None = None


class ListParams(Params):
    """Cursor pagination, as every Stripe list takes it."""

    limit: Annotated[int, Field(ge=1, le=100)] = 10
    starting_after: Id | None = None
    ending_before: Id | None = None
    created: Timestamp | CreatedFilter | None = None

    @model_validator(mode="after")
    def _one_cursor(self) -> ListParams:
        if self.starting_after is not None and self.ending_before is not None:
            raise ValueError(
                "You may only specify one of these parameters: ending_before, starting_after."
            )
        return self

    def created_bounds(self) -> dict[str, int] | None:
        if self.created is None:
            return None
        if isinstance(self.created, int):
            return {"eq": clamp_created(self.created)}
        bounds = self.created.model_dump().items()
        return {k: clamp_created(v) for k, v in bounds if v is not None}


def validate(model: type[Params], raw: dict[str, Any]) -> Params:
    """Validate raw form params; raise Stripe's error for the first problem."""
    try:
        params = model.model_validate(raw)
    except ValidationError as exc:
        raise _to_stripe_error(exc, raw) from None
    where = _card_number_at(params, [])
    if where is not None:
        param = where[0] + "".join(f"[{p}]" for p in where[1:])
        raise InvalidRequestError(
            f"Invalid {param}: must not contain a card number.",
            code="parameter_invalid",
            param=param,
        )
    return params


def _card_number_at(value: Any, path: list[str]) -> list[str] | None:
    """Where a text parameter holds a card number (its path as the client wrote it), or None.

    What a request carries is kept in the clear (an address, a description, a label) or
    quoted back in an error; a card number must be neither. Numbers are checked as text only
    where they are text: `amount` or `created[gte]` arrive here as integers.
    """
    if isinstance(value, str):
        return path if metadata_limits.contains_card_number(value) else None
    items: Iterable[tuple[str, Any]]
    if isinstance(value, BaseModel):
        fields = type(value).model_fields.items()
        items = ((field.alias or name, getattr(value, name)) for name, field in fields)
    elif isinstance(value, dict):
        items = ((str(key), item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _card_number_at(item, [*path, key])
        if found is not None:
            return found
    return None


def _param_path(loc: tuple[int | str, ...], raw: Any, *, missing: bool) -> list[str]:
    """The parameter an error is about, as the client wrote it.

    pydantic's `loc` mixes the client's keys with the names of union members and validators
    (`constrained-int`, `CreatedFilter`, `function-after[...]`); walking the input along it
    keeps only what the client sent (and, for a missing parameter, its name at the end).
    """
    parts: list[str] = []
    node = raw
    for i, p in enumerate(loc):
        sent = (isinstance(node, dict) and p in node) or (
            isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node)
        )
        if sent:
            node = node[p]
        if sent or (missing and i == len(loc) - 1):
            parts.append(str(p))
    return parts


def _to_stripe_error(exc: ValidationError, raw: dict[str, Any]) -> InvalidRequestError:
    errors = exc.errors(include_url=False)
    # Of the errors pydantic reports for each member of a union, the one that reaches
    # deepest into what was sent is the most specific (`created[gte]`, not `created`).
    paths = [_param_path(tuple(e["loc"]), raw, missing=e["type"] == "missing") for e in errors]
    depth = max(len(p) for p in paths)
    index = next(i for i, p in enumerate(paths) if len(p) == depth)
    err, parts = errors[index], paths[index]
    param = parts[0] + "".join(f"[{p}]" for p in parts[1:]) if parts else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        return InvalidRequestError(
            f"Received unknown parameter: {param}", code="parameter_unknown", param=param
        )
    if kind == "missing":
        return InvalidRequestError(
            f"Missing required param: {param}.", code="parameter_missing", param=param
        )
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return InvalidRequestError(
            f"Invalid integer: {_show(err.get('input'))}",
            code="parameter_invalid_integer",
            param=param,
        )
    message = err["msg"].removeprefix("Value error, ")
    if not param:
        return InvalidRequestError(message, code="parameter_invalid")
    return InvalidRequestError(f"Invalid {param}: {message}", code="parameter_invalid", param=param)


def _show(value: Any) -> str:
    """An input quoted back in an error message: never a card number."""
    text = value if isinstance(value, str) else repr(value)
    if metadata_limits.contains_card_number(text):
        return "(a card number)"
    return text[:100]
