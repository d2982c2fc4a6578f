"""Which states, Catch edges and Retry rules of the two saga state machines the test suite takes.

After every test that deployed the stack (fixture ``local_aws``; the HTTP tier's stack at the end
of the session) the execution history of every execution of both machines is read back from the
emulator (``get_execution_history``, every page) and folded into this process's record:

- a state is *entered* when the history has its ``…StateEntered`` event;
- a *Catch edge* (state, catcher index) is taken when a failure event of the state (``TaskFailed``,
  ``TaskTimedOut``, ``LambdaFunctionFailed``… with its ``error``) is followed by entering a state:
  the error is attributed to the first catcher whose ``ErrorEquals`` matches it (``States.ALL``
  matches any error, as on AWS), and counted when that catcher's ``Next`` is the state entered;
- a *Retry rule* (state, retrier index) is used when a failure event of a task is followed by the
  same task being scheduled again: the error is attributed to the first matching retrier.

The universe is every state and every (state, index) of ``Catch`` and ``Retry`` in the definitions
as deployed (infra/template.yaml's substitutions filled). Under pytest-xdist each worker writes its
record to a directory the controller created; the controller merges them, prints one line per
machine and, when the run took the whole service tier, fails the session below 100%.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from infra.local.template import REPO_ROOT, Resolver, fill_substitutions, load_template, parameter_defaults

MACHINES = {"CheckoutStateMachine": "checkout", "RefundStateMachine": "refund"}
SERVICE_TIER = REPO_ROOT / "tests" / "service"
_PARTS_DIR_KEY = "statemachine_coverage_dir"

Edge = tuple[str, int]


# ---------------------------------------------------------------------------- the definitions
@lru_cache(maxsize=1)
def definitions() -> dict[str, dict[str, Any]]:
    """Both machines' definitions as deployed: the ASL files with the template's substitutions filled."""
    template = load_template()
    resolver = Resolver(refs=parameter_defaults(template))
    for name in template["Resources"]:
        resolver.attributes[f"{name}.Arn"] = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
    filled = {}
    for logical_id in MACHINES:
        properties = template["Resources"][logical_id]["Properties"]
        substitutions = resolver.resolve(properties["DefinitionSubstitutions"])
        text = (REPO_ROOT / properties["DefinitionUri"]).read_text()
        filled[logical_id] = json.loads(fill_substitutions(text, substitutions))
    return filled


def error_matches(error_equals: Iterable[str], error: str) -> bool:
    """ASL's matching of an error name against one rule's ``ErrorEquals``."""
    for name in error_equals:
        if name == error or name == "States.ALL":
            return True
        if name == "States.TaskFailed" and error != "States.Timeout":
            return True
    return False


def first_match(rules: list[dict[str, Any]], error: str) -> int | None:
    return next((index for index, rule in enumerate(rules) if error_matches(rule["ErrorEquals"], error)), None)


@dataclass
class Taken:
    """What one machine's executions took (or, as a universe, what they could take)."""

    states: set[str] = field(default_factory=set)
    catches: set[Edge] = field(default_factory=set)
    retries: set[Edge] = field(default_factory=set)

    def update(self, other: Taken) -> None:
        self.states |= other.states
        self.catches |= other.catches
        self.retries |= other.retries

    def to_json(self) -> dict[str, Any]:
        return {
            "states": sorted(self.states),
            "catches": sorted([state, index] for state, index in self.catches),
            "retries": sorted([state, index] for state, index in self.retries),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Taken:
        return cls(
            states=set(data["states"]),
            catches={(state, index) for state, index in data["catches"]},
            retries={(state, index) for state, index in data["retries"]},
        )


def universe(definition: Mapping[str, Any]) -> Taken:
    everything = Taken()
    for name, state in definition["States"].items():
        everything.states.add(name)
        everything.catches |= {(name, index) for index in range(len(state.get("Catch", [])))}
        everything.retries |= {(name, index) for index in range(len(state.get("Retry", [])))}
    return everything


# ---------------------------------------------------------------------------- reading histories
def _details(event: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((value for key, value in event.items() if key.endswith("EventDetails")), {})


def _is_state_failure(event_type: str) -> bool:
    return event_type.endswith(("Failed", "TimedOut")) and not event_type.startswith("Execution")


def edges_of(definition: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> Taken:
    """The states, Catch edges and Retry rules one execution's history shows."""
    states = definition["States"]
    taken = Taken()
    current: str | None = None
    failure: tuple[str, str] | None = None  # (state, error) of a failure not yet followed up
    for event in events:
        event_type = str(event["type"])
        if event_type.endswith("StateEntered"):
            entered = str(event["stateEnteredEventDetails"]["name"])
            taken.states.add(entered)
            if failure is not None:
                failed, error = failure
                catchers = states[failed].get("Catch", [])
                index = first_match(catchers, error)
                if index is not None and catchers[index]["Next"] == entered:
                    taken.catches.add((failed, index))
            failure, current = None, entered
        elif _is_state_failure(event_type):
            name = _details(event).get("error")
            failure = (current, str(name)) if current is not None and name is not None else None
        elif event_type.endswith("Scheduled") and failure is not None:
            failed, error = failure
            if failed == current:
                index = first_match(states[failed].get("Retry", []), error)
                if index is not None:
                    taken.retries.add((failed, index))
            failure = None
    return taken


@dataclass
class Record:
    """This process's record, per machine (logical id)."""

    machines: dict[str, Taken] = field(default_factory=lambda: {logical_id: Taken() for logical_id in MACHINES})

    def update(self, other: Record) -> None:
        for logical_id, taken in other.machines.items():
            self.machines.setdefault(logical_id, Taken()).update(taken)


RECORD = Record()


def _history(stepfunctions: Any, execution_arn: str) -> Iterator[Mapping[str, Any]]:
    for page in stepfunctions.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        yield from page["events"]


def record_executions(stepfunctions: Any, state_machine_arns: Mapping[str, str]) -> None:
    """Fold every execution of the two sagas (logical id -> state machine ARN) into ``RECORD``."""
    for logical_id, definition in definitions().items():
        arn = state_machine_arns.get(logical_id)
        if arn is None:
            continue
        for page in stepfunctions.get_paginator("list_executions").paginate(stateMachineArn=arn):
            for execution in page["executions"]:
                events = _history(stepfunctions, execution["executionArn"])
                RECORD.machines[logical_id].update(edges_of(definition, events))


def deployed_state_machines(stepfunctions: Any) -> dict[str, str]:
    """Logical id -> ARN of the sagas in an emulator whose stack named them ``<prefix>-<logical id>``."""
    found = {}
    for page in stepfunctions.get_paginator("list_state_machines").paginate():
        for machine in page["stateMachines"]:
            for logical_id in MACHINES:
                if machine["name"].endswith(f"-{logical_id}"):
                    found[logical_id] = machine["stateMachineArn"]
    return found


# ---------------------------------------------------------------------------- the report
def _errors(rule: Mapping[str, Any]) -> str:
    names = rule["ErrorEquals"]
    return names[0] if len(names) == 1 else f"{names[0]}, …"


def report(record: Record) -> tuple[list[str], bool]:
    """One line per machine, then what is missing; and whether everything was taken."""
    lines, missing_lines = [], []
    for logical_id, definition in definitions().items():
        everything = universe(definition)
        taken = record.machines.get(logical_id, Taken())
        states, catches, retries = (
            taken.states & everything.states,
            taken.catches & everything.catches,
            taken.retries & everything.retries,
        )
        lines.append(
            f"{MACHINES[logical_id]}: states {len(states)}/{len(everything.states)}, "
            f"catch edges {len(catches)}/{len(everything.catches)}, "
            f"retry edges {len(retries)}/{len(everything.retries)}"
        )
        spec = definition["States"]
        missing_lines += [
            f"  {MACHINES[logical_id]}: state {name} never entered" for name in spec if name not in states
        ]
        missing_lines += [
            f"  {MACHINES[logical_id]}: catch {name}.Catch[{index}] ({_errors(spec[name]['Catch'][index])}) "
            f"-> {spec[name]['Catch'][index]['Next']} never taken"
            for name, index in sorted(everything.catches - catches)
        ]
        missing_lines += [
            f"  {MACHINES[logical_id]}: retry {name}.Retry[{index}] ({_errors(spec[name]['Retry'][index])}) never used"
            for name, index in sorted(everything.retries - retries)
        ]
    return lines + missing_lines, not missing_lines


# ---------------------------------------------------------------------------- the pytest plugin
class StateMachineCoverage:
    """Registered by tests/conftest.py: merges the workers' records and reports at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.worker_input: dict[str, Any] | None = getattr(config, "workerinput", None)
        # The controller (or a run without workers) makes a directory for the workers' parts.
        self.parts_dir = None if self.worker_input is not None else Path(tempfile.mkdtemp(prefix="sm-coverage-"))
        self.service_files: set[str] = set()
        self.service_deselected = False
        self.lines: list[str] = []
        self.enforced = False

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_PARTS_DIR_KEY] = str(self.parts_dir)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.parts_dir is not None:
            shutil.rmtree(self.parts_dir, ignore_errors=True)

    # Every process that collects: did it take the whole service tier?
    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.service_deselected |= any(item.path.is_relative_to(SERVICE_TIER) for item in items)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.service_files |= {
            str(item.path.relative_to(SERVICE_TIER)) for item in session.items if item.path.is_relative_to(SERVICE_TIER)
        }

    def _part(self) -> dict[str, Any]:
        return {
            "machines": {logical_id: taken.to_json() for logical_id, taken in RECORD.machines.items()},
            "service_files": sorted(self.service_files),
            "service_deselected": self.service_deselected,
        }

    def _whole_service_tier(self, parts: list[dict[str, Any]]) -> bool:
        if any("::" in str(arg) for arg in self.config.args):
            return False
        on_disk = {str(path.relative_to(SERVICE_TIER)) for path in SERVICE_TIER.glob("test_*.py")}
        collected = set().union(*(part["service_files"] for part in parts))
        return on_disk <= collected and not any(part["service_deselected"] for part in parts)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.worker_input is not None:
            parts_dir = Path(self.worker_input[_PARTS_DIR_KEY])
            (parts_dir / f"{self.worker_input['workerid']}.json").write_text(json.dumps(self._part()))
            return
        assert self.parts_dir is not None
        parts = [self._part()] + [json.loads(path.read_text()) for path in sorted(self.parts_dir.glob("*.json"))]
        merged = Record()
        for part in parts:
            merged.update(Record({k: Taken.from_json(v) for k, v in part["machines"].items()}))
        if self.config.option.collectonly:
            return
        self.enforced = self._whole_service_tier(parts)
        if not self.enforced and not any(taken.states for taken in merged.machines.values()):
            return  # no saga ran (e.g. only the unit tier): nothing to say
        lines, complete = report(merged)
        self.lines = lines if self.enforced else lines[: len(MACHINES)]
        if self.enforced and not complete and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        note = "" if self.enforced else " (not enforced: tests/service did not run in full)"
        terminalreporter.write_sep("-", f"state machine coverage{note}")
        for line in self.lines:
            terminalreporter.write_line(line)
        if self.enforced and len(self.lines) > len(MACHINES):
            terminalreporter.write_line("state machine coverage is below 100%: every state and edge must be taken")
