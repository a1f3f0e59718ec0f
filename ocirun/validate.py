"""Validate a config.json against the OCI runtime-spec JSON schemas and the strict parser.

The schemas (``schemas/`` at the top of the source tree, shipped as ``ocirun/schemas``
package data) are resolved through a local ``referencing`` registry: nothing is ever
fetched.  ``jsonschema`` costs ~80 ms to import, so it is imported inside the functions
that need it; ``import ocirun.validate`` stays cheap and the create path never pays.

Every error string starts with the JSON path of the offending value, written the way
``ocirun.spec`` writes it (``linux.namespaces[2].type``, ``process.user.uid``), then
``": "`` and a message.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CONFIG_SCHEMA = "config-schema.json"
STATE_SCHEMA = "state-schema.json"
FEATURES_SCHEMA = "features-schema.json"
ROOT_PATH = "(root)"  # how an error about the whole document is labelled


def schema_dir() -> Path:
    """The directory holding the OCI JSON schemas.

    Installed: the ``ocirun/schemas`` package data.  Source checkout: the same path is a
    symlink to the top-level ``schemas/``; the top-level directory is also tried directly
    in case the symlink was lost (e.g. a checkout without symlink support).
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parent / "schemas"):
        if (candidate / CONFIG_SCHEMA).is_file():
            return candidate
    raise FileNotFoundError(f"OCI JSON schemas not found (looked in {here / 'schemas'} "
                            f"and {here.parent / 'schemas'})")


def format_path(parts: Iterable[str | int]) -> str:
    """Join JSON path components the way ocirun.spec does: a.b[3].c"""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


@functools.lru_cache(maxsize=None)
def _validator(schema_name: str) -> Any:
    import jsonschema.validators
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    directory = schema_dir()
    resources = []
    for path in sorted(directory.glob("*.json")):
        with open(path, encoding="utf-8") as f:
            contents = json.load(f)
        # The files carry no "id": each is known by its file name, which is exactly how
        # their relative $refs ("defs.json#/definitions/uint32") name one another.
        resources.append((path.name, Resource.from_contents(
            contents, default_specification=DRAFT4)))
    registry = Registry().with_resources(resources)  # no retrieve hook: never fetches
    schema = registry.contents(schema_name)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    return cls(schema, registry=registry)


def _leaf_errors(error: Any) -> list[Any]:
    """Replace an anyOf/oneOf failure by the errors of its most relevant branch."""
    if not error.context:
        return [error]
    from jsonschema.exceptions import relevance

    # Group the sub-errors by the branch (schema index) that produced them and keep the
    # branch whose best error goes deepest: that is the one the author most likely meant.
    branches: dict[Any, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0] if sub.schema_path else None, []).append(sub)
    best = max(branches.values(), key=lambda errs: max(map(relevance, errs)))
    out: list[Any] = []
    for sub in best:
        out.extend(_leaf_errors(sub))
    return out


def _describe(error: Any) -> tuple[str, str]:
    parts = list(error.absolute_path)
    if error.validator == "required":
        # jsonschema reports a missing property at its parent; ocirun.spec names the
        # property itself ("process.cwd: is required").
        missing = next((p for p in error.validator_value
                        if isinstance(error.instance, dict) and p not in error.instance
                        and repr(p) in error.message), None)
        if missing is not None:
            return format_path(parts + [missing]), "is required"
    return format_path(parts) or ROOT_PATH, error.message


def validate_document(data: object, schema_name: str = CONFIG_SCHEMA) -> list[str]:
    """Check `data` against one of the schemas; return "path: message" strings."""
    validator = _validator(schema_name)
    found: list[tuple[str, str]] = []
    for error in validator.iter_errors(data):
        for leaf in _leaf_errors(error):
            item = _describe(leaf)
            if item not in found:
                found.append(item)
    found.sort(key=lambda item: item[0])
    return [f"{path}: {message}" for path, message in found]


def validate_config(data: object) -> list[str]:
    """Check a decoded config.json against the OCI config schema."""
    return validate_document(data, CONFIG_SCHEMA)


def validate_state(data: object) -> list[str]:
    """Check a decoded `state` document against the OCI state schema."""
    return validate_document(data, STATE_SCHEMA)


def _overlaps(a: str, b: str) -> bool:
    """True if one JSON path is the other or lies under it."""
    if a == ROOT_PATH or b == ROOT_PATH:
        return True
    short, long_ = sorted((a, b), key=len)
    return long_ == short or long_.startswith((short + ".", short + "["))


def validate_bundle(bundle: str) -> list[str]:
    """Every problem found in <bundle>/config.json: the schema's, then the parser's.

    The parser (ocirun.spec) stops at its first error and also checks what the schema
    cannot (absolute paths, duplicate namespaces, cross-field rules...).  Its error is
    left out when a schema error already points at the same value or one enclosing it.
    """
    from ocirun.errors import ConfigError, OciError
    from ocirun.spec import load_spec

    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        return [f"bundle {bundle}: config.json: {(e.strerror or str(e)).lower()}"]
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return [f"config.json: invalid JSON: {e}"]

    problems = validate_config(data)
    try:
        load_spec(bundle)
    except ConfigError as e:
        schema_paths = [p.split(": ", 1)[0] for p in problems]
        parser_path = e.path or ROOT_PATH
        if not any(_overlaps(parser_path, p) for p in schema_paths):
            problems.append(f"{parser_path}: {e.problem}")
    except OciError as e:
        problems.append(e.message)
    return problems
