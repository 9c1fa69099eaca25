"""``coremesh``: the operator CLI. It talks to a running ``coremesh-node`` over its admin HTTP API.

    coremesh [--admin HOST:PORT] status [--json]
    coremesh [--admin HOST:PORT] peers [--json]
    coremesh [--admin HOST:PORT] connect PEERID[@HOST:PORT] [--json]
    coremesh [--admin HOST:PORT] lookup PEERID [--json]
    coremesh [--admin HOST:PORT] ping PEERID [--count N] [--json]
    coremesh [--admin HOST:PORT] send PEERID TEXT [--json]
    coremesh [--admin HOST:PORT] recv [--count N] [--timeout S] [--json]
    coremesh [--admin HOST:PORT] netcheck [--refresh] [--json]
    coremesh [--admin HOST:PORT] routes [--json]
    coremesh [--admin HOST:PORT] route PEERID [--timeout S] [--json]
    coremesh [--admin HOST:PORT] broadcast TEXT [--base64] [--json]
    coremesh [--admin HOST:PORT] join GROUP [--json]
    coremesh [--admin HOST:PORT] leave GROUP [--json]
    coremesh [--admin HOST:PORT] multicast GROUP TEXT [--base64] [--json]
    coremesh [--admin HOST:PORT] groups [--json]
    coremesh [--admin HOST:PORT] allow PEERID [--remove] [--json]
    coremesh [--admin HOST:PORT] deny PEERID [--remove] [--json]
    coremesh [--admin HOST:PORT] acl [--open | --close] [--json]

Only the standard library is used (``http.client``), so the command starts fast. Peer ids and addresses
are checked locally before any request. Every failure is one line on stderr (``coremesh: error: ...``)
and a non-zero exit status: 2 for a bad command line or input, 1 for anything else (node not running,
unknown peer, timeout, fewer messages than asked for). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import http.client
import json
import os
import socket
import sys
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Final, NoReturn
from urllib.parse import urlencode

from ..addr import Address, parse_address
from ..config import parse_peer_address
from ..errors import InvalidAddress, InvalidPeerId
from ..identity import PeerId
from ..netcheck.report import format_netcheck
from ..service.nodeapi import (
    CONNECT_PATHS,
    CONNECT_TIMEOUT_RANGE,
    GROUP_NAME_MAX,
    LOOKUP_TIMEOUT_RANGE,
    MAX_RECV_COUNT,
    PING_COUNT_RANGE,
    PING_INTERVAL_RANGE,
    PING_TIMEOUT_RANGE,
    RECV_TIMEOUT_RANGE,
    ROUTE_MAX_HOPS,
    ROUTE_TIMEOUT_RANGE,
    group_name_error,
)

PROG: Final = "coremesh"
DEFAULT_ADMIN: Final = "127.0.0.1:7947"
ENV_ADMIN: Final = "COREMESH_ADMIN"
HTTP_TIMEOUT: Final = 10.0
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

# Extra HTTP wait when the node may first resolve a PeerId through the DHT (its lookup_timeout).
LOOKUP_BUDGET: Final = 40.0

JsonObject = dict[str, Any]


class CliError(Exception):
    """A failure reported as one line on stderr, with an exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ApiRefused(CliError):
    """The admin API answered with an error: its HTTP ``status`` and ``code`` (``not_found``, ...)."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# ---------------------------------------------------------------------------------------- HTTP client


class AdminClient:
    """A small JSON client for the node's admin API (one HTTP connection per request)."""

    def __init__(self, address: Address) -> None:
        self.address = address

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout: float = HTTP_TIMEOUT
    ) -> JsonObject:
        where = f"the admin API at {self.address}"
        conn = http.client.HTTPConnection(self.address.host, self.address.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body).encode("utf-8")
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except ConnectionRefusedError:
            raise CliError(
                f"cannot reach {where}: connection refused (is coremesh-node running with "
                f"--admin {self.address}?)"
            ) from None
        except TimeoutError:
            raise CliError(f"{where} did not answer within {timeout:g}s") from None
        except socket.gaierror as exc:
            raise CliError(f"cannot resolve {self.address.host!r}: {exc.strerror}") from None
        except (OSError, http.client.HTTPException) as exc:
            detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise CliError(f"cannot reach {where}: {detail}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CliError(
                f"unexpected answer from {where} (HTTP {response.status}, not JSON): is it a coremesh node?"
            ) from None
        if not isinstance(data, dict):
            raise CliError(f"unexpected answer from {where}: expected a JSON object")
        if response.status >= 400:
            message = str(data.get("error") or f"HTTP {response.status} {response.reason}")
            code = data.get("code")
            raise ApiRefused(
                message.splitlines()[0] if message else f"HTTP {response.status}",
                response.status,
                code if isinstance(code, str) else None,
            )
        return data


# ------------------------------------------------------------------------------------- local checks


