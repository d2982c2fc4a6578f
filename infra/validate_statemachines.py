"""Validate every state machine the template declares, with its substitutions filled.

The ASL files use CloudFormation's DefinitionSubstitutions (`${Name}`, numbers unquoted), so they
are valid JSON only once filled. For each AWS::Serverless::StateMachine this fills the
substitutions as a deployment would (function ARNs, parameter defaults), then checks:

1. the result parses as JSON;
2. cfn-lint's Amazon States Language schema (rule E3601), on the definition inlined into an
   AWS::StepFunctions::StateMachine;
3. the ASL interpreter the local stack runs (moto's parser) accepts it;
4. every file in statemachines/ is used by the template (no orphan definitions).

    python -m infra.validate_statemachines        # exit 1 on any problem
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cfnlint.api import lint_all
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

from infra.local.deploy import FUNCTION, LOCAL_ACCOUNT, STATE_MACHINE
from infra.local.template import (
    REPO_ROOT,
    Resolver,
    fill_substitutions,
    load_template,
    parameter_defaults,
    resources_of_type,
)

REGION = "us-east-1"


def _placeholder_resolver(template: dict[str, Any]) -> Resolver:
    resolver = Resolver()
    resolver.refs.update(parameter_defaults(template))
    resolver.refs.update({"AWS::Region": REGION, "AWS::AccountId": LOCAL_ACCOUNT, "AWS::StackName": "validate"})
    for logical_id in template["Resources"]:
        resolver.refs.setdefault(logical_id, logical_id)
    for logical_id in resources_of_type(template, FUNCTION):
        resolver.attributes[f"{logical_id}.Arn"] = f"arn:aws:lambda:{REGION}:{LOCAL_ACCOUNT}:function:{logical_id}"
    for logical_id in resources_of_type(template, STATE_MACHINE):
        resolver.attributes[f"{logical_id}.Arn"] = f"arn:aws:states:{REGION}:{LOCAL_ACCOUNT}:stateMachine:{logical_id}"
    return resolver


def dangling_transitions(machine: dict[str, Any], where: str = "") -> list[str]:
    """Transitions to states that do not exist (the schema cannot see these), recursively."""
    states = machine.get("States", {})
    problems = []
    if machine.get("StartAt") not in states:
        problems.append(f"{where}StartAt names a missing state {machine.get('StartAt')!r}")
    for name, state in states.items():
        targets = [state.get("Next"), state.get("Default")]
        targets += [choice.get("Next") for choice in state.get("Choices", [])]
        targets += [catcher.get("Next") for catcher in state.get("Catch", [])]
        problems += [f"{where}{name} -> missing state {t!r}" for t in targets if t and t not in states]
        for index, branch in enumerate(state.get("Branches", [])):
            problems += dangling_transitions(branch, f"{where}{name}.Branches[{index}].")
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                problems += dangling_transitions(state[key], f"{where}{name}.{key}.")
    return problems


def validate() -> list[str]:
    template = load_template()
    resolver = _placeholder_resolver(template)
    problems: list[str] = []
    used = set()
    for logical_id, resource in resources_of_type(template, STATE_MACHINE).items():
        properties = resource["Properties"]
        path = REPO_ROOT / properties["DefinitionUri"]
        used.add(path.resolve())
        try:
            text = fill_substitutions(path.read_text(), resolver.resolve(properties.get("DefinitionSubstitutions", {})))
            definition = json.loads(text)
        except (KeyError, ValueError) as error:
            problems.append(f"{logical_id} ({path.name}): {error}")
            continue
        inline = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Resources": {
                logical_id: {
                    "Type": "AWS::StepFunctions::StateMachine",
                    "Properties": {"RoleArn": "arn:aws:iam::123456789012:role/validate", "Definition": definition},
                }
            },
        }
        problems += [
            f"{logical_id} ({path.name}): {match.rule.id} {match.message}"
            for match in lint_all(json.dumps(inline))
            if match.rule.id[0] in "EW"  # informational rules say nothing about the ASL
        ]
        problems += [f"{logical_id} ({path.name}): {problem}" for problem in dangling_transitions(definition)]
        try:
            AmazonStateLanguageParser.parse(text)
        except Exception as error:  # noqa: BLE001 - any parser failure is a validation finding
            problems.append(f"{logical_id} ({path.name}): rejected by the ASL interpreter: {error}")
    for path in sorted((REPO_ROOT / "statemachines").glob("*.asl.json")):
        if path.resolve() not in used:
            problems.append(f"{path.name}: not used by any AWS::Serverless::StateMachine in infra/template.yaml")
    return problems


def main() -> int:
    problems = validate()
    for problem in problems:
        print(problem, file=sys.stderr)
    machines = len(resources_of_type(load_template(), STATE_MACHINE))
    print(f"state machines: {machines} checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
