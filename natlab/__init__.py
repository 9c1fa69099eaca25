"""Core Mesh NAT lab: declared topologies of NAT routers and hosts, built from Linux network namespaces.

The API other code builds on (kept stable)::

    from coremesh_natlab import Lab, NatSpec, LinkSpec, PRESETS, load, pair

    topology = pair("port-restricted-cone", "symmetric", wan_link=LinkSpec(latency_ms=25))
    with Lab(topology) as lab:                      # needs root; removed on exit, also on errors
        a, b, stun = lab.host("a"), lab.host("b"), lab.host("stun")
        stun.ipv4                                   # ["192.0.2.10", "192.0.2.11"]
        a.address, a.public_ipv4                    # "10.1.0.10", the NAT's WAN address
        proc = a.popen(["coremesh-node", ...])      # stopped by PID at exit at the latest
        a.run(["ip", "addr"]).stdout                # run to completion (text; CommandFailed if not 0)
        lab.link("nat_a").set(loss=0.1)             # a router's WAN link; a host's only link
        lab.cut("a", "b"); lab.restore("a", "b")    # drop everything between two nodes, and back
        lab.rebind("nat_a")                         # NAT "reboot": mappings forgotten, new ports
        lab.router("nat_a").run(["iptables-save"])

* Inside hosts, this interpreter's ``bin`` directory is first on ``PATH`` (``coremesh-node`` and
  ``coremesh-relay`` are found); :meth:`Node.python` runs ``sys.executable``.
  :func:`coremesh_natlab.testing.start_stun` starts the project's relay as an RFC 5780 server.
* :func:`pair` (two hosts ``a``/``b`` behind routers ``nat_a``/``nat_b``, host ``stun`` on the
  internet with 192.0.2.10 and 192.0.2.11) is the shape of the NAT-type matrix; a NAT is a
  :class:`NatSpec` or a preset name from :data:`PRESETS` (``full-cone``, ``restricted-cone``,
  ``port-restricted-cone``, ``address-dependent``, ``symmetric``, ``symmetric-sequential``,
  ``udp-blocked``), ``None`` for no NAT.
* :func:`load` reads a TOML/JSON topology (see :mod:`coremesh_natlab.topology` and
  ``docs/natlab.md``); ``natlab/topologies/`` has examples, :func:`example` finds them by name.
* :func:`coremesh_natlab.probe.discover` measures the NAT in front of a host (RFC 5780);
  ``python -m coremesh_natlab.probe SERVER`` does it from inside a lab host.
* :mod:`coremesh_natlab.testing` has the pytest fixture ``natlab`` (a factory; every lab it made is
  taken down at the end of the test) and :func:`~coremesh_natlab.testing.require_root`.
* ``coremesh-natlab up|down|list|cleanup|exec|link|cut|restore|show`` is the CLI
  (:mod:`coremesh_natlab.cli`); :meth:`Lab.attach` gives a handle on a run another process made.
"""

from __future__ import annotations

from pathlib import Path

from .lab import CommandFailed, Lab, LabError, Link, Node, check_prerequisites
from .runs import cleanup
from .topology import PRESETS, LinkSpec, NatSpec, Topology, TopologyError, from_dict, load, nat_spec, pair

TOPOLOGIES = Path(__file__).parent / "topologies"


def example(name: str) -> Topology:
    """One of the shipped example topologies, by file stem (``natlab/topologies/NAME.toml``)."""
    return load(TOPOLOGIES / f"{name}.toml")


__all__ = [
    "PRESETS",
    "TOPOLOGIES",
    "CommandFailed",
    "Lab",
    "LabError",
    "Link",
    "LinkSpec",
    "NatSpec",
    "Node",
    "Topology",
    "TopologyError",
    "check_prerequisites",
    "cleanup",
    "example",
    "from_dict",
    "load",
    "nat_spec",
    "pair",
]
