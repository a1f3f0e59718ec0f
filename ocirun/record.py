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
    _defaults: dict[str, Any] = {}

    def __init_subclass__(cls) -> None:
        own = tuple(cls.__dict__.get("__annotations__", {}))
        cls._fields = cls._fields + tuple(f for f in own if not f.startswith("_"))
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
