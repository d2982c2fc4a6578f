"""Check the packaged template as CloudFormation will see it, offline (`make validate`).

1. cfn-lint runs on build/sam/template.yaml (`make package`) as written, with its SAM rules.
2. The packaged template is transformed with aws-sam-translator, the library
   behind the `AWS::Serverless-2016-10-31` transform, with no AWS call: artifacts get the S3
   locations `sam deploy` would upload them to, and managed policy names are resolved from an
   empty map (the template names none; a name added later fails the transform instead of
   quietly granting a broad AWS policy).
3. cfn-lint runs on the transformed template, where it sees what SAM generated (the RestApi's
   body, roles, log groups): any error or warning fails. Informational findings are not shown.

The transformed template is written to build/sam/transformed.json for inspection.

    python -m infra.check_template        # exit 1 on any finding
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import boto3
from cfnlint.api import ManualArgs, Match, lint, lint_file
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from infra.local.template import REPO_ROOT, load_template

PACKAGED = REPO_ROOT / "build" / "sam" / "template.yaml"
TRANSFORMED = REPO_ROOT / "build" / "sam" / "transformed.json"
REGION = "us-east-1"
# Where `sam deploy --resolve-s3` would upload the local artifacts; any S3 URI transforms alike.
ARTIFACT_BUCKET = "s3://shop-artifacts"
_ARTIFACT_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
    "AWS::Serverless::StateMachine": "DefinitionUri",
}


def _no_managed_policies() -> dict[str, str]:
    # samtranslator's transform() loads this map by listing IAM's managed policies (an AWS call).
    return {}


def with_uploaded_artifacts(template: dict[str, Any]) -> dict[str, Any]:
    """The template with local artifact paths replaced by S3 URIs, as `sam package` does."""
    uploaded = copy.deepcopy(template)
    for resource in uploaded["Resources"].values():
        key = _ARTIFACT_PROPERTIES.get(resource.get("Type", ""))
        path = resource.get("Properties", {}).get(key) if key else None
        if isinstance(path, str) and not path.startswith("s3://"):
            resource["Properties"][key] = f"{ARTIFACT_BUCKET}/{path.removeprefix('./')}"
    return uploaded


def transform_template(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template the SAM transform makes of ``template``."""
    # What samtranslator.translator.transform.transform does, with the region given rather than
    # read from the environment and no IAM client.
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    transformed: dict[str, Any] = translator.translate(
        with_uploaded_artifacts(template),
        parameter_values={"AWS::AccountId": "123456789012"},
        get_managed_policy_map=_no_managed_policies,
    )
    return transformed


def _lines(matches: list[Match]) -> list[str]:
    return [f"{match.rule.id} {match.message} ({'/'.join(str(part) for part in match.path)})" for match in matches]


def findings(transformed: dict[str, Any]) -> list[str]:
    """cfn-lint's errors and warnings on a transformed template, one line each."""
    return _lines(lint(json.dumps(transformed), config=ManualArgs(regions=[REGION], ignore_checks=["I"])))


def packaged_findings() -> list[str]:
    """cfn-lint's errors and warnings on the packaged SAM template itself (its own SAM rules)."""
    return _lines(lint_file(PACKAGED, config=ManualArgs(regions=[REGION], ignore_checks=["I"])))


def main() -> int:
    if not PACKAGED.exists():
        print(f"{PACKAGED.relative_to(REPO_ROOT)} is missing: run `make package`", file=sys.stderr)
        return 1
    packaged_problems = packaged_findings()
    for problem in packaged_problems:
        print(problem, file=sys.stderr)
    print(f"{PACKAGED.relative_to(REPO_ROOT)}: {len(packaged_problems)} cfn-lint errors or warnings")
    transformed = transform_template(load_template(PACKAGED))
    TRANSFORMED.write_text(json.dumps(transformed, indent=1, sort_keys=True))
    problems = findings(transformed)
    for problem in problems:
        print(problem, file=sys.stderr)
    relative = TRANSFORMED.relative_to(REPO_ROOT)
    print(f"{relative}: {len(transformed['Resources'])} resources, {len(problems)} cfn-lint errors or warnings")
    return 1 if problems or packaged_problems else 0


if __name__ == "__main__":
    sys.exit(main())
