"""The public node API: :class:`~.node.MeshNode` and its :class:`~.connection.Connection` objects.

Import these from :mod:`coremesh` itself; the modules here are where they live.
"""