def check_peer_id(text: str) -> PeerId:
    try:
        return PeerId.from_text(text)
    except InvalidPeerId as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def check_peer_address(text: str) -> str:
    """``PEERID@HOST:PORT``, or a PeerId alone (the node resolves it through the DHT)."""
    if "@" not in text and ":" not in text:
        return check_peer_id(text).to_text()
    try:
        return str(parse_peer_address(text, require_id=True))
    except (InvalidPeerId, InvalidAddress) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def check_group(text: str) -> str:
    error = group_name_error(text)
    if error is not None:
        raise CliError(f"GROUP: {error}", EXIT_USAGE)
    return text


def check_base64(text: str) -> str:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CliError("TEXT is not valid base64 (--base64 was given)", EXIT_USAGE) from None
    return text


def check_admin(text: str) -> Address:
    try:
        return parse_address(text, allow_zero_port=False, allow_names=True)
    except InvalidAddress as exc:
        raise CliError(f"--admin: {exc}", EXIT_USAGE) from None


# ------------------------------------------------------------------------------------- human output


def _ms(value: object) -> str:
    return f"{float(value):.3f} ms" if isinstance(value, int | float) else "-"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_status(st: JsonObject) -> str:
    role = st.get("role", "node")
    if role == "relay":
        return format_relay_status(st)
    lines = [
        f"peer_id      {st.get('peer_id')}",
        f"role         {role}",
        f"addresses    {', '.join(map(str, st.get('addresses') or [])) or '-'}",
        f"listen       {', '.join(map(str, st.get('listen') or [])) or '-'}",
        f"admin        {st.get('admin') or '-'}",
        f"version      {st.get('version', '-')}",
        f"uptime       {float(st.get('uptime_s') or 0):.1f}s",
        f"connections  {st.get('connections', 0)}",
    ]
    routes = _object(st.get("stats")).get("routes")
    if isinstance(routes, int):
        lines.append(f"routes       {routes} destination{'s' if routes != 1 else ''} (coremesh routes)")
    inbox = st.get("inbox")
    if isinstance(inbox, dict):
        text = f"{inbox.get('queued', 0)} queued"
        if isinstance(inbox.get("bytes"), int) and isinstance(inbox.get("max_bytes"), int):
            text += f" ({_size(inbox['bytes'])} of {_size(inbox['max_bytes'])})"
        text += f", {inbox.get('dropped', 0)} dropped"
        if inbox.get("deliveries_dropped"):
            text += f" ({inbox['deliveries_dropped']} broadcasts/multicasts)"
        lines.append(f"inbox        {text}")
    dht = st.get("dht")
    if role == "bootstrap" and isinstance(dht, dict) and dht.get("enabled", True):
        lines.append(
            f"dht          {dht.get('routing_table_size', 0)} contacts, {dht.get('records', 0)} records"
        )
    return "\n".join(lines)


