"""Frozen, typed records: what the runtime uses of frozen dataclasses, minus the cost.

`@dataclass` generates and exec()s several methods per class and imports `inspect`:
about 1 ms per class at import, ~40 ms for the config model, paid by every `ocirun`
call.  A Record subclass declares its fields as annotations (with defaults as class
attributes) and gets a keyword/positional __init__, immutability, equality, hashing
and repr from this one base class, with no code generated.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_MISSING = object()


class Record:
    _fields: tuple[str, ...] = ()
    _types: dict[str, str] = {}  # field -> its annotation (a string: `from __future__`)
    _defaults: dict[str, Any] = {}

    def __init_subclass__(cls) -> None:
        annotations = cls.__dict__.get("__annotations__", {})
        own = tuple(f for f in annotations if not f.startswith("_"))
        cls._fields = cls._fields + own
        cls._types = {**cls._types, **{f: annotations[f] for f in own}}
        defaults = dict(cls._defaults)
        for name in own:
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
        cls._defaults = defaults

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields")
        values = dict(zip(fields, args))
        for key, value in kwargs.items():
            if key not in fields or key in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated {key!r}")
            values[key] = value
        for name in fields:
            if name not in values:
                default = self._defaults.get(name, _MISSING)
                if default is _MISSING:
                    raise TypeError(f"{type(self).__name__}: missing {name!r}")
                # a fresh container per instance, as default_factory would give
                values[name] = default.copy() if isinstance(default, (dict, list)) else default
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__[f] for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={self.__dict__[f]!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"

    def replace(self, **changes: Any) -> Record:
        values = {f: self.__dict__[f] for f in self._fields}
        values.update(changes)
        return type(self)(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f: self.__dict__[f] for f in self._fields}


# ----------------------------------------------------------------- as JSON
# A record is stored as a JSON object of its fields (those equal to their default left
# out) and read back by its annotations: nested records, `X | None`, tuple[X, ...],
# tuple[A, B], list[X], set[X], dict[str, X].  Readers are built once per class, on
# first use.  The data is the runtime's own (its state directory): a reader checks
# shapes only as far as a wrong one raises TypeError, KeyError or ValueError.
_readers: dict[type, Any] = {}


def dump(value: Any) -> Any:
    """`value` as JSON-able data (records as objects of their non-default fields)."""
    if isinstance(value, Record):
        defaults = value._defaults
        out = {}
        for name in value._fields:
            v = value.__dict__[name]
            if name not in defaults or v != defaults[name]:
                out[name] = dump(v)
        return out
    if isinstance(value, (tuple, list)):
        return [dump(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(dump(v) for v in value)
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


def load(cls: type, data: Any) -> Any:
    """The record of class `cls` that `dump` wrote as `data`."""
    return _reader(cls)(data)


def _reader(cls: type) -> Any:
    reader = _readers.get(cls)
    if reader is None:
        import sys
        names = vars(sys.modules[cls.__module__])
        fields = [(f, _converter(cls._types[f], names)) for f in cls._fields]  # type: ignore[attr-defined]

        def reader(data: Any) -> Any:
            if not isinstance(data, dict):
                raise TypeError(f"{cls.__name__}: not an object")
            return cls(**{f: conv(data[f]) for f, conv in fields if f in data})
        _readers[cls] = reader
    return reader


def _top_level(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _converter(annotation: str, names: dict[str, Any]) -> Any:
    union = _top_level(annotation, "|")
    if len(union) > 1:
        (inner,) = [p for p in union if p != "None"]
        conv = _converter(inner, names)
        return lambda v: None if v is None else conv(v)
    if annotation in ("int", "str", "bool", "float", "Any"):
        return lambda v: v
    if "[" not in annotation:
        return lambda v, cls=names[annotation]: _reader(cls)(v)
    head, inner = annotation.split("[", 1)
    args = _top_level(inner[:-1], ",")
    if head == "tuple" and args[-1] == "...":
        item = _converter(args[0], names)
        return lambda v: tuple(item(i) for i in v)
    if head == "tuple":
        items = [_converter(a, names) for a in args]
        return lambda v: tuple(conv(i) for conv, i in zip(items, v, strict=True))
    if head in ("list", "set"):
        item = _converter(args[0], names)
        kind = list if head == "list" else set
        return lambda v: kind(item(i) for i in v)
    if head == "dict":
        item = _converter(args[1], names)
        return lambda v: {str(k): item(i) for k, i in v.items()}
    raise TypeError(f"no JSON reader for {annotation!r}")
