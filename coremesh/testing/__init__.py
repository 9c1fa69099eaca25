"""Test helpers for users of Core Mesh: a containerised mesh for integration tests.

``coremesh.testing.containers`` starts a bootstrap, a relay and N nodes as Docker containers with
testcontainers (``pip install 'coremesh[dev]'`` or ``testcontainers>=4``);
``coremesh.testing.pytest_plugin`` wraps it in the ``coremesh_cluster`` fixture
(docs/testing-with-containers.md). Neither is imported here: ``import coremesh`` never loads Docker
or testcontainers.
"""