def _object(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def format_relay_status(st: JsonObject) -> str:
    """A relay has services (STUN/TURN, the keyed relay) instead of mesh connections; its PeerId is
    the keyed relay's identity, only with ``--data-dir``."""
    services = _object(st.get("services"))
    lines = [f"role         relay ({', '.join(services) or 'no services'})"]
    if st.get("peer_id"):
        lines.append(f"peer_id      {st.get('peer_id')} (the keyed relay's identity)")
    stun = services.get("stun_turn")
    if isinstance(stun, dict):
        kinds = [k for k in ("udp", "tcp", "tls") if stun.get(k)]
        addresses = ", ".join(map(str, stun.get("addresses") or [])) or "-"
        lines.append(f"stun/turn    {addresses} ({', '.join(kinds) or '-'})")
        counters = _object(stun.get("stats"))
        lines.append(f"allocations  {counters.get('allocations_current', 0)}")
    keyed = services.get("keyed")
    if isinstance(keyed, dict):
        lines.append(f"keyed relay  {', '.join(map(str, keyed.get('urls') or [])) or keyed.get('address')}")
        counters = _object(keyed.get("stats"))
        lines.append(f"sessions     {counters.get('sessions_registered', 0)} registered peers")
    lines += [
        f"listen       {', '.join(map(str, st.get('listen') or [])) or '-'}",
        f"admin        {st.get('admin') or '-'}",
        f"version      {st.get('version', '-')}",
        f"uptime       {float(st.get('uptime_s') or 0):.1f}s",
        f"ready        {'yes' if st.get('ready') else 'no'}",
    ]
    return "\n".join(lines)


def format_peers(data: JsonObject) -> str:
    peers = data.get("peers") or []
    if not peers:
        return "no peers"
    rows: list[tuple[str, ...]] = [("PEER_ID", "ADDRESS", "STATE", "PATH", "RTT")]
    for p in peers:
        rows.append(
            (
                str(p.get("peer_id")),
                str(p.get("address")),
                str(p.get("state")),
                str(p.get("via") or p.get("path", "-")),  # direct, turn or keyed when known
                _ms(p.get("rtt_ms")),
            )
        )
    return "\n".join(_table(rows))


def format_connect(data: JsonObject) -> str:
    return (
        f"connected to {data.get('peer_id')} at {data.get('address')} "
        f"(path {data.get('path')}, {_ms(data.get('connect_ms'))})"
    )


def format_ping(data: JsonObject) -> str:
    sent, received = data.get("sent", 0), data.get("received", 0)
    loss = 100.0 * (1 - received / sent) if isinstance(sent, int) and sent else 0.0
    hops = data.get("hops")
    return (
        (
            f"ping {data.get('peer_id')} via {data.get('path')}: {sent} sent, {received} received, "
            f"{loss:.0f}% loss, rtt min/avg/max = "
            f"{float(data.get('min_ms', 0)):.3f}/{float(data.get('rtt_ms', 0)):.3f}/"
            f"{float(data.get('max_ms', 0)):.3f} ms"
        )
        + (f"\n  relayed ({data.get('via')}): {data['reason']}" if data.get("reason") else "")
        + (f"\n  routed through {' -> '.join(map(str, hops))}" if isinstance(hops, list) and hops else "")
    )


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned columns (the last one not padded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows
    ]


def format_routes(data: JsonObject) -> str:
    """One line per destination (hops counted, the next hop first), then one indented line per backup."""
    routes = [r for r in data.get("routes") or [] if isinstance(r, dict)]
    if not routes:
        return "no routes"
    rows: list[tuple[str, ...]] = [("DESTINATION", "NEXT_HOP", "METRIC", "HOPS", "AGE")]
    backups: dict[int, list[str]] = {}
    for r in routes:
        age = r.get("age_s")
        rows.append(
            (
                str(r.get("destination")),
                str(r.get("next_hop")),
                str(r.get("metric")),
                str(len(r.get("hops") or [])),
                f"{float(age):.1f}s" if isinstance(age, int | float) else "-",
            )
        )
        backups[len(rows) - 1] = [
            f"  backup via {b.get('next_hop')}  metric {b.get('metric')}  hops {len(b.get('hops') or [])}"
            for b in r.get("backups") or []
            if isinstance(b, dict)
        ]
    lines: list[str] = []
    for i, line in enumerate(_table(rows)):
        lines.append(line)
        lines.extend(backups.get(i, []))
    return "\n".join(lines)


def format_route(data: JsonObject) -> str:
    """Traceroute style: one line per hop with its round-trip time (``*`` when it did not answer)."""
    hops = [h for h in data.get("hops") or [] if isinstance(h, dict)]
    head = f"route to {data.get('peer_id')}: {len(hops)} hop{'s' if len(hops) != 1 else ''}"
    if not data.get("reached", True):
        head += " (destination not reached)"
    lines = [head]
    for h in hops:
        peer, rtt = h.get("peer_id"), h.get("rtt_ms")
        if peer is None:  # no answer at this hop limit within the timeout
            lines.append(f"{h.get('hop')!s:>3}  *")
        else:
            lines.append(f"{h.get('hop')!s:>3}  {peer}  {_ms(rtt) if rtt is not None else '*'}")
    return "\n".join(lines)


def format_broadcast(data: JsonObject) -> str:
    return f"broadcast {data.get('bytes')} bytes (sent to {data.get('neighbours')} neighbours)"


def format_multicast(data: JsonObject) -> str:
    return (
        f"multicast {data.get('bytes')} bytes to group {data.get('group')} "
        f"(sent to {data.get('neighbours')} neighbours)"
    )


def format_groups(data: JsonObject) -> str:
    groups = data.get("groups") or []
    return "\n".join(map(str, groups)) if groups else "no groups"


def _membership(verb: str) -> Callable[[JsonObject], str]:
    def human(data: JsonObject) -> str:
        groups = ", ".join(map(str, data.get("groups") or [])) or "none"
        return f"{verb} {data.get('group')} (member of: {groups})"

    return human


def format_acl(data: JsonObject) -> str:
    """``mesh closed: 2 allowed, 1 denied``, then one ``allow ID`` / ``deny ID`` line per entry."""
    allow = [str(p) for p in data.get("allow") or []]
    deny = [str(p) for p in data.get("deny") or []]
    if data.get("mode") == "closed":
        head = f"mesh closed: only allowed peers may connect ({len(allow)} allowed, {len(deny)} denied)"
    else:
        head = f"mesh open: every peer may connect but the denied ({len(deny)} denied)"
    lines = [head, *(f"allow  {p}" for p in allow), *(f"deny   {p}" for p in deny)]
    closed = data.get("connections_closed")
    if isinstance(closed, int) and closed:
        lines.append(f"closed {closed} connection{'s' if closed != 1 else ''} of peers now refused")
    if data.get("save_error"):
        lines.append(f"warning: not saved: {data['save_error']}")
    return "\n".join(lines)


def _acl_change(verb: str) -> Callable[[JsonObject], str]:
    def human(data: JsonObject) -> str:
        done = f"{'removed' if data.get('removed') else verb} {data.get('peer_id')}"
        if data.get("removed"):
            done += f" from the {'allow' if verb == 'allowed' else 'deny'}-list"
        return f"{done}\n{format_acl(data)}"

    return human


def format_lookup(data: JsonObject) -> str:
    lines = [
        f"peer_id      {data.get('peer_id')}",
        f"seq          {data.get('seq')}",
        f"expires_in   {float(data.get('expires_in_s') or 0):.0f}s",
        f"found in     {_ms(data.get('elapsed_ms'))}",
    ]
    for entry in data.get("addresses") or []:
        if isinstance(entry, dict):
            lines.append(f"{entry.get('kind')!s:<12} {entry.get('address')}")
    return "\n".join(lines)


def format_send(data: JsonObject) -> str:
    return f"sent {data.get('bytes')} bytes to {data.get('peer_id')}"


_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Escaped: controls (C0, DEL, C1: ESC, CSI, ...), format characters (bidi overrides, ...), surrogates,
# unassigned code points, line and paragraph separators. Zero-width (non-)joiners stay: emoji use them.
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
_KEPT: Final = frozenset({"\u200c", "\u200d"})


def escape_text(value: object) -> str:
    """``value`` as one line that is safe to print on a terminal: a backslash, newline, ESC or other
    control or format character becomes an escape as in a Python string literal (``\\\\``, ``\\n``,
    ``\\x1b``, ``\\u202e``); other text is kept as is."""
    out: list[str] = []
    for ch in str(value):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch not in _KEPT and unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def json_line(data: JsonObject) -> str:
    """``data`` as one line of JSON, UTF-8 kept readable, but with the characters :func:`escape_text`
    escapes written as ``\\uXXXX`` (json.dumps leaves C1 controls, bidi overrides and U+2028 raw):
    the decoded value is exactly the same, and the line stays one line and safe on a terminal."""
    out: list[str] = []
    for ch in json.dumps(data, ensure_ascii=False):
        if ch not in _KEPT and unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            if code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:  # a UTF-16 surrogate pair, as JSON spells astral code points
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(ch)
    return "".join(out)


def format_message(msg: JsonObject) -> str:
    """One line per message; the peer-controlled payload is escaped (see :func:`escape_text`). A
    broadcast or multicast says so: ``PEERID (broadcast): text``, ``PEERID (multicast GROUP): text``."""
    sender, data = escape_text(msg.get("from")), escape_text(msg.get("data"))
    notes: list[str] = []
    kind = msg.get("kind", "direct")
    if kind == "multicast":
        notes.append(f"multicast {escape_text(msg.get('group'))}")
    elif kind != "direct":
        notes.append(escape_text(kind))
    if msg.get("encoding") == "base64":
        notes.append("base64")
    return f"{sender} ({', '.join(notes)}): {data}" if notes else f"{sender}: {data}"


# ----------------------------------------------------------------------------------------- commands


class Output:
    def __init__(self, stream: IO[str], as_json: bool) -> None:
        self.stream = stream
        self.as_json = as_json

    def emit(self, data: JsonObject, human: Callable[[JsonObject], str]) -> None:
        text = json_line(data) if self.as_json else human(data)
        self.stream.write(text + "\n")
        self.stream.flush()


def cmd_status(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.emit(client.request("GET", "/v1/status"), format_status)
    return EXIT_OK


def cmd_peers(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.emit(client.request("GET", "/v1/peers"), format_peers)
    return EXIT_OK


def cmd_connect(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    peer = check_peer_address(args.peer)
    body = {"peer": peer, "timeout": args.timeout, "path": args.path}
    out.emit(
        client.request("POST", "/v1/connect", body, timeout=args.timeout + LOOKUP_BUDGET), format_connect
    )
    return EXIT_OK


def cmd_lookup(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    peer = check_peer_id(args.peer)
    query = urlencode({"peer": peer.to_text(), "timeout": f"{args.timeout:g}"})
    out.emit(client.request("GET", "/v1/lookup?" + query, timeout=args.timeout + 5), format_lookup)
    return EXIT_OK


def cmd_ping(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    peer = check_peer_id(args.peer)
    body = {"peer": peer.to_text(), "count": args.count, "timeout": args.timeout, "interval": args.interval}
    # A peer not connected yet is first resolved through the DHT and connected by the node.
    budget = args.count * (args.timeout + args.interval) + LOOKUP_BUDGET
    out.emit(client.request("POST", "/v1/ping", body, timeout=budget), format_ping)
    return EXIT_OK


def cmd_send(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    peer = check_peer_id(args.peer)
    body: JsonObject = {"peer": peer.to_text()}
    body.update(_data(args))
    out.emit(client.request("POST", "/v1/send", body), format_send)
    return EXIT_OK


def _data(args: argparse.Namespace) -> JsonObject:
    """TEXT as the API's message fields: ``data``, or ``data_b64`` with ``--base64``."""
    return {"data_b64": check_base64(args.text)} if args.base64 else {"data": args.text}


def cmd_recv(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    query: dict[str, str] = {"timeout": f"{args.timeout:g}"}
    if args.count > 0:
        query["count"] = str(args.count)
    t0 = time.monotonic()
    data = client.request("GET", "/v1/messages?" + urlencode(query), timeout=args.timeout + 10)
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise CliError(f"unexpected answer from the admin API at {client.address}: no message list")
    for msg in messages:
        out.emit(msg, format_message)
    if args.count > 0 and len(messages) < args.count:
        waited = time.monotonic() - t0
        raise CliError(f"received {len(messages)} of {args.count} message(s) within {waited:.1f}s")
    return EXIT_OK


def cmd_routes(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.emit(client.request("GET", "/v1/routes"), format_routes)
    return EXIT_OK


def cmd_route(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    peer = check_peer_id(args.peer)
    body = {"peer": peer.to_text(), "timeout": args.timeout}
    budget = args.timeout * ROUTE_MAX_HOPS + 10
    out.emit(client.request("POST", "/v1/route", body, timeout=budget), format_route)
    return EXIT_OK


def cmd_broadcast(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.emit(client.request("POST", "/v1/broadcast", _data(args)), format_broadcast)
    return EXIT_OK


def cmd_join(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = {"group": check_group(args.group)}
    out.emit(client.request("POST", "/v1/join", body), _membership("joined"))
    return EXIT_OK


def cmd_leave(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = {"group": check_group(args.group)}
    out.emit(client.request("POST", "/v1/leave", body), _membership("left"))
    return EXIT_OK


def cmd_multicast(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = {"group": check_group(args.group), **_data(args)}
    out.emit(client.request("POST", "/v1/multicast", body), format_multicast)
    return EXIT_OK


def cmd_groups(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    out.emit(client.request("GET", "/v1/groups"), format_groups)
    return EXIT_OK


def cmd_acl(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    if args.mode is None:
        out.emit(client.request("GET", "/v1/acl"), format_acl)
    else:
        out.emit(client.request("POST", "/v1/acl", {"mode": args.mode}), format_acl)
    return EXIT_OK


def cmd_allow(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = {"peer": check_peer_id(args.peer).to_text(), "remove": args.remove}
    out.emit(client.request("POST", "/v1/allow", body), _acl_change("allowed"))
    return EXIT_OK


def cmd_deny(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    body = {"peer": check_peer_id(args.peer).to_text(), "remove": args.remove}
    out.emit(client.request("POST", "/v1/deny", body), _acl_change("denied"))
    return EXIT_OK


NETCHECK_HTTP_TIMEOUT: Final = 100.0  # the node bounds a run at 90 s


def cmd_netcheck(args: argparse.Namespace, client: AdminClient, out: Output) -> int:
    path = "/v1/netcheck?refresh=1" if args.refresh else "/v1/netcheck"
    out.emit(client.request("GET", path, timeout=NETCHECK_HTTP_TIMEOUT), format_netcheck)
    return EXIT_OK


# ------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Usage errors are ONE line on stderr, then exit 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG) :].strip()  # "coremesh ping" -> "ping"
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"{PROG}: error: {where}{message} (see {self.prog} --help)\n")


def _whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}, got {value}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type``: seconds from ``low`` to ``high`` (NaN and infinities are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low:g} to {high:g} seconds, got {text}")
        return value

    return parse


def _span(limits: tuple[float, float]) -> str:
    return f"{limits[0]:g} to {limits[1]:g}"


_SEND_OPTIONS: Final = frozenset({"-h", "--help", "--json", "--base64"})
_TEXT_COMMANDS: Final = frozenset({"send", "broadcast", "multicast"})  # they take a TEXT, same options


def protect_send_text(argv: Sequence[str]) -> list[str]:
    """``send PEERID -hello``: make a TEXT (or PEERID) that starts with ``-`` a positional argument.

    argparse would take ``-hello`` for options (``-h`` with ``ello``). Within ``send`` (and
    ``broadcast``, ``multicast``), every argument that is not one of their own options (``-h``,
    ``--help``, ``--json``, ``--base64``) is moved after a ``--``; an explicit ``--`` keeps working.
    So a TEXT that is exactly one of those options still needs ``--`` before it:
    ``coremesh send PEERID -- --json``.
    """
    args = list(argv)
    i = 0
    while i < len(args):  # skip the global options to find the command
        token = args[i]
        if token == "--" or not token.startswith("-") or token == "-":
            break
        name, has_value, _ = token.partition("=")
        if not has_value and len(name) > 2 and "--admin".startswith(name):
            i += 1  # --admin's value
        i += 1
    if i >= len(args) or args[i] not in _TEXT_COMMANDS:
        return args
    options: list[str] = []
    positionals: list[str] = []
    rest = args[i + 1 :]
    for j, token in enumerate(rest):
        if token == "--":
            positionals.extend(rest[j + 1 :])
            break
        (options if token in _SEND_OPTIONS else positionals).append(token)
    return [*args[: i + 1], *options, "--", *positionals]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("coremesh")
    except Exception:
        return "unknown"


_FMT: Final = argparse.RawDescriptionHelpFormatter
GROUP_HELP: Final = f"the group: 1 to {GROUP_NAME_MAX} letters, digits and . _ - : /"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Operate a running coremesh-node through its admin HTTP API: show its status and peers, "
            "connect to peers, ping them, send and receive messages."
        ),
        epilog=(
            "examples:\n"
            "  coremesh status\n"
            "  coremesh --admin 127.0.0.1:7947 connect PEERID@192.0.2.10:7946\n"
            "  coremesh ping PEERID --count 5 --json\n"
            "  coremesh send PEERID 'hello'\n"
            "  coremesh recv --count 1 --timeout 10 --json\n"
            "  coremesh routes\n"
            "  coremesh broadcast 'hello, mesh'\n\n"
            f"--admin defaults to ${ENV_ADMIN}, else {DEFAULT_ADMIN}.\n"
            "exit status: 0 ok; 1 the operation failed (node not running, unknown peer, timeout,\n"
            "fewer messages than --count); 2 bad command line or input (malformed peer id, ...)."
        ),
        formatter_class=_FMT,
    )
    parser.add_argument(
        "--admin",
        metavar="HOST:PORT",
        default=None,
        help=f"the node's admin API (default: ${ENV_ADMIN} or {DEFAULT_ADMIN})",
    )
    parser.add_argument("--json", action="store_true", default=False, help="machine-readable JSON output")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=summary,
            description=description,
            epilog="examples:\n" + examples,
            formatter_class=_FMT,
        )
        p.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print the admin API's JSON answer instead of text",
        )
        return p

    p = command(
        "status",
        "show the node's identity, addresses and counters",
        "Show the node's peer id, the addresses peers can dial, the admin address, version, uptime, "
        "number of connections and its counters.\n--json prints an object with at least peer_id and "
        "addresses. Against a coremesh-relay it shows the relay's services (STUN/TURN, keyed relay) "
        "and their counters; against a coremesh-bootstrap, its DHT.",
        "  coremesh status\n  coremesh --admin 127.0.0.1:7947 status --json | jq -r .peer_id",
    )
    p.set_defaults(func=cmd_status)

    p = command(
        "peers",
        "list the node's peers",
        "List every peer the node knows: peer id, address, connection state, path and round-trip time.\n"
        '--json prints {"peers": [...]} with every field the node reports.',
        "  coremesh peers\n  coremesh peers --json | jq '.peers[] | select(.state == \"connected\")'",
    )
    p.set_defaults(func=cmd_peers)

    p = command(
        "connect",
        "connect to a peer",
        "Make the node connect to a peer and wait until the secure session is up (or fails).\n"
        "The peer id is checked before anything is sent.",
        "  coremesh connect PEERID@192.0.2.10:7946\n  coremesh connect PEERID@[2001:db8::7]:7946 --json\n"
        "  coremesh connect PEERID",
    )
    p.add_argument(
        "peer",
        metavar="PEERID[@HOST:PORT]",
        help="the peer's id and UDP address, or its id alone (resolved through the DHT)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds(*CONNECT_TIMEOUT_RANGE),
        default=10.0,
        metavar="S",
        help=f"give up after S seconds (10; {_span(CONNECT_TIMEOUT_RANGE)})",
    )
    p.add_argument(
        "--path",
        choices=CONNECT_PATHS,
        default="auto",
        help="auto: directly, then through the node's relays if the peer does not answer (default); "
        "direct: UDP only; relay: through a TURN allocation or the keyed relay only; "
        "routed: through other peers of the mesh (a PeerId alone, with a route to it: see routes)",
    )
    p.set_defaults(func=cmd_connect)

    p = command(
        "lookup",
        "find a peer's signed record through the DHT",
        "Look a PeerId up in the mesh's DHT and print its signed record: its candidate addresses\n"
        "(host, srflx, relay, keyed), sequence number and expiry. Fails with one line when the\n"
        "network has no live record of the id.",
        "  coremesh lookup PEERID\n  coremesh lookup PEERID --json | jq -r '.addresses[].address'",
    )
    p.add_argument("peer", metavar="PEERID", help="the id to look up")
    p.add_argument(
        "--timeout",
        type=_seconds(*LOOKUP_TIMEOUT_RANGE),
        default=5.0,
        metavar="S",
        help=f"give up after S seconds (5; {_span(LOOKUP_TIMEOUT_RANGE)})",
    )
    p.set_defaults(func=cmd_lookup)

    p = command(
        "ping",
        "measure the round-trip time to a peer",
        "Send COUNT pings to a peer over the mesh and report the round-trip times. A peer that is\n"
        "not connected yet is found by its id through the DHT (or the routing table) and connected\n"
        "first; on a routed path the hops (the peers that carry it) are shown.\n"
        "--json prints an object with rtt_ms (mean), rtts_ms, min_ms, max_ms, path, sent, received,\n"
        "via (direct, turn, keyed or routed), reason (why the path is relayed, or null) and hops\n"
        "(the peer ids a routed path passes, [] otherwise).",
        "  coremesh ping PEERID\n  coremesh ping PEERID --count 10 --interval 0.5 --json",
    )
    p.add_argument("peer", metavar="PEERID", help="the peer's id")
    p.add_argument(
        "--count",
        "-c",
        type=_whole_number(*PING_COUNT_RANGE),
        default=1,
        metavar="N",
        help=f"number of pings (1; {_span(PING_COUNT_RANGE)})",
    )
    p.add_argument(
        "--interval",
        type=_seconds(*PING_INTERVAL_RANGE),
        default=0.1,
        metavar="S",
        help=f"between pings (0.1; {_span(PING_INTERVAL_RANGE)})",
    )
    p.add_argument(
        "--timeout",
        type=_seconds(*PING_TIMEOUT_RANGE),
        default=5.0,
        metavar="S",
        help=f"wait per ping (5; {_span(PING_TIMEOUT_RANGE)})",
    )
    p.set_defaults(func=cmd_ping)

    p = command(
        "send",
        "send one message to a connected peer",
        "Send TEXT (UTF-8) as one message to a connected peer. With --base64, TEXT is base64 and the "
        "decoded bytes are sent.\nTEXT may start with '-' (coremesh send PEERID -hello); a TEXT that is "
        "exactly one of send's options (--json, --base64, -h, --help) needs -- before it.",
        "  coremesh send PEERID 'hello, mesh'\n  coremesh send PEERID --base64 AAECAw==\n"
        "  coremesh send PEERID -- --json",
    )
    p.add_argument("peer", metavar="PEERID", help="a connected peer's id")
    p.add_argument("text", metavar="TEXT", help="the message")
    p.add_argument("--base64", action="store_true", help="TEXT is base64-encoded bytes")
    p.set_defaults(func=cmd_send)

    p = command(
        "recv",
        "receive messages from the node's inbox",
        "Wait until COUNT messages are in the node's inbox or TIMEOUT seconds passed, then take them out "
        "and print them in arrival order (one line each; with --json one object per line with from, "
        'data, ts, and "encoding": "base64" when the payload is not UTF-8).\n'
        "Exits 1 if fewer than COUNT came in time, after printing those that did. --count 0 takes "
        "every queued message (waiting up to TIMEOUT for the first).",
        "  coremesh recv\n  coremesh recv --count 3 --timeout 30 --json",
    )
    p.add_argument(
        "--count",
        "-c",
        type=_whole_number(0, MAX_RECV_COUNT),
        default=1,
        metavar="N",
        help="messages to wait for (1; 0 takes every queued message)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds(*RECV_TIMEOUT_RANGE),
        default=10.0,
        metavar="S",
        help=f"wait at most S seconds (10; {_span(RECV_TIMEOUT_RANGE)})",
    )
    p.set_defaults(func=cmd_recv)

    p = command(
        "netcheck",
        "show the node's NAT type, public addresses and relay latency",
        "Show what the node measured about its network from its own UDP socket: NAT mapping and "
        "filtering behaviour (RFC 4787/5780 terms and the classic name), public IPv4/IPv6 addresses, "
        "port preservation, hairpinning, UDP blocked or not, latency per relay, and when it last ran.\n"
        "The node keeps this current; --refresh makes it measure again now (a few seconds).",
        "  coremesh netcheck\n  coremesh --admin 127.0.0.1:7947 netcheck --json | jq -r .nat_type\n"
        "  coremesh netcheck --refresh",
    )
    p.add_argument("--refresh", action="store_true", help="measure again now instead of the last result")
    p.set_defaults(func=cmd_netcheck)

    p = command(
        "routes",
        "show the overlay routing table",
        "Show the node's overlay routes (docs/routing.md): for each destination the next hop, the "
        "metric (lower is better), the number of hops and the age of the route, then its backups.\n"
        '--json prints {"routes": [...]}, each with destination, next_hop, metric, hops (peer ids, '
        "next hop first), seqno, age_s and backups (next_hop, metric, hops).",
        "  coremesh routes\n  coremesh routes --json | jq -r '.routes[] | [.destination, .metric] | @tsv'",
    )
    p.set_defaults(func=cmd_routes)

    p = command(
        "route",
        "trace the route to a peer, hop by hop",
        "Traceroute over the overlay: one probe per hop limit (at most 32), printing each hop's peer "
        "id and its round-trip time ('*' when no answer came within --timeout).\n--json prints an "
        "object with peer_id, hops ([{hop, peer_id, rtt_ms}], null when no answer), reached and "
        "elapsed_ms.",
        "  coremesh route PEERID\n  coremesh route PEERID --json | jq '.hops[].rtt_ms'",
    )
    p.add_argument("peer", metavar="PEERID", help="the destination's id")
    p.add_argument(
        "--timeout",
        type=_seconds(*ROUTE_TIMEOUT_RANGE),
        default=5.0,
        metavar="S",
        help=f"wait S seconds for each hop's answer (5; {_span(ROUTE_TIMEOUT_RANGE)})",
    )
    p.set_defaults(func=cmd_route)

    p = command(
        "broadcast",
        "send one message to every node of the mesh",
        "Send TEXT (UTF-8; with --base64, the decoded bytes) to every node of the connected mesh, "
        "through the routing tree: each delivers it once, and `coremesh recv` there shows it with "
        '"kind": "broadcast". One packet: at most about 1 KB.',
        "  coremesh broadcast 'hello, everyone'\n  coremesh broadcast --base64 AAECAw==",
    )
    p.add_argument("text", metavar="TEXT", help="the message")
    p.add_argument("--base64", action="store_true", help="TEXT is base64-encoded bytes")
    p.set_defaults(func=cmd_broadcast)

    for name, verb, what in (
        ("join", "join", "Join GROUP: the node then delivers the group's multicasts (to `coremesh recv`)."),
        ("leave", "leave", "Leave GROUP: the node stops delivering its multicasts."),
    ):
        p = command(
            name,
            f"{verb} a multicast group",
            f"{what} Membership is signed and announced to the mesh.\n--json prints the group and "
            "every group the node is now a member of.",
            f"  coremesh {name} chat\n  coremesh {name} sensors/room-1 --json",
        )
        p.add_argument("group", metavar="GROUP", help=GROUP_HELP)
        p.set_defaults(func=cmd_join if name == "join" else cmd_leave)

    p = command(
        "multicast",
        "send one message to a multicast group",
        "Send TEXT (UTF-8; with --base64, the decoded bytes) to the members of GROUP (the sender need "
        'not be one); `coremesh recv` on a member shows it with "kind": "multicast" and its "group".',
        "  coremesh multicast chat 'hello, group'\n  coremesh multicast chat --base64 AAECAw==",
    )
    p.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    p.add_argument("text", metavar="TEXT", help="the message")
    p.add_argument("--base64", action="store_true", help="TEXT is base64-encoded bytes")
    p.set_defaults(func=cmd_multicast)

    p = command(
        "groups",
        "list the multicast groups the node is a member of",
        'List the groups this node joined, one per line.\n--json prints {"groups": [...]}.',
        "  coremesh groups\n  coremesh groups --json",
    )
    p.set_defaults(func=cmd_groups)

    p = command(
        "allow",
        "allow a peer (an allow-list closes the mesh)",
        "Put PEERID on the node's allow-list and off its deny-list (docs/access.md). With an allow-list "
        "the mesh is closed: every peer not on it is refused in the handshake (also through the overlay) "
        "and its connection, if any, is closed; allowing a peer on an open mesh closes it. Saved in the "
        "node's data dir: a restart keeps it.\n--json prints the peer, the lists and connections_closed.",
        "  coremesh allow PEERID\n  coremesh allow PEERID --remove",
    )
    p.add_argument("peer", metavar="PEERID", help="the peer's id")
    p.add_argument("--remove", action="store_true", help="take PEERID off the allow-list instead")
    p.set_defaults(func=cmd_allow)

    p = command(
        "deny",
        "refuse a peer and close its connection",
        "Put PEERID on the node's deny-list and off its allow-list: it is refused whatever the allow-list "
        "says (deny wins), its open connection is closed now, and its handshakes are refused from then on. "
        "Saved in the node's data dir.\n--json prints the peer, the lists and connections_closed.",
        "  coremesh deny PEERID\n  coremesh deny PEERID --remove",
    )
    p.add_argument("peer", metavar="PEERID", help="the peer's id")
    p.add_argument("--remove", action="store_true", help="take PEERID off the deny-list instead")
    p.set_defaults(func=cmd_deny)

    p = command(
        "acl",
        "show the allow-list and deny-list",
        "Show whether the mesh is open or closed, and the allowed and denied peers.\n--json prints mode, "
        "allow, deny, saved_to (the file in the data dir) and decisions (by reason: open, allow_listed, "
        "denied, not_allowed).",
        "  coremesh acl\n  coremesh acl --json | jq -r '.deny[]'\n  coremesh acl --open",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--open",
        dest="mode",
        action="store_const",
        const="open",
        default=None,
        help="drop the allow-list: every peer but the denied may connect",
    )
    mode.add_argument(
        "--close",
        dest="mode",
        action="store_const",
        const="closed",
        help="close the mesh: only allowed peers (none, with an empty allow-list) may connect",
    )
    p.set_defaults(func=cmd_acl)
    return parser


# --------------------------------------------------------------------------------------------- main

# What each command needs that only a coremesh-node offers, said of a service that lacks it.
_LACKS: Final = {
    "peers": "it has no peers",
    "connect": "it does not connect to peers",
    "lookup": "it has no DHT",
    "ping": "it does not ping peers",
    "send": "it does not send messages",
    "recv": "it has no inbox of messages",
    "netcheck": "it does not run netcheck",
    "routes": "it does not route",
    "route": "it does not route",
    "broadcast": "it does not broadcast",
    "join": "it has no multicast groups",
    "leave": "it has no multicast groups",
    "multicast": "it has no multicast groups",
    "groups": "it has no multicast groups",
    "allow": "it has no access lists",
    "deny": "it has no access lists",
    "acl": "it has no access lists",
}


def _not_offered(client: AdminClient, command: str) -> str | None:
    """When ``command``'s endpoint is missing: name the service behind ``--admin`` (from its
    ``/v1/status``) and what it lacks; None if it is a node after all, or cannot tell."""
    try:
        role = client.request("GET", "/v1/status").get("role")
    except CliError:
        return None
    if not isinstance(role, str) or role in ("", "node"):
        return None
    lacks = _LACKS.get(command, f"it does not offer `{command}`")
    return f"this is a coremesh-{role}, not a coremesh-node: {lacks} (try `coremesh status`)"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser().parse_args(protect_send_text(sys.argv[1:] if argv is None else argv))
    try:
        client = AdminClient(check_admin(args.admin or env.get(ENV_ADMIN) or DEFAULT_ADMIN))
        func: Callable[[argparse.Namespace, AdminClient, Output], int] = args.func
        return func(args, client, Output(sys.stdout, bool(args.json)))
    except ApiRefused as exc:
        message = str(exc)
        if exc.status == 404 and exc.code == "not_found":  # no such endpoint: not a node?
            message = _not_offered(client, args.command) or message
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return exc.exit_code
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `coremesh peers | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
