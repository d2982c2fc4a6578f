"""The JSON Schemas of the published events' ``detail``, generated from their pydantic models.

Each detail-type's schema is committed as ``events/schemas/<DetailType>.v<version>.json``: what
consumers were promised. A model may change within its version only compatibly (a new optional
field, new descriptions); a breaking change (a field removed, renamed or retyped, or a field newly
required) needs a new ``version`` (``Literal[2]``), whose schema is a new file beside the old one.
``tests/unit/test_event_schemas.py`` holds the models to that.

    python -m infra.event_schemas          # (re)write the schema of every current version
    python -m infra.event_schemas --check  # exit 1 if a committed schema is missing or out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from shop.models.events import PUBLISHED, EventDetail

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "events" / "schemas"
# Words of a schema that describe without constraining: changing them breaks nobody.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})


def detail_version(model: type[EventDetail]) -> int:
    (version,) = get_args(model.model_fields["version"].annotation)
    return int(version)


def schema_path(detail_type: str, version: int) -> Path:
    return SCHEMA_DIR / f"{detail_type}.v{version}.json"


def generate(detail_type: str) -> dict[str, Any]:
    source, model = PUBLISHED[detail_type]
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = detail_type
    schema["description"] = f"The detail of {detail_type} events (source {source})."
    return schema


def render(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _resolved(node: Any, definitions: Mapping[str, Any]) -> Any:
    """``node`` with every local ``$ref`` replaced by its definition and annotations dropped."""
    if isinstance(node, list):
        return [_resolved(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _resolved(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    return {key: _resolved(value, definitions) for key, value in node.items() if key not in _ANNOTATIONS}


def _compare(old: Any, new: Any, path: str, found: list[str]) -> None:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        if old != new:
            found.append(f"{path or 'detail'}: changed")
        return
    if old.get("type") == "object" and new.get("type") == "object":
        old_properties, new_properties = old.get("properties", {}), new.get("properties", {})
        for name, old_property in old_properties.items():
            where = f"{path}.{name}" if path else name
            if name not in new_properties:
                found.append(f"{where}: removed or renamed")
            else:
                _compare(old_property, new_properties[name], where, found)
        for name in sorted(set(new.get("required", [])) - set(old.get("required", []))):
            found.append(f"{path + '.' if path else ''}{name}: newly required")
        rest_old = {k: v for k, v in old.items() if k not in {"properties", "required"}}
        rest_new = {k: v for k, v in new.items() if k not in {"properties", "required"}}
        if rest_old != rest_new:
            found.append(f"{path or 'detail'}: object constraints changed")
        return
    if old != new:
        found.append(f"{path or 'detail'}: type or constraints changed")


def breaking_changes(committed: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What a consumer written against ``committed`` could trip over in ``current`` (empty: compatible)."""
    old = _resolved(committed, committed.get("$defs", {}))
    new = _resolved(current, current.get("$defs", {}))
    old.pop("$defs", None)
    new.pop("$defs", None)
    found: list[str] = []
    _compare(old, new, "", found)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for detail_type, (_, model) in PUBLISHED.items():
        path = schema_path(detail_type, detail_version(model))
        text = render(generate(detail_type))
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(SCHEMA_DIR.parents[1])}")
    if stale:
        print(f"out of date (python -m infra.event_schemas): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
