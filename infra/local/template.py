"""Read infra/template.yaml and resolve what the local stack needs from it.

The template stays the only list of tables, functions and state machines: this module turns
its declarations into concrete values (physical names, environments, definitions) for a given
set of local physical ids. It understands the intrinsic functions the template uses (Ref,
Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Select) and SAM's Globals.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "infra" / "template.yaml"

# The logical id Chalice gives the API function in the template it generates.
API_HANDLER = "APIHandler"


def _plain(node: Any) -> Any:
    """cfn-lint's decoder returns node subclasses that carry line marks; make them plain."""
    return json.loads(json.dumps(node))


@lru_cache(maxsize=4)
def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    return _plain(cfn_yaml.load(str(path)))


def resources_of_type(template: Mapping[str, Any], *types: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource for logical_id, resource in template["Resources"].items() if resource.get("Type") in types
    }


def parameter_defaults(template: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(spec["Default"]) for name, spec in template.get("Parameters", {}).items() if "Default" in spec}


_SUB_PATTERN = re.compile(r"\$\{([^}!][^}]*)\}")


@dataclass
class Resolver:
    """Evaluates intrinsic functions against local values.

    ``refs`` maps a logical id or parameter name to what ``Ref`` returns; ``attributes`` maps
    ``"Logical.Attribute"`` to what ``Fn::GetAtt`` returns.
    """

    refs: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        if name not in self.refs:
            raise KeyError(f"template refers to {name!r}, which the local stack has not resolved")
        return self.refs[name]

    def get_att(self, logical_id: str, attribute: str) -> str:
        key = f"{logical_id}.{attribute}"
        if key not in self.attributes:
            raise KeyError(f"template asks for {key!r}, which the local stack has not resolved")
        return self.attributes[key]

    def _sub_name(self, name: str, variables: Mapping[str, Any]) -> str:
        if name in variables:
            return str(self.resolve(variables[name]))
        if "." in name:
            logical_id, attribute = name.split(".", 1)
            return self.get_att(logical_id, attribute)
        return self.ref(name)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            handler: Callable[[Any], Any] | None = {
                "Ref": lambda a: self.ref(a),
                "Fn::GetAtt": lambda a: self.get_att(*(a if isinstance(a, list) else a.split(".", 1))),
                "Fn::Sub": self._sub,
                "Fn::Join": lambda a: a[0].join(str(self.resolve(v)) for v in a[1]),
                "Fn::Select": lambda a: self.resolve(a[1])[int(a[0])],
            }.get(key)
            if handler is not None:
                return handler(arg)
        return {key: self.resolve(item) for key, item in value.items()}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        return _SUB_PATTERN.sub(lambda m: self._sub_name(m.group(1), variables), text)


def function_properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """A function's properties with SAM's Globals merged in (maps merge, lists append)."""
    merged = copy.deepcopy(template.get("Globals", {}).get("Function", {}))
    own = template["Resources"].get(logical_id, {}).get("Properties", {})
    for key, value in own.items():
        if key == "Environment":
            variables = merged.setdefault("Environment", {}).setdefault("Variables", {})
            variables.update(value.get("Variables", {}))
        elif key == "Layers":
            merged["Layers"] = merged.get("Layers", []) + list(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def fill_substitutions(definition_text: str, substitutions: Mapping[str, Any]) -> str:
    """Apply DefinitionSubstitutions the way CloudFormation does: textually, ``${Name}``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in substitutions:
            raise KeyError(f"state machine definition uses ${{{name}}}, which has no substitution")
        return str(substitutions[name])

    return _SUB_PATTERN.sub(replace, definition_text)
