"""`.chalice/config.json`: the dev stage runs `chalice local` against the local stack; nothing of it deploys."""

from __future__ import annotations

import json
from typing import Any

from infra.local.template import API_HANDLER, function_properties, load_template, resources_of_type
from tests.conftest import REPO_ROOT

# What `make run` prints for the user to export: the emulator's endpoint and the dev token issuer
# (its port is only fixed under `make run`).
FROM_THE_SHELL = {"AUTH_ISSUER"}
TABLE = "AWS::DynamoDB::Table"


def chalice_config() -> dict[str, Any]:
    return json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())


def test_the_dev_stage_sets_every_variable_the_template_gives_the_api() -> None:
    template = load_template()
    api_variables = function_properties(template, API_HANDLER)["Environment"]["Variables"]
    dev = chalice_config()["stages"]["dev"]["environment_variables"]

    assert sorted(api_variables.keys() - FROM_THE_SHELL - dev.keys()) == []
    assert not FROM_THE_SHELL & dev.keys(), "config.json would override what the shell passes"


def test_the_dev_stage_names_the_local_stacks_tables() -> None:
    """The local stack deploys each table as `shop-<logical id>` (infra/local/deploy.py)."""
    template = load_template()
    api_variables = function_properties(template, API_HANDLER)["Environment"]["Variables"]
    dev = chalice_config()["stages"]["dev"]["environment_variables"]
    tables = resources_of_type(template, TABLE)

    table_variables = {
        name: value["Ref"]
        for name, value in api_variables.items()
        if isinstance(value, dict) and value.get("Ref") in tables
    }
    assert table_variables
    assert {name: dev[name] for name in table_variables} == {
        name: f"shop-{logical_id}" for name, logical_id in table_variables.items()
    }


def test_the_packaged_stage_carries_no_environment() -> None:
    """`make package` packages the `prod` stage; the dev stage's values would override the template's."""
    config = chalice_config()

    assert "environment_variables" not in config
    assert "environment_variables" not in config["stages"]["prod"]
    package_script = (REPO_ROOT / "infra" / "package.py").read_text()
    assert '"--stage",' in package_script and '"prod",' in package_script


def test_the_dev_stage_publishes_metrics_where_the_local_stacks_functions_do() -> None:
    """The template's namespace is the stack's (Shop/<stack>); `make run` deploys the stack `shop`."""
    template = load_template()
    namespace = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    dev = chalice_config()["stages"]["dev"]["environment_variables"]
    assert dev["POWERTOOLS_METRICS_NAMESPACE"] == namespace["Fn::Sub"].replace("${AWS::StackName}", "shop")


def test_the_dev_stage_takes_the_templates_parameter_defaults() -> None:
    """A value the template takes from a parameter is that parameter's default in the dev stage: the
    local server runs the API as a default deploy does (they were copied by hand, and unchecked)."""
    template = load_template()
    api_variables = function_properties(template, API_HANDLER)["Environment"]["Variables"]
    dev = chalice_config()["stages"]["dev"]["environment_variables"]
    parameters = template["Parameters"]

    from_parameters = {
        name: str(parameters[value["Ref"]]["Default"])
        for name, value in api_variables.items()
        if isinstance(value, dict) and value.get("Ref") in parameters and "Default" in parameters[value["Ref"]]
    }
    assert from_parameters
    assert {name: dev[name] for name in from_parameters} == from_parameters


def test_the_api_functions_limits_are_the_templates() -> None:
    """Timeout and memory are declared on the template's APIHandler, which the packaged template takes over
    Chalice's; the local server reads them there. ``.chalice/config.json`` repeats them only for a plain
    ``chalice local`` (without, Chalice's 900 s would time its requests), and must agree."""
    api = function_properties(load_template(), API_HANDLER)
    assert api["Timeout"] <= 29  # API Gateway's integration limit
    config = chalice_config()
    assert (config["lambda_timeout"], config["lambda_memory_size"]) == (api["Timeout"], api["MemorySize"])
    assert not any({"lambda_timeout", "lambda_memory_size"} & stage.keys() for stage in config["stages"].values())
