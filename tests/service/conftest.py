"""Fixtures the service tier's modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import LocalAws
from tests.service import iam_audit
from tests.service.faults import StepFaults


@pytest.fixture
def faults(local_aws: LocalAws) -> StepFaults:
    """The Lambda runtime's fault hooks for one test (steps down, answers lost once, a pause)."""
    return StepFaults(local_aws)


@pytest.fixture(autouse=True)
def iam_policies_allow_every_call(request: pytest.FixtureRequest) -> Iterator[iam_audit.Recorder | None]:
    """Fails the test (at teardown) with every AWS call a function or the API made that its
    policies in infra/template.yaml do not allow: moto enforces no IAM (tests/service/iam_audit.py).

    A test's direct call of a domain function one handler calls (``reconciliation_job.run``) is
    checked as that function's. Autouse, so it is set up before ``local_aws`` and torn down after
    it: the asynchronous deliveries ``local_aws`` waits for at its end are recorded too.
    """
    if "local_aws" not in request.fixturenames:
        yield None
        return
    recorder = iam_audit.Recorder()
    with recorder.installed(iam_audit.project_entry_points()):
        yield recorder
    local_aws = getattr(request.node, "funcargs", {}).get("local_aws")
    assert isinstance(local_aws, LocalAws), "the IAM check needs the test's local_aws"
    refused = iam_audit.denied(recorder.calls, iam_audit.project_policies(), iam_audit.LocalNames.of(local_aws.stack))
    assert not refused, (
        f"{len(refused)} AWS call(s) the caller's policies in infra/template.yaml do not allow "
        "(AccessDenied on AWS):\n" + "\n".join(f"  {denial}" for denial in refused)
    )
