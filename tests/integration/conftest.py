from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis
from openai import OpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import Stack
from tests.integration.keyed_stack import keyed  # noqa: F401  (the deployment that checks keys)

EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.base_url, api_key="test-key", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def rds(stack: Stack) -> Iterator[redis.Redis]:
    r = stack.redis.client()
    yield r
    r.close()


def validated(events: Iterable[Any]) -> list[Any]:
    """Every event re-validated strictly against the SDK's own event union, not merely parsed."""
    return [EVENT.validate_python(e.to_dict() if hasattr(e, "to_dict") else e) for e in events]


def wait_for(client: OpenAI, response_id: str, statuses: set[str], timeout: float = 20) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in statuses:
            return Response.model_validate(response.to_dict())
        if time.monotonic() > deadline:
            raise AssertionError(f"{response_id} still {response.status}, wanted {statuses}")
        time.sleep(0.05)


def assert_consecutive(seqs: list[int], start: int = 0) -> None:
    assert seqs == list(range(start, start + len(seqs))), seqs


TERMINAL = {"completed", "failed", "cancelled", "incomplete"}
