"""What the state machines send to each saga step and read of its answer, kept for executions still running.

A deploy updates the functions at once, but an execution keeps the definition it started with: a
STANDARD saga (or its redrive, or a refund) started before the deploy goes on calling the new code
with the payloads of the old definition, and reads the old fields of its answers. So the payloads
every definition has sent since the file was started are committed in ``statemachines/step_payloads.json``
(generated from the ASL; a shape is added when the ASL changes and never dropped by the generator), and the tests
hold the functions to them: every field a step's input model requires is in every payload kept for
it, and every field an answer is read for is always in the step's output model.

    python -m infra.step_contracts          # add the current definitions' shapes to the file
    python -m infra.step_contracts --check  # exit 1 if a current shape is not in the file

A shape may be dropped by hand once no execution that sends it can still be running (a STANDARD
execution runs for up to a year). Keys are what a payload names; the types of their values are the
models' to accept (a changed type is a breaking change this check does not see).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from infra.local.template import REPO_ROOT, function_properties, load_template, resources_of_type

PAYLOADS_PATH = REPO_ROOT / "statemachines" / "step_payloads.json"
_INVOKE = "arn:aws:states:::lambda:invoke"
# A nested payload's shape: each key it names, with the keys under it (None: a value, or a path
# whose keys the definition does not spell out).
Shape = dict[str, Any]


@dataclass(frozen=True)
class StepCall:
    """One Task state's call of a saga step: what it sends and which fields of the answer it reads."""

    state_machine: str
    state: str
    function: str  # the template's logical id
    payload: Shape
    reads: tuple[str, ...]


def _shape(payload: Mapping[str, Any]) -> Shape:
    return {
        key.removesuffix(".$"): _shape(value) if isinstance(value, Mapping) else None for key, value in payload.items()
    }


