"""``coremesh_relay``: the relay service (``coremesh-relay``), not implemented yet.

The folder is ``relay/`` in the repository; it installs under the import name ``coremesh_relay``.
"""
