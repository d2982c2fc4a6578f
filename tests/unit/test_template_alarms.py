"""The alarms of infra/template.yaml: every operational signal has one, each notifies the topic with a
threshold the deployer sets, and each alarm on a custom metric names a metric the code emits, with
the dimensions it is emitted with (an alarm on a series nobody publishes never fires)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from infra.local.template import API_HANDLER, REPO_ROOT, load_template, resources_of_type

ALARM = "AWS::CloudWatch::Alarm"
FUNCTION = "AWS::Serverless::Function"
LAYER_ROOT = REPO_ROOT / "layers" / "shared" / "python"
# The calls that publish a metric (Powertools' and ours); their other keywords are dimensions.
EMITTERS = {"add_metric", "single_metric", "dimensioned_metric", "_emit"}
NOT_DIMENSIONS = {"name", "unit", "value", "resolution", "namespace", "default_dimensions"}


@dataclass(frozen=True)
class Watched:
    """One metric an alarm reads. Dimension values are as written (a string or an intrinsic)."""

    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]

    def dimension(self, key: str) -> str | None:
        return dict(self.dimensions).get(key)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _watched(namespace: Any, name: str, dimensions: list[dict[str, Any]] | None) -> Watched:
    pairs = tuple(sorted((d["Name"], _value(d["Value"])) for d in dimensions or []))
    return Watched(_value(namespace), name, pairs)


def watched_by(alarm: dict[str, Any]) -> list[Watched]:
    properties = alarm["Properties"]
    if "MetricName" in properties:
        return [_watched(properties["Namespace"], properties["MetricName"], properties.get("Dimensions"))]
    return [
        _watched(
            query["MetricStat"]["Metric"]["Namespace"],
            query["MetricStat"]["Metric"]["MetricName"],
            query["MetricStat"]["Metric"].get("Dimensions"),
        )
        for query in properties["Metrics"]
        if "MetricStat" in query
    ]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resources_of_type(template, ALARM)


def published_namespace(template: dict[str, Any]) -> Any:
    """The namespace every function publishes its metrics to, as the template writes it."""
    return template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]


@pytest.fixture(scope="module")
def shop(template: dict[str, Any]) -> str:
    return _value(published_namespace(template))


def alarms_watching(alarms: dict[str, dict[str, Any]], namespace: str, name: str) -> dict[str, list[Watched]]:
    every = {logical_id: watched_by(alarm) for logical_id, alarm in alarms.items()}
    return {
        logical_id: metrics
        for logical_id, metrics in every.items()
        if any(m.namespace == namespace and m.name == name for m in metrics)
    }


def ref(logical_id: str) -> str:
    return _value({"Ref": logical_id})


# ---------------------------------------------------------------------------- every signal has an alarm
@pytest.mark.parametrize(
    "metric",
    [
        "OrdersNeedingAttention",
        "CircuitBreakerOpened",
        "DeadLettersOpen",
        "ReconciliationDiscrepanciesOutstanding",
    ],
)
def test_each_custom_signal_has_an_alarm_of_its_own(alarms: dict[str, dict[str, Any]], shop: str, metric: str) -> None:
    watching = alarms_watching(alarms, shop, metric)
    assert any({m.name for m in metrics} == {metric} for metrics in watching.values()), watching


def test_unreadable_stream_records_alarm_when_set_aside_and_while_any_waits(
    alarms: dict[str, dict[str, Any]], shop: str
) -> None:
    # The count of records set aside fires at once; the level the republisher publishes keeps the
    # alarm raised until a fixed publisher has read every one (a count alone would clear itself).
    (metrics,) = alarms_watching(alarms, shop, "UnreadableStreamRecordsOpen").values()
    assert {(m.name, m.dimension("service")) for m in metrics} == {
        ("UnreadableStreamRecords", "events"),
        ("UnreadableStreamRecordsOpen", "events"),
    }


def _schedule_seconds(template: dict[str, Any], function: str) -> int:
    (event,) = template["Resources"][function]["Properties"]["Events"].values()
    rate = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours)\)", event["Properties"]["Schedule"])
    assert rate, event["Properties"]["Schedule"]
    count, unit = rate.groups()
    return int(count) * (3600 if unit.startswith("hour") else 60)


def test_the_waiting_records_level_holds_the_alarm_through_a_period_without_a_run(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]], shop: str
) -> None:
    """The republisher publishes the level once a run; a run need not land in every period of that length.

    Judged on one period, the alarm would clear while records still wait whenever a run fell into the
    next period (FILL reads the missing level as 0), and raise again at the next run.
    """
    ((logical_id, _),) = alarms_watching(alarms, shop, "UnreadableStreamRecordsOpen").items()
    properties = alarms[logical_id]["Properties"]
    (period,) = {q["MetricStat"]["Period"] for q in properties["Metrics"] if "MetricStat" in q}
    interval = _schedule_seconds(template, "RepublishUnreadableRecordsFunction")
    window = period * properties["EvaluationPeriods"]
    assert window >= 2 * interval, "a window of the alarm's periods must always hold a run"
    assert properties.get("DatapointsToAlarm") == 1, "one period with records waiting must keep it raised"


def test_the_checkout_failure_rate_is_the_shops_failures_over_every_finished_checkout(
    alarms: dict[str, dict[str, Any]],
) -> None:
    (alarm,) = [alarm for alarm in alarms.values() if "failure-rate" in json.dumps(alarm["Properties"]["AlarmName"])]
    metrics = watched_by(alarm)
    # Counted once per checkout, by the write that ended it (shop.domain.order_lifecycle.checkout_outcome):
    # summing completions, cancellations and flags counted a checkout flagged then redriven twice.
    assert {(m.name, m.dimension("service")) for m in metrics} == {
        ("CheckoutsFinished", "orders"),
        ("CheckoutsFailedByTheShop", "orders"),
    }
    returned = [q for q in alarm["Properties"]["Metrics"] if q.get("ReturnData", True)]
    assert len(returned) == 1 and "Expression" in returned[0]


@pytest.mark.parametrize("machine", ["CheckoutStateMachine", "RefundStateMachine"])
def test_each_saga_alarms_on_executions_failed_and_timed_out(alarms: dict[str, dict[str, Any]], machine: str) -> None:
    assert any(
        {(m.name, m.dimension("StateMachineArn")) for m in metrics}
        == {("ExecutionsFailed", ref(machine)), ("ExecutionsTimedOut", ref(machine))}
        for metrics in map(watched_by, alarms.values())
    )


def test_api_5xx_names_the_api_chalice_deploys(template: dict[str, Any], alarms: dict[str, dict[str, Any]]) -> None:
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    # `make package` packages the prod stage; Chalice's own default stage name is "api".
    stage = config.get("stages", {}).get("prod", {}).get("api_gateway_stage", config.get("api_gateway_stage", "api"))
    api_name = _value(template["Resources"]["RestAPI"]["Properties"]["Name"])
    (metrics,) = alarms_watching(alarms, "AWS/ApiGateway", "5XXError").values()
    assert metrics == [Watched("AWS/ApiGateway", "5XXError", (("ApiName", api_name), ("Stage", stage)))]


def test_two_stacks_in_one_account_never_share_a_metric_series(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]], shop: str
) -> None:
    """Staging and production in one account: one's failures must not raise the other's alarms.

    Custom metrics go to a namespace named after the stack; API Gateway keys its metrics by the API's
    name (a REST API has no id dimension), so the API is named after the stack too.
    """
    stack = _value({"Ref": "AWS::StackName"})
    assert "${AWS::StackName}" in published_namespace(template)["Fn::Sub"]
    assert _value(template["Resources"]["RestAPI"]["Properties"]["Name"]) == stack
    for logical_id, alarm in alarms.items():
        for metric in watched_by(alarm):
            if metric.namespace == "AWS/ApiGateway":
                assert metric.dimension("ApiName") == stack, logical_id
            elif not metric.namespace.startswith("AWS/"):
                assert metric.namespace == shop, logical_id
            else:  # AWS's own metrics of this stack's resources: keyed by a Ref or GetAtt of them
                # (an index's name is the same in every stack; the table's Ref beside it keeps them apart)
                keys = [value for key, value in metric.dimensions if key != "GlobalSecondaryIndexName"]
                assert all(value.startswith("{") for value in keys), (logical_id, metric)


def test_lambda_errors_include_the_api_and_throttles_are_alarmed(alarms: dict[str, dict[str, Any]]) -> None:
    errors = [m for metrics in alarms_watching(alarms, "AWS/Lambda", "Errors").values() for m in metrics]
    assert Watched("AWS/Lambda", "Errors", (("FunctionName", ref(API_HANDLER)),)) in errors
    assert alarms_watching(alarms, "AWS/Lambda", "Throttles")


def test_lambda_errors_name_only_functions_of_the_template(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]]
) -> None:
    functions = {ref(name) for name in resources_of_type(template, FUNCTION)} | {ref(API_HANDLER)}
    errors = [m for metrics in alarms_watching(alarms, "AWS/Lambda", "Errors").values() for m in metrics]
    assert {m.dimension("FunctionName") for m in errors} <= functions


@pytest.mark.parametrize("metric", ["ReadThrottleEvents", "WriteThrottleEvents"])
def test_every_table_is_watched_for_throttles(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]], metric: str
) -> None:
    watched = {m.dimension("TableName") for ms in alarms_watching(alarms, "AWS/DynamoDB", metric).values() for m in ms}
    assert watched == {ref(table) for table in resources_of_type(template, "AWS::DynamoDB::Table")}


@pytest.mark.parametrize("metric", ["ReadThrottleEvents", "WriteThrottleEvents"])
def test_every_global_secondary_index_is_watched_for_throttles(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]], metric: str
) -> None:
    """AWS/DynamoDB's throttle events by TableName alone leave the table's global secondary indexes
    out (AWS: "to view ... for a global secondary index, you must specify both TableName and
    GlobalSecondaryIndexName"): no alarm watched ActiveProducts, one partition key value read by
    every listing (a helper's review)."""
    watched = {
        (m.dimension("TableName"), m.dimension("GlobalSecondaryIndexName"))
        for ms in alarms_watching(alarms, "AWS/DynamoDB", metric).values()
        for m in ms
    }
    indexes = {
        (ref(table), index["IndexName"])
        for table, resource in resources_of_type(template, "AWS::DynamoDB::Table").items()
        for index in resource["Properties"].get("GlobalSecondaryIndexes", [])
    }
    assert indexes and indexes <= watched


# ---------------------------------------------------------------------------- notification and thresholds
def test_every_alarm_notifies_the_topic_when_it_fires_and_recovers(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]]
) -> None:
    assert template["Resources"]["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    for logical_id, alarm in alarms.items():
        properties = alarm["Properties"]
        assert properties["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert properties["OKActions"] == [{"Ref": "AlarmTopic"}], logical_id


def test_every_threshold_is_a_numeric_parameter(template: dict[str, Any], alarms: dict[str, dict[str, Any]]) -> None:
    parameters = template["Parameters"]
    for logical_id, alarm in alarms.items():
        threshold = alarm["Properties"]["Threshold"]
        assert isinstance(threshold, dict) and set(threshold) == {"Ref"}, logical_id
        assert parameters[threshold["Ref"]]["Type"] == "Number", logical_id


def test_the_email_subscription_exists_only_when_an_address_is_given(template: dict[str, Any]) -> None:
    assert template["Parameters"]["AlarmEmail"]["Default"] == ""
    assert template["Conditions"]["HasAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}
    subscription = template["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlarmEmail"},
    }


# ---------------------------------------------------------------------------- custom metrics exist
@dataclass(frozen=True)
class Emission:
    module: str
    metric: str
    dimensions: frozenset[str]  # besides Powertools' `service`


def _module_files() -> dict[str, Path]:
    files = {".".join(p.relative_to(LAYER_ROOT).with_suffix("").parts): p for p in (LAYER_ROOT / "shop").rglob("*.py")}
    files |= {
        ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts): p for p in (REPO_ROOT / "chalicelib").rglob("*.py")
    }
    return {name.removesuffix(".__init__"): path for name, path in files.items()}


@cache
def _modules() -> dict[str, Path]:
    return _module_files()


@cache
def _imports(path: Path) -> set[str]:
    """The local modules a file imports (``from shop.domain import payments`` is shop.domain.payments)."""
    modules = _modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


@cache
def reachable(entry: Path) -> set[str]:
    """Every local module an entry point's imports reach."""
    seen: set[str] = set()
    pending = list(_imports(entry))
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending += _imports(_modules()[module])
    return seen


@cache
def emissions() -> tuple[Emission, ...]:
    return tuple(_scan())


def _scan() -> Iterator[Emission]:
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if callee not in EMITTERS:
                continue
            names = [kw.value for kw in node.keywords if kw.arg == "name"] + node.args[:1]
            if names and isinstance(names[0], ast.Constant) and isinstance(names[0].value, str):
                dimensions = frozenset(kw.arg for kw in node.keywords if kw.arg and kw.arg not in NOT_DIMENSIONS)
                yield Emission(module, names[0].value, dimensions)


def services_running(template: dict[str, Any], module: str) -> set[str]:
    """POWERTOOLS_SERVICE_NAME of every function whose code reaches ``module``."""
    entries = {API_HANDLER: REPO_ROOT / "app.py"} | {
        name: REPO_ROOT / resource["Properties"]["CodeUri"] / "app.py"
        for name, resource in resources_of_type(template, FUNCTION).items()
    }
    return {
        template["Resources"][name]["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
        for name, entry in entries.items()
        if module in reachable(entry)
    }


def test_the_source_scan_finds_the_metrics_it_should() -> None:
    """The scan itself: a known plain metric and a known dimensioned one."""
    found = {(e.metric, e.dimensions) for e in emissions()}
    assert ("OrdersNeedingAttention", frozenset()) in found
    assert ("ReconciliationDiscrepancies", frozenset({"kind"})) in found


def test_custom_metrics_are_in_the_namespace_the_functions_publish_to(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]]
) -> None:
    custom = {m.namespace for metrics in map(watched_by, alarms.values()) for m in metrics}
    assert custom - {"AWS/States", "AWS/ApiGateway", "AWS/Lambda", "AWS/DynamoDB", "AWS/SQS"} == {
        _value(published_namespace(template))
    }


