"""The JSON Schemas of the squishfile and of the ``NAME.network.toml`` file, for editors.

Each schema is the model's own (pydantic's ``model_json_schema``), made to say what a
TOML file may hold: TOML has no null, so the ``None`` that stands for "not written" is
left out; a name filled in from the file's stem is not required; and the rules that
live in validators (name patterns, sizes like ``"256M"``, exactly one rootfs layer,
exactly one health probe...) are written in as far as JSON Schema can say them.
``docs/squishfile.md`` ("Editors") lists what only ``reconciler validate`` checks.

The schemas are draft-07, which Taplo (Even Better TOML) validates. They are committed
next to this module (:data:`SCHEMA_FILES`) so an editor can point at a file without
running anything; ``tests/test_schema.py`` checks they equal what the models give now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from reconciler.squishfile.model import Squishfile
from reconciler.squishfile.networks import NetworkFile
from runtime.api import NAME_PATTERN

__all__ = ("SCHEMA_FILES", "network_file_schema", "schema_text", "squishfile_schema")

_DRAFT = "http://json-schema.org/draft-07/schema#"
_HERE = Path(__file__).parent
SCHEMA_FILES = {
    "squishfile": _HERE / "squishfile.schema.json",
    "network": _HERE / "network.schema.json",
}
"""The committed schemas, by kind (``reconciler schema KIND`` prints the same text)."""

_PATH_LIKE = r"^(\.\.?(/.*)?|[/~].*)$"
_SIZE = r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]?)([iI]?[bB])?\s*$"
_LOCAL_NETWORK = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
_DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class _TomlSchema(GenerateJsonSchema):
    """pydantic's generator, less the nulls TOML cannot write."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def _model_schema(model: type[BaseModel], description: str) -> dict[str, Any]:
    schema = model.model_json_schema(
        ref_template="#/definitions/{model}", schema_generator=_TomlSchema
    )
    schema = _for_draft_7(schema)
    if "$defs" in schema:
        schema["definitions"] = schema.pop("$defs")
    return {"$schema": _DRAFT, **schema, "description": description}


def _for_draft_7(value: Any) -> Any:
    """``value`` without ``"default": null``, and with each ``$ref`` that has siblings
    (a description) wrapped in ``allOf``: draft-07 ignores the siblings of a ``$ref``,
    and so would an editor's hover text (pydantic writes either form, by version)."""
    if isinstance(value, list):
        return [_for_draft_7(v) for v in value]
    if not isinstance(value, dict):
        return value
    value = {k: _for_draft_7(v) for k, v in value.items() if not (k == "default" and v is None)}
    if "$ref" in value and len(value) > 1:
        value["allOf"] = [{"$ref": value.pop("$ref")}]
    return value


def _size(field: dict[str, Any]) -> dict[str, Any]:
    """An integer field that a validator also lets be written as a size (``"256M"``)."""
    number = {k: field.pop(k) for k in ("type", "minimum", "maximum")}
    field["anyOf"] = [number, {"type": "string", "pattern": _SIZE}]
    return field


def _exactly_one(*keys: str) -> list[dict[str, Any]]:
    return [{"required": [key]} for key in keys]


def _squishfile_rules(schema: dict[str, Any]) -> None:
    """The top-level rules that validators check."""
    top = schema["properties"]
    schema["required"].remove("name")  # the file's stem
    top["name"]["pattern"] = top["hostname"]["pattern"] = NAME_PATTERN
    top["env"]["propertyNames"] = {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}
    array, table = top["networks"]["oneOf"]
    array.update(uniqueItems=True, items={"type": "string", "pattern": _LOCAL_NETWORK})
    table["propertyNames"] = {"pattern": _LOCAL_NETWORK}
    schema["not"] = {"required": ["network", "networks"]}
    schema["if"] = {"properties": {"network": {"const": "none"}}, "required": ["network"]}
    schema["then"] = {"properties": {"ports": {"maxItems": 0}}}
    layers = top["layers"]
    text, _, _ = layers["additionalProperties"]["oneOf"]
    text["pattern"] = rf"{_PATH_LIKE}|^[A-Za-z0-9][A-Za-z0-9._-]{{0,31}}$"
    layers["propertyNames"] = {"pattern": NAME_PATTERN}
    layers["properties"] = {
        "busybox": {"const": "builtin", "description": "the built-in busybox rootfs"},
        "alpine": {
            "type": "string",
            "pattern": r"^(\d{1,8}\.\d{1,8}|edge)$",
            "description": 'an Alpine release rootfs ("3.20" or "edge")',
        },
    }
    layers["oneOf"] = _exactly_one("busybox", "alpine")


def _section_rules(definitions: dict[str, Any]) -> None:
    """The tables' rules that validators check."""
    local = definitions["LocalLayer"]["properties"]
    local["path"]["pattern"] = _PATH_LIKE
    local["target"]["pattern"] = "^/"
    download = definitions["DownloadLayer"]["properties"]
    download["url"]["pattern"] = r"^https?://[^/ ]+[^ ]*$"
    download["sha256"]["pattern"] = r"^[0-9a-fA-F]{64}$"
    definitions["RunSection"]["properties"]["workdir"]["pattern"] = "^/"
    aliases = definitions["NetworkJoin"]["properties"]["aliases"]
    aliases["items"]["pattern"] = _DNS_LABEL
    health = definitions["HealthSection"]
    health["properties"]["command"] = {
        "description": health["properties"]["command"]["description"],
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
        ],
    }
    health["oneOf"] = _exactly_one("tcp", "command")
    resources = definitions["ResourcesSection"]["properties"]
    _size(resources["memory"])
    _size(resources["memory_swap"])
    _size(definitions["LogsSection"]["properties"]["max_size"])
    seccomp = definitions["SecuritySection"]["properties"]["seccomp"]
    seccomp.pop("type")
    seccomp["anyOf"] = [
        {"enum": ["default", "unconfined"]},
        {"type": "string", "pattern": _PATH_LIKE},
    ]
    placement = definitions["PlacementSection"]["properties"]["hosts"]
    placement.update(minItems=1)
    placement["items"]["pattern"] = r"^\S(.*\S)?$"


def squishfile_schema() -> dict[str, Any]:
    """The squishfile's JSON Schema."""
    schema = _model_schema(
        Squishfile,
        "A squishfile: one container, reconciled by squish (docs/squishfile.md).",
    )
    schema["title"] = "squishfile"
    _squishfile_rules(schema)
    _section_rules(schema["definitions"])
    return schema


def network_file_schema() -> dict[str, Any]:
    """The JSON Schema of a ``NAME.network.toml`` file."""
    schema = _model_schema(
        NetworkFile,
        "A NAME.network.toml file: the settings of a folder's network NAME (docs/squishfile.md).",
    )
    schema["title"] = "squish network file"
    schema["properties"]["subnet"]["pattern"] = (
        r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}/(1[6-9]|2[0-9])$"
    )
    return schema


def schema_text(kind: str) -> str:
    """The schema of ``kind`` (a key of :data:`SCHEMA_FILES`) as its file holds it."""
    schema = squishfile_schema() if kind == "squishfile" else network_file_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
