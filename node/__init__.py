"""``coremesh_node``: the mesh node daemon (``coremesh-node``) and its admin HTTP API.

The folder is ``node/`` in the repository; it installs under the import name ``coremesh_node``
(see ``[tool.setuptools] package-dir`` in pyproject.toml).
"""
