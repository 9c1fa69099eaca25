"""``coremesh_bootstrap``: the bootstrap/discovery service (``coremesh-bootstrap``), not implemented yet.

The folder is ``bootstrap/`` in the repository; it installs under the import name ``coremesh_bootstrap``.
"""