def test_every_custom_metric_alarmed_on_is_emitted_with_those_dimensions(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]]
) -> None:
    namespace = _value(published_namespace(template))
    emitted = list(emissions())
    for logical_id, alarm in alarms.items():
        for metric in (m for m in watched_by(alarm) if m.namespace == namespace):
            keys = {key for key, _ in metric.dimensions}
            matching = [e for e in emitted if e.metric == metric.name and {"service", *e.dimensions} == keys]
            assert matching, f"{logical_id}: no code emits {metric.name} with dimensions {sorted(keys)}"
            services = set().union(*(services_running(template, e.module) for e in matching))
            assert metric.dimension("service") in services, f"{logical_id}: {metric} is emitted by {services}"


def test_the_dashboard_reads_only_metrics_the_alarms_read_or_the_code_emits(template: dict[str, Any]) -> None:
    """Its body is !Sub text: with the substitutions blanked out it is JSON."""
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    emitted = {e.metric for e in emissions()}
    shop = re.sub(r"\$\{[^}]+\}", "x", published_namespace(template)["Fn::Sub"])
    shown = {m[1] for w in widgets if w["type"] == "metric" for m in w["properties"]["metrics"] if m[0] == shop}
    assert {"SagaDuration", "OrdersCompleted"} <= shown
    assert shown <= emitted
    alarm_widget = next(w for w in widgets if w["type"] == "alarm")
    assert len(alarm_widget["properties"]["alarms"]) == len(resources_of_type(template, ALARM))


