"""Schema-driven fuzzing of the live API: every operation in its OpenAPI document, valid and invalid input alike.

Bounded: at most EXAMPLES requests per operation and generation mode, and no request starts after BUDGET_S.
The only property checked is the one every client relies on: no response is a 5xx.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from schemathesis import Case, GenerationMode

from tests.conftest import Stack

EXAMPLES = 25
BUDGET_S = 60.0


@dataclass
class Tally:
    deadline: float
    requests: int = 0
    over_budget: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)

    def call(self, case: Case, base_url: str) -> None:
        if time.monotonic() > self.deadline:
            self.over_budget += 1
            return
        response = case.call(base_url=base_url, timeout=30)
        self.requests += 1
        self.by_status[response.status_code] = self.by_status.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            self.server_errors.append(f"{response.status_code} {case.as_curl_command()}\n  -> {response.text[:300]}")


def test_no_generated_request_gets_a_5xx(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    tally = Tally(deadline=time.monotonic() + BUDGET_S)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.method.upper() == "POST" and op.path == "/v1/responses" and op.body for op in operations)

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[hypothesis.Phase.generate],  # no shrinking: every 5xx is listed as sent
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Case) -> None:
                try:
                    tally.call(case, stack.api_url)
                except requests.exceptions.InvalidHeader:
                    hypothesis.reject()  # a header the HTTP client itself refuses to send

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # An operation whose parameters are all free strings (or that has none) has no invalid input.
                assert mode == GenerationMode.NEGATIVE, operation.label

    with capsys.disabled():
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(tally.by_status.items()))
        print(
            f"\nfuzz: {len(operations)} operations, {tally.requests} requests, "
            f"{len(tally.server_errors)} responses >= 500, {tally.over_budget} skipped past the budget ({statuses})"
        )
    assert tally.requests > len(operations) * 5  # it did fuzz, even on a machine slow enough to hit the budget
    assert tally.server_errors == [], "\n".join(tally.server_errors)
