"""The public node API: :class:`~.node.MeshNode` and its :class:`~.connection.Connection` objects.

Import these from :mod:`coremesh` itself; the modules here are where they live. ``node`` holds the
lifecycle and the public surface and delegates to one room per job: ``dialer`` (connecting, with
relay fallback), ``registry`` (the Connections, kept in step with the endpoint's events),
``candidates`` (our addresses, NAT type, netcheck), ``finder`` (discovery services and the DHT);
``parts`` is what a started node runs on, shared by them. Only ``node`` knows ``MeshNode``.
"""