def _as_written_in_the_dashboard(value: str) -> str:
    """An alarm's namespace or dimension value (text, or an intrinsic as JSON) as the dashboard's !Sub writes it."""
    if not value.startswith("{"):
        return value
    intrinsic = json.loads(value)
    if "Ref" in intrinsic:
        return f"${{{intrinsic['Ref']}}}"
    if "Fn::GetAtt" in intrinsic:
        return "${" + ".".join(intrinsic["Fn::GetAtt"]) + "}"
    if isinstance(intrinsic.get("Fn::Sub"), str):
        return str(intrinsic["Fn::Sub"])
    raise AssertionError(f"a dimension value the dashboard cannot name: {value}")


def test_the_dashboard_graphs_every_metric_an_alarm_watches(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]]
) -> None:
    """An operator paged by an alarm finds its signal on the dashboard, on every function and table it watches."""
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(body.replace("${AWS::Region}", "region"))["widgets"]
    graphed = set()
    for widget in widgets:
        for row in widget["properties"].get("metrics", []) if widget["type"] == "metric" else []:
            parts = [part for part in row if not isinstance(part, dict)]
            if len(parts) >= 2:
                pairs = tuple(sorted(zip(parts[2::2], parts[3::2], strict=True)))
                graphed.add((parts[0], parts[1], pairs))
    watched = {
        (
            _as_written_in_the_dashboard(m.namespace),
            m.name,
            tuple(sorted((key, _as_written_in_the_dashboard(value)) for key, value in m.dimensions)),
        )
        for alarm in alarms.values()
        for m in watched_by(alarm)
    }
    assert sorted(watched - graphed) == []


def test_every_alarm_has_a_row_in_the_readmes_table_of_what_to_do() -> None:
    """An operator paged by an alarm looks it up in the README's table (two had no row)."""
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("What each alarm (`<stack>-<name>`) means")
    table = readme[start : readme.index("\n\n", readme.index("| Alarm |", start))]
    documented = {
        name
        for row in table.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([a-z0-9-]+)`", row.split("|")[1])
    }
    created = {
        alarm["Properties"]["AlarmName"]["Fn::Sub"].removeprefix("${AWS::StackName}-")
        for alarm in resources_of_type(load_template(), ALARM).values()
    }
    assert (sorted(created - documented), sorted(documented - created)) == ([], [])
