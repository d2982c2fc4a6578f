"""Fixtures the service tier's modules share."""

from __future__ import annotations

import pytest

from tests.conftest import LocalAws
from tests.service.faults import StepFaults


@pytest.fixture
def faults(local_aws: LocalAws) -> StepFaults:
    """The Lambda runtime's fault hooks for one test (steps down, answers lost once, a pause)."""
    return StepFaults(local_aws)
