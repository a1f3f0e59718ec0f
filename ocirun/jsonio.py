"""JSON for the commands on the hot path, without importing the `json` package.

`import json` costs ~7 ms here (it pulls in `re`, `enum`, `collections`, `functools`),
more than the work `state` or `start` do.  The C accelerator `_json` that `json` itself
uses has the same scanner and encoder and imports nothing, so this module drives it
directly.  Anything the fast path does not handle, and every error, is passed to the
real `json`, so messages (line and column of a syntax error) stay exactly json's.
"""

from __future__ import annotations

from ocirun.compat import json_c as _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WS = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _ScanContext:
    """The attributes `_json.make_scanner` reads, with json.loads's defaults."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan: Any = None
_encode: Any = None
_encode_compact: Any = None


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def loads(data: str | bytes | bytearray) -> Any:
    global _scan
    if _scan is None:
        _scan = _json.make_scanner(_ScanContext())
    try:
        text = data if isinstance(data, str) else bytes(data).decode()
        start = len(text) - len(text.lstrip(_WS))
        value, end = _scan(text, start)
        if end != len(text.rstrip(_WS)):
            raise ValueError("extra data")
        return value
    except (ValueError, StopIteration, SystemError):
        # The scanner raises json.decoder's error class only once json.decoder is
        # imported (SystemError before): the real json says what is wrong, and where.
        import json
        return json.loads(data)


def dumps(obj: Any, indent: int | None = None, compact: bool = False) -> str:
    """json.dumps(obj) (separators ", " and ": "), json.dumps(obj, indent=N), or with
    `compact` the separators "," and ":" (Go's encoding/json, which runc prints)."""
    global _encode, _encode_compact
    if _encode is None:
        _encode = _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii,
                                     None, ": ", ", ", False, False, True)
    try:
        if compact:
            if _encode_compact is None:
                _encode_compact = _json.make_encoder(
                    None, _unserializable, _json.encode_basestring_ascii, None, ":", ",",
                    False, False, True)
            return "".join(_encode_compact(obj, 0))
        if indent is None:
            return "".join(_encode(obj, 0))
        return "".join(_pretty(obj, " " * indent, "\n"))
    except (TypeError, ValueError):
        import json  # the slow path: non-string keys, or json's own error message
        return json.dumps(obj, indent=indent,
                          separators=(",", ":") if compact else None)


def _pretty(obj: Any, step: str, newline: str) -> Any:
    """json's indent layout: one member a line, "," at line ends, empty {} and []."""
    if isinstance(obj, dict) and obj:
        inner = newline + step
        yield "{"
        for i, (key, value) in enumerate(obj.items()):
            if not isinstance(key, str):
                raise TypeError("not a string key")
            yield ("," if i else "") + inner + _json.encode_basestring_ascii(key) + ": "
            yield from _pretty(value, step, inner)
        yield newline + "}"
    elif isinstance(obj, (list, tuple)) and obj:
        inner = newline + step
        yield "["
        for i, value in enumerate(obj):
            yield ("," if i else "") + inner
            yield from _pretty(value, step, inner)
        yield newline + "]"
    else:
        yield "".join(_encode(obj, 0))
