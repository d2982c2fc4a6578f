"""Metrics with their own dimensions honour POWERTOOLS_METRICS_DISABLED, as the Metrics object does."""

from __future__ import annotations

import json

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from shop.observability import dimensioned_metric


def test_a_dimensioned_metric_is_one_emf_line_with_its_dimensions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Shop")

    dimensioned_metric("OrdersCancelled", MetricUnit.Count, 1, reason="OUT_OF_STOCK")

    line = json.loads(capsys.readouterr().out.strip())
    assert line["OrdersCancelled"] == [1.0] and line["reason"] == "OUT_OF_STOCK"


def test_no_line_when_metrics_are_disabled(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")

    dimensioned_metric("OrdersCancelled", MetricUnit.Count, 1, reason="OUT_OF_STOCK")

    assert capsys.readouterr().out == ""
