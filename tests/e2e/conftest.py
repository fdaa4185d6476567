"""Fixtures for end-to-end tests against a real kube-apiserver (hack/cluster.sh).

The first run builds kube-apiserver from Debian's source package (several minutes, cached
under ~/.cache/scoreops); later sessions start etcd + kube-apiserver in a few seconds.
Set SCOREOPS_SKIP_E2E=1 to skip these tests (or deselect them with ``-m "not e2e"``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from testkit.cluster import ClusterError, LocalCluster, repo_root

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs the real kube-apiserver started by hack/cluster.sh"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SCOREOPS_SKIP_E2E", "") not in ("", "0"):
        skip = pytest.mark.skip(reason="SCOREOPS_SKIP_E2E is set")
        for item in items:
            if "e2e" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running etcd + kube-apiserver with manifests/third-party/*.yaml applied.

    State and logs live in pytest's basetemp (kept for the last few sessions), so the logs
    of a failed session can be read afterwards.
    """
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        local.start()
    except ClusterError as exc:
        local.stop()
        pytest.fail(f"could not start the local cluster:\n{exc}", pytrace=False)
    try:
        local.apply(repo_root() / "manifests" / "third-party")
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def kube_api(cluster: LocalCluster) -> Iterator[ApiClient]:
    """A ``kubernetes.client.ApiClient`` for the cluster admin (system:masters)."""
    api = cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube_api: ApiClient) -> str:
    """A fresh namespace for one test.

    It is not deleted: without a controller-manager a deleted namespace stays Terminating
    forever, and the whole cluster goes away at the end of the session anyway.
    """
    from kubernetes import client

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(kube_api).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )
    return name
