"""The ``coremesh_cluster`` pytest fixture: a Core Mesh in containers for each test that asks for it.

Enable it in a ``conftest.py`` or a test module::

    pytest_plugins = ["coremesh.testing.pytest_plugin"]

and shape the cluster by overriding ``coremesh_cluster_options`` (nodes, base image, build context,
node environment), in a conftest or a test module. See docs/testing-with-containers.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coremesh.testing.containers import ClusterOptions, CoreMeshCluster

__all__ = ["ClusterOptions", "coremesh_cluster", "coremesh_cluster_options"]


@pytest.fixture
def coremesh_cluster_options() -> ClusterOptions:
    """Three nodes on the default base image; override this fixture to change it."""
    return ClusterOptions()


@pytest.fixture
def coremesh_cluster(coremesh_cluster_options: ClusterOptions) -> Iterator[CoreMeshCluster]:
    """A started cluster (bootstrap, relay, nodes), removed after the test whatever its outcome."""
    with coremesh_cluster_options.cluster() as cluster:
        yield cluster
