"""Plain data across the sandbox boundary: one JSON line per message, with tags for what JSON lacks.

``None``, ``bool``, ``int``, finite ``float`` and ``str`` are JSON's own; ``list`` is a JSON array; the rest are
one-key objects: ``{"t": [...]}`` tuple, ``{"d": [[k, v], ...]}`` dict (any plain keys, in order), ``{"s": [...]}``
set, ``{"fs": [...]}`` frozenset, ``{"b": "hex"}`` bytes, ``{"f": "nan" | "inf" | "-inf"}``, and, only where a
caller allows it, ``{"r": "text"}``: a value that is not plain data, shown by its text (:class:`Opaque`).

Both sides of a sandboxed call use this file (inside the sandbox its code comes with the bootstrap's config, so it
imports nothing that is not built into the interpreter: the ``json`` package, with the ``re`` and ``enum`` it
imports, would cost every sandboxed run ~5 ms at start). The program writes its answers with :func:`dumps`;
requests travel the other way as marshal data, which only the sandbox ever loads. Only :func:`loads` and
:func:`decode` are a defence: whatever bytes a sandboxed program writes, the trusted side gets builtin values of
those types or a ``ValueError``, never an object with methods of the program's choosing. Integers longer
than :data:`MAX_DIGITS` digits and sets or dicts of more than :data:`MAX_ITEMS` entries are refused, which
bounds the work a hostile message can cost. :func:`encode` accepts subclasses (a ``namedtuple`` is sent as a
tuple, a ``Counter`` as a dict): on the receiving side they are their base types.
"""

from __future__ import annotations

import math
from _json import encode_basestring_ascii

TYPE_CHECKING = False  # not typing's: importing typing would cost the sandbox what json would
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_DIGITS = 4300  # Python's own default limit for int <-> str
MAX_ITEMS = 10_000  # entries of one set or dict (hash collisions make bigger ones costly to build)
FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Opaque:
    """A stand-in for a value that was not plain data: its text for display, equal only to itself, no truth value."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __bool__(self) -> bool:
        raise TypeError(f"{self.text} is not plain data; it has no truth value outside the sandbox")


def encode(value: object, describe: Callable[[object], str] | None = None) -> object:
    """``value`` as JSON-ready data; what is not plain data raises TypeError, or becomes ``{"r": describe(v)}``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else {"f": repr(number)}
    if isinstance(value, list):
        return [encode(item, describe) for item in value]
    if isinstance(value, tuple):
        return {"t": [encode(item, describe) for item in value]}
    if isinstance(value, dict):
        return {"d": [[encode(k, describe), encode(v, describe)] for k, v in value.items()]}
    if isinstance(value, (set, frozenset)):
        return {"fs" if isinstance(value, frozenset) else "s": [encode(item, describe) for item in value]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": bytes(value).hex()}
    if describe is None:
        raise TypeError(f"a {type(value).__name__} is not plain data")
    return {"r": describe(value)}


def dumps(message: object) -> bytes:
    """One line of JSON for ``message`` (already encoded: None, bool, int, finite float, str, list, dict)."""
    parts: list[str] = []
    _write(message, parts.append)
    parts.append("\n")
    return "".join(parts).encode()


def _write(data: object, out: Callable[[str], None]) -> None:
    if data is None or data is True or data is False:
        out("null" if data is None else "true" if data else "false")
    elif type(data) is int:
        out(int.__repr__(data))
    elif type(data) is float and math.isfinite(data):
        out(float.__repr__(data))
    elif type(data) is str:
        out(encode_basestring_ascii(data))
    elif type(data) is list:
        out("[")
        for index, item in enumerate(data):
            out("," if index else "")
            _write(item, out)
        out("]")
    elif type(data) is dict and all(type(key) is str for key in data):
        out("{")
        for index, (key, value) in enumerate(data.items()):
            out(("," if index else "") + encode_basestring_ascii(key) + ":")
            _write(value, out)
        out("}")
    else:
        raise TypeError(f"cannot write a {type(data).__name__} as JSON")


def loads(line: bytes) -> object:
    """The JSON line ``line`` as raw JSON (objects as dicts; pass the parts that carry values to :func:`decode`).

    ValueError if it is not JSON within the limits, or nested deeper than the interpreter can follow.
    """
    import json  # here, not at the top: the sandbox side never parses JSON (see the module docstring)

    try:
        return json.loads(line, parse_constant=_refuse, parse_int=_integer)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def decode(data: object, opaque: bool = False) -> object:
    """Builtin values from encoded data; ValueError on anything else (``{"r": ...}`` needs ``opaque``)."""
    try:
        return _decode(data, opaque)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _decode(data: object, opaque: bool) -> object:
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [_decode(item, opaque) for item in data]
    if type(data) is not dict or len(data) != 1:
        raise ValueError(f"not plain data: {type(data).__name__}")
    ((tag, body),) = data.items()
    if tag in ("t", "s", "fs", "d") and type(body) is not list:
        raise ValueError(f"{tag!r} needs a list")
    if tag == "t":
        return tuple(_decode(item, opaque) for item in body)
    if tag in ("s", "fs", "d") and len(body) > MAX_ITEMS:
        raise ValueError(f"more than {MAX_ITEMS} entries in one {tag!r}")
    try:
        if tag == "s":
            return {_decode(item, opaque) for item in body}
        if tag == "fs":
            return frozenset(_decode(item, opaque) for item in body)
        if tag == "d":
            if not all(type(pair) is list and len(pair) == 2 for pair in body):
                raise ValueError("'d' needs [key, value] pairs")
            return {_decode(k, opaque): _decode(v, opaque) for k, v in body}
    except TypeError as err:  # an unhashable key or set item
        raise ValueError(str(err)) from None
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "f" and body in FLOATS:
        return FLOATS[body]
    if tag == "r" and opaque and type(body) is str:
        return Opaque(body)
    raise ValueError(f"unknown tag {tag!r}")


def _refuse(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"an integer of more than {MAX_DIGITS} digits")
    return int(text)