def _states(states: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, state in states.items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from _states(branch["States"])
        for nested in ("Iterator", "ItemProcessor"):
            if nested in state:
                yield from _states(state[nested]["States"])


def _reads(name: str, state: Mapping[str, Any]) -> tuple[str, ...]:
    """The answer's fields a ResultSelector picks (``$.Payload.<field>``); none when it keeps no result."""
    if state.get("ResultPath", "$") is not None and "ResultSelector" not in state:
        # Its whole answer would be kept, and any field of it read later: not a contract this can keep.
        raise ValueError(f"Task {name} keeps its answer without a ResultSelector naming the fields it reads")
    selector = state.get("ResultSelector", {})
    return tuple(
        sorted(
            path.removeprefix("$.Payload.").split(".", 1)[0]
            for key, path in selector.items()
            if key.endswith(".$") and isinstance(path, str) and path.startswith("$.Payload.")
        )
    )


def step_calls() -> list[StepCall]:
    """Every saga step call of the template's state machines, from their ASL as committed."""
    template = load_template()
    calls = []
    for machine_id, machine in sorted(resources_of_type(template, "AWS::Serverless::StateMachine").items()):
        properties = machine["Properties"]
        # ``${Name}`` -> the function's logical id, from the ``!GetAtt <Function>.Arn`` substitutions.
        functions = {
            name: value["Fn::GetAtt"][0] if isinstance(value["Fn::GetAtt"], list) else value["Fn::GetAtt"].split(".")[0]
            for name, value in properties.get("DefinitionSubstitutions", {}).items()
            if isinstance(value, Mapping) and "Fn::GetAtt" in value
        }
        # Parsed with the substitutions left as text: only the Task states' payloads are read.
        text = (REPO_ROOT / properties["DefinitionUri"]).read_text()
        definition = json.loads(_placeholders(text))
        for name, state in _states(definition["States"]):
            parameters = state.get("Parameters", {})
            if state.get("Type") != "Task" or state.get("Resource") != _INVOKE:
                continue
            target = str(parameters["FunctionName"]).removeprefix("${").removesuffix("}")
            calls.append(
                StepCall(machine_id, name, functions[target], _shape(parameters["Payload"]), _reads(name, state))
            )
    return calls


def _placeholders(text: str) -> str:
    """The ASL text as JSON: a ``${Name}`` outside quotes (a number's substitution) becomes 0."""
    out, quoted, index = [], False, 0
    while index < len(text):
        char = text[index]
        if char == '"' and (index == 0 or text[index - 1] != "\\"):
            quoted = not quoted
        if not quoted and text.startswith("${", index):
            index = text.index("}", index) + 1
            out.append("0")
            continue
        out.append(char)
        index += 1
    return "".join(out)


# ---------------------------------------------------------------------------- the functions' models
@dataclass(frozen=True)
class StepModels:
    input: type[BaseModel]
    output: type[BaseModel] | None  # None: the handler's answer is not one model's dump


@cache
def step_models(function: str) -> StepModels:
    """The handler's input model (its ``parse_event(Model, event)``) and output model (the return type
    of the domain function it answers with), by the thin-handler convention of ``functions/``."""
    properties = function_properties(load_template(), function)
    module_file, handler_name = str(properties["Handler"]).rsplit(".", 1)
    path = REPO_ROOT / properties["CodeUri"] / f"{module_file}.py"
    module = _load(function, path)
    handler = next(
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == handler_name
    )
    parse = next(
        (
            node
            for node in ast.walk(handler)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "parse_event"
        ),
        None,
    )
    if parse is None:
        raise ValueError(f"{path}: {handler_name} does not parse its event with parse_event(Model, event)")
    input_model = _resolve(module, parse.args[0])
    output_model = None
    for node in ast.walk(handler):
        if isinstance(node, ast.Call) and any(argument is parse for argument in node.args):
            hints = typing.get_type_hints(_resolve(module, node.func))
            returned = hints.get("return")
            if isinstance(returned, type) and issubclass(returned, BaseModel):
                output_model = returned
    return StepModels(input_model, output_model)


def _load(function: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"step_contracts_{function}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resolve(module: ModuleType, node: ast.expr) -> Any:
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(module, node.value), node.attr)
    raise ValueError(f"{module.__name__}: {ast.unparse(node)} is not a name the handler imports")


def missing_fields(model: type[BaseModel], shape: Shape, prefix: str = "") -> list[str]:
    """The fields ``model`` requires that a payload of ``shape`` does not send, nested ones included."""
    missing = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in shape:
            if field.is_required():
                missing.append(f"{prefix}{key}")
            continue
        nested = field.annotation
        if isinstance(shape[key], dict) and isinstance(nested, type) and issubclass(nested, BaseModel):
            missing += missing_fields(nested, shape[key], f"{prefix}{key}.")
    return missing


def unanswered_reads(model: type[BaseModel] | None, reads: tuple[str, ...]) -> list[str]:
    """The fields a definition reads of an answer that the step's output model may not hold."""
    fields = {} if model is None else model.model_fields
    # A defaulted field is in every dump (``model_dump`` writes defaults): only absence breaks a read.
    return [read for read in reads if read not in fields]


# ---------------------------------------------------------------------------- the committed file
def kept() -> dict[str, list[dict[str, Any]]]:
    """The file: function logical id -> every call shape kept for it (payload and reads)."""
    if not PAYLOADS_PATH.exists():
        return {}
    loaded: dict[str, list[dict[str, Any]]] = json.loads(PAYLOADS_PATH.read_text())
    return loaded


def _entry(call: StepCall) -> dict[str, Any]:
    return {"payload": call.payload, "reads": list(call.reads)}


def with_current(existing: Mapping[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """``existing`` with every current call's shape added where it is not kept yet."""
    merged = {function: list(entries) for function, entries in existing.items()}
    for call in step_calls():
        entries = merged.setdefault(call.function, [])
        if _entry(call) not in entries:
            entries.append(_entry(call))
    return dict(sorted(merged.items()))


def render(payloads: Mapping[str, Any]) -> str:
    return json.dumps(payloads, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a current shape is not kept")
    args = parser.parse_args(argv)
    existing = kept()
    merged = with_current(existing)
    if args.check:
        if merged != existing:
            print(
                f"{PAYLOADS_PATH.relative_to(REPO_ROOT)} lacks a current call shape: run make schemas", file=sys.stderr
            )
            return 1
        return 0
    PAYLOADS_PATH.write_text(render(merged))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
