"""Structured logs of the node daemon: the services' shared logging (:mod:`coremesh.service.logs`)
under the ``coremesh_node`` logger. ``log.info("node.ready", peer_id=...)`` writes one JSON object
(or one text line) per event on stderr; ``configure`` sets the format and level."""

from __future__ import annotations

from coremesh.service.logs import EventLogger, JsonFormatter, TextFormatter, configure

log = EventLogger("coremesh_node")

__all__ = ["EventLogger", "JsonFormatter", "TextFormatter", "configure", "log"]
