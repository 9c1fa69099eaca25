"""Measure the NAT in front of this host: the project's RFC 5780 client over one real UDP socket.

Run inside a lab host: ``python -m coremesh_natlab.probe 192.0.2.10:3478`` prints one JSON object:
``{"mapping": ..., "filtering": ..., "public_address": "IP:PORT", "hairpinning": ..., "local": ...}``
(the terms of :mod:`coremesh.stun.natdiscovery`). The server must run with an alternate address
(``coremesh-relay --listen IP:3478 --alt-address IP2``). ``--rto`` shortens the STUN retransmission
timer so a filtering test that gets no answer concludes in about a second.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time

from coremesh.addr import Address, normalize_socket_address, parse_address
from coremesh.errors import DecodeError
from coremesh.stun.attributes import Attr
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.stun.natdiscovery import NatBehaviorDiscovery
from coremesh.stun.transaction import TransactionConfig


def discover(
    server: Address, *, bind: Address | None = None, rto: float = 0.1, rc: int = 4
) -> dict[str, object]:
    family = socket.AF_INET6 if server.is_ipv6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(tuple(bind) if bind else ("::" if server.is_ipv6 else "0.0.0.0", 0))
        # The local address as the host sees it: the source the kernel picks for the server.
        probe = socket.socket(family, socket.SOCK_DGRAM)
        probe.connect(tuple(server))
        local = Address(probe.getsockname()[0], sock.getsockname()[1])
        probe.close()
        config = TransactionConfig(rto=rto, rc=rc, rm=4)
        client = NatBehaviorDiscovery(
            server, time.monotonic(), random_bytes=os.urandom, local_address=local, config=config
        )
        while not client.done:
            for data, dst in client.datagrams_to_send():
                sock.sendto(data, tuple(dst))
            timer = client.next_timer()
            wait = 1.0 if timer is None else max(0.0, timer - time.monotonic())
            readable, _, _ = select.select([sock], [], [], wait)
            if readable:
                data, src = sock.recvfrom(2048)
                client.on_datagram(data, normalize_socket_address(src), time.monotonic())
            client.handle_timer(time.monotonic())
        result = client.result
        assert result is not None
        return {
            "mapping": result.mapping,
            "filtering": result.filtering,
            "public_address": str(result.public_address) if result.public_address else None,
            "other_address": str(result.other_address) if result.other_address else None,
            "hairpinning": result.hairpinning,
            "local": str(local),
            "log": [[phase.value, outcome.value] for phase, outcome in client.log],
        }
    finally:
        sock.close()


def mapped_addresses(server: Address, count: int, *, timeout: float = 2.0) -> list[str | None]:
    """The public address of ``count`` fresh sockets, opened one after another, as ``server``
    sees them (``None`` where no answer came): shows a NAT's port allocation (sequential ports
    step by one)."""
    family = socket.AF_INET6 if server.is_ipv6 else socket.AF_INET
    found: list[str | None] = []
    for _ in range(count):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind(("::" if server.is_ipv6 else "0.0.0.0", 0))
            request = StunMessage(Method.BINDING, StunClass.REQUEST, os.urandom(12))
            deadline, answer = time.monotonic() + timeout, None
            sock.sendto(encode(request), tuple(server))
            while answer is None and (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([sock], [], [], min(left, 0.2))
                if not readable:
                    sock.sendto(encode(request), tuple(server))
                    continue
                data = sock.recv(2048)
                try:
                    msg = decode(data)
                    mapped = msg.get_address(Attr.XOR_MAPPED_ADDRESS)
                except DecodeError:
                    continue
                if msg.transaction_id == request.transaction_id and mapped is not None:
                    answer = str(mapped)
            found.append(answer)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coremesh_natlab.probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("server", help="the STUN server's primary address, IP:PORT")
    parser.add_argument("--bind", help="local IP:PORT (default: any, a free port)")
    parser.add_argument("--rto", type=float, default=0.1, help="initial STUN retransmission timeout, s")
    parser.add_argument(
        "--mapped", type=int, metavar="N", help="instead: the public address of N fresh sockets, in order"
    )
    args = parser.parse_args(argv)
    try:
        server = parse_address(args.server)
        bind = parse_address(args.bind) if args.bind else None
    except ValueError as exc:
        parser.error(str(exc))
    if args.mapped:
        print(json.dumps(mapped_addresses(server, args.mapped)))
    else:
        print(json.dumps(discover(server, bind=bind, rto=args.rto)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
