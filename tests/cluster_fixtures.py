"""Redis Cluster fixtures (tests/redis_cluster.py), registered by tests/conftest.py: one cluster the whole
session shares, and a cluster of its own for a test that kills or restarts nodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_cluster import LocalCluster


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """Shared by every test that asks for it: use keys of your own, and leave its nodes running."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    """A cluster for this test alone, stopped after it: kill and restart its nodes at will."""
    with LocalCluster() as cluster:
        yield cluster
