"""The node daemon's logger: the services' shared structured logs (:mod:`coremesh.service.logs`) under
the ``coremesh_node`` name. ``log.info("node.ready", peer_id=...)`` writes one JSON object (or one
text line) per event on stderr; :func:`coremesh.service.logs.configure` sets the format and level.
Its own module so that the inbox and the admin app log under it without importing ``main``."""

from __future__ import annotations

from coremesh.service.logs import EventLogger

log = EventLogger("coremesh_node")
