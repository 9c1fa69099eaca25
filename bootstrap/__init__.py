"""``coremesh_bootstrap``: the bootstrap node service (``coremesh-bootstrap``), a stable DHT member.

The folder is ``bootstrap/`` in the repository; it installs under the import name ``coremesh_bootstrap``.
See docs/bootstrap.md.
"""
