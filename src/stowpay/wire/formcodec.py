"""Stripe's form encoding: `metadata[order_id]=A-17`, `expand[]=x`, `items[0][price]=p`.

`decode` turns an urlencoded body (or query string) into nested dicts and lists; `encode`
does the reverse the way Stripe's own clients do (lists indexed, booleans as `true`/`false`,
`None` left out). An empty value is kept as `""`: it means "unset" and the schema decides.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote

from .errors import InvalidRequestError

#: Bounds that keep a hostile body from costing more than a normal one.
MAX_PAIRS = 1000
MAX_DEPTH = 8
MAX_INDEX = 999

NUL_MESSAGE = "Parameters may not contain NUL characters."

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")
#: An array index: ASCII digits only (`str.isdigit` also takes "²", which `int` refuses).
_INDEX = re.compile(r"[0-9]+")


class _Indexed(dict[int, Any]):
    """A list written with explicit indexes (`a[0]`, `a[1]`), turned into a list at the end."""


def decode(data: bytes | str) -> dict[str, Any]:
    """Decode a form body or query string into nested dicts and lists."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError("The request body is not valid UTF-8.") from None
    pairs = _pairs(data)
    root: dict[str, Any] = {}
    for key, value in pairs:
        if "\x00" in key or "\x00" in value:
            # No field means it, and PostgreSQL cannot store it in text.
            raise InvalidRequestError(NUL_MESSAGE, param=key.split("[")[0])
        if key and "[" not in key and "]" not in key:
            # A plain name (most parameters): what `_put` does for it, without its parsing.
            existing = root.get(key)
            if existing is not None and not isinstance(existing, str):
                raise _mixed(key)
            root[key] = value
            continue
        _put(root, key, value)
    return _finish(root)  # type: ignore[no-any-return]


def _pairs(data: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a form, as `parse_qsl(data, keep_blank_values=True)` gives
    them; refused past `MAX_PAIRS`."""
    if data.count("&") >= MAX_PAIRS:  # the count parse_qsl refuses at
        raise InvalidRequestError(f"Too many parameters: at most {MAX_PAIRS} are accepted.")
    if "%" in data or "+" in data:
        return parse_qsl(data, keep_blank_values=True, max_num_fields=MAX_PAIRS)
    # Nothing to unquote (most bodies): parse_qsl would return each field's text unchanged,
    # after a per-field unquoting pass that is about 40 % of decoding a typical body.
    return [(k, v) for k, _, v in (f.partition("=") for f in data.split("&") if f)]


def _path(key: str) -> list[str | None]:
    m = _KEY.match(key)
    if m is None:
        raise InvalidRequestError(f"Invalid parameter name: {key!r}.", param=key)
    parts: list[str | None] = [m.group(1)]
    for p in _PART.findall(m.group(2)):
        parts.append(p if p != "" else None)  # None means "append" (`[]`)
    if len(parts) > MAX_DEPTH:
        raise InvalidRequestError(f"Parameter {key!r} is nested too deeply.", param=key)
    return parts


def _put(root: dict[str, Any], key: str, value: str) -> None:
    path = _path(key)
    node: Any = root
    for i, part in enumerate(path):
        last = i == len(path) - 1
        nxt = None if last else path[i + 1]
        child_kind: type = list if nxt is None else (_Indexed if _is_index(nxt) else dict)
        if isinstance(node, list):
            if part is not None:
                raise _mixed(key)
            if last:
                node.append(value)
                return
            node.append(child_kind())
            node = node[-1]
            continue
        if part is None:
            raise _mixed(key)
        k: str | int = part
        if isinstance(node, _Indexed):
            if not _is_index(part) or int(part) > MAX_INDEX:
                raise _mixed(key)
            k = int(part)
        if last:
            if k in node and not isinstance(node[k], str):
                raise _mixed(key)
            node[k] = value
            return
        existing = node.get(k)
        if existing is None:
            existing = node[k] = child_kind()
        elif isinstance(existing, str) or (isinstance(existing, list) is not (child_kind is list)):
            raise _mixed(key)
        node = existing


def _is_index(part: str) -> bool:
    return len(part) <= 9 and _INDEX.fullmatch(part) is not None


def _mixed(key: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid array or hash in parameter {key!r}.", param=key.split("[")[0]
    )


def _finish(node: Any) -> Any:
    if isinstance(node, _Indexed):
        return [_finish(node[i]) for i in sorted(node)]
    if isinstance(node, dict):
        return {k: _finish(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_finish(v) for v in node]
    return node


def encode(params: dict[str, Any]) -> str:
    """Encode nested params the way Stripe's clients do."""
    out: list[str] = []
    _encode_into(out, params, None)
    return "&".join(out)


def _encode_into(out: list[str], value: Any, prefix: str | None) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _encode_into(out, v, f"{prefix}[{k}]" if prefix else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _encode_into(out, v, f"{prefix}[{i}]")
    elif value is None:
        return
    else:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out.append(f"{quote(str(prefix), safe='[]')}={quote(text, safe='')}")
