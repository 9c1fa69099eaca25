"""Interoperability with third-party STUN/TURN software, over real sockets on loopback (issue 4).

- Third-party clients against OUR server (``StunTurnService`` in-process, or the ``coremesh-relay``
  console script): coturn's ``turnutils_stunclient`` (RFC 5780), ``pystun3`` (a classic RFC 3489
  client), and coturn's ``turnutils_uclient`` relaying through us to ``turnutils_peer`` (an echo
  peer) with static long-term credentials and with TURN REST API credentials from a shared secret.
- OUR client core (``coremesh.turn.TurnClient``) against a third-party server: coturn's
  ``turnserver`` on 127.0.0.1, driven over a real UDP socket: Allocate, CreatePermission, Send/Data
  indications, ChannelBind and ChannelData both ways to a plain UDP echo socket, Refresh, and
  Refresh with LIFETIME 0.

The coturn tools come from Debian's ``coturn`` package (``scripts/test.sh`` installs it); a missing
tool fails the test. Every process started here is stopped by its PID in a ``finally``. All traffic
stays on 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from coremesh_relay.stunturn import StunTurnService
from coremesh_relay.stunturn_config import StunTurnConfig

from coremesh.addr import Address
from coremesh.stun.credentials import rest_api_credentials
from coremesh.stun.message import Method, StunClass, StunMessage, decode, encode
from coremesh.turn import Allocated, AllocationLost, ClientState, TurnClient, TurnClientEvent

pytestmark = pytest.mark.integration
T = TypeVar("T")

LOOPBACK = "127.0.0.1"
ALT_LOOPBACK = "127.0.0.2"  # RFC 5780 alternate address: 127.0.0.0/8 is all loopback on Linux
REALM = "interop.test"
USER, PASSWORD = "alice", "wonderland"
SECRET = "interop-shared-secret"
# Relay port ranges, per test process, away from the ranges other tests use (40000 + pid % 200 * 100).
_SLOT = os.getpid() % 50
OUR_PORTS = (30000 + _SLOT * 40, 30000 + _SLOT * 40 + 19)
COTURN_PORTS = (30000 + _SLOT * 40 + 20, 30000 + _SLOT * 40 + 39)


def run(fn: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(bounded())


def tool(name: str) -> str:
    """The path of a third-party tool; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's coturn package (scripts/test.sh does)")
    return path


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def free_udp_tcp_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP right now."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Popen objects appended to the list are stopped by PID on exit, also on failure."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            stop_process(p)


def stun_binding(port: int, host: str = LOOPBACK, timeout: float = 0.3) -> bool:
    """One RFC 8489 Binding request; True if a success response came back."""
    msg = StunMessage(Method.BINDING, StunClass.REQUEST, random.randbytes(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind((LOOPBACK, 0))
        try:
            s.sendto(encode(msg), (host, port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    try:
        resp = decode(data)
    except Exception:
        return False
    return resp.msg_class is StunClass.SUCCESS and resp.transaction_id == msg.transaction_id


def wait_for_stun(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 15.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace")
            pytest.fail(f"{what} exited with {proc.returncode} before answering STUN:\n{out[-3000:]}")
        if stun_binding(port):
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not answer a STUN Binding request on port {port} within {timeout} s")


def start_echo_peer(procs: list[subprocess.Popen[bytes]]) -> Address:
    """``turnutils_peer`` (coturn's UDP echo peer) on 127.0.0.1; returns once it echoes."""
    peer = tool("turnutils_peer")
    port = free_port()
    proc = subprocess.Popen(
        [peer, "-L", LOOPBACK, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    procs.append(proc)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.bind((LOOPBACK, 0))
        for _ in range(50):
            if proc.poll() is not None:
                pytest.fail(f"turnutils_peer exited with {proc.returncode}")
            s.sendto(b"ping", (LOOPBACK, port))
            try:
                if s.recvfrom(2048)[0] == b"ping":
                    return Address(LOOPBACK, port)
            except OSError:
                continue
    pytest.fail("turnutils_peer does not echo")


# ------------------------------------------------------------------------ turnutils_uclient output


@dataclass(frozen=True)
class UclientReport:
    sent_msgs: int
    recv_msgs: int
    sent_bytes: int
    recv_bytes: int
    lost: int
    loss_percent: float
    transmit_s: int


_TOTALS = re.compile(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", re.M)
_BYTES = re.compile(r"start_mclient: tot_send_bytes ~ (\d+), tot_recv_bytes ~ (\d+)\s*$", re.M)
_LOST = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\)")
_TIME = re.compile(r"Total transmit time is (\d+)")


def parse_uclient(output: str) -> UclientReport:
    """The final report of ``turnutils_uclient`` (its last lines), e.g.::

    5: : start_mclient: tot_send_msgs=200, tot_recv_msgs=200
    5: : start_mclient: tot_send_bytes ~ 240000, tot_recv_bytes ~ 240000
    5: : Total transmit time is 5
    5: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
    """
    totals, sizes = _TOTALS.findall(output), _BYTES.findall(output)
    lost, transmit = _LOST.search(output), _TIME.search(output)
    if not totals or not sizes or lost is None or transmit is None:
        raise AssertionError(f"no final report in turnutils_uclient's output:\n{output[-3000:]}")
    return UclientReport(
        sent_msgs=int(totals[-1][0]),
        recv_msgs=int(totals[-1][1]),
        sent_bytes=int(sizes[-1][0]),
        recv_bytes=int(sizes[-1][1]),
        lost=int(lost.group(1)),
        loss_percent=float(lost.group(2)),
        transmit_s=int(transmit.group(1)),
    )


async def run_tool(argv: list[str], timeout: float) -> tuple[int, str]:
    """A third-party tool as an asyncio subprocess (so an in-process server keeps running);
    stopped by its PID if it overruns. Returns (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        pytest.fail(f"{Path(argv[0]).name} did not finish within {timeout} s: {' '.join(argv)}")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def uclient_argv(
    server_port: int,
    peer: Address,
    *,
    user: str,
    password: str | None = None,
    secret: str | None = None,
    clients: int = 4,
    messages: int = 50,
    send_indications: bool = True,
    tcp: bool = False,
    size: int = 1200,
) -> list[str]:
    argv = [tool("turnutils_uclient"), "-p", str(server_port), "-e", peer.host, "-r", str(peer.port)]
    argv += ["-u", user, "-m", str(clients), "-l", str(size), "-n", str(messages)]
    argv += ["-w", password] if password is not None else ["-W", str(secret)]
    if send_indications:
        argv.append("-s")
    if tcp:
        argv.append("-t")
    return [*argv, LOOPBACK]


def assert_relayed(rc: int, output: str, clients: int, messages: int, size: int = 1200) -> UclientReport:
    assert rc == 0, f"turnutils_uclient exited with {rc}:\n{output[-3000:]}"
    report = parse_uclient(output)
    assert report.sent_msgs == clients * messages, report
    assert report.sent_bytes == report.sent_msgs * size, report
    assert report.loss_percent <= 2.0, report  # paced at 20 ms per client on loopback: none expected
    assert report.recv_msgs >= report.sent_msgs * 0.98, report
    return report


# ------------------------------------------------------------------------------ our server, in-process


@contextlib.asynccontextmanager
async def our_server(**kw: object) -> AsyncIterator[StunTurnService]:
    base: dict[str, object] = {
        "listen": Address(LOOPBACK, 0),
        "realm": REALM,
        "users": {USER: PASSWORD},
        "static_auth_secret": SECRET,
        "allow_loopback_peers": True,
        "min_port": OUR_PORTS[0],
        "max_port": OUR_PORTS[1],
    }
    base.update(kw)
    service = StunTurnService(StunTurnConfig(**base))  # type: ignore[arg-type]
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def udp_port(service: StunTurnService) -> int:
    return service.addresses[0].port


def test_turnutils_stunclient_gets_a_mapped_address_and_rfc5780_answers() -> None:
    stunclient = tool("turnutils_stunclient")

    async def body() -> None:
        async with our_server(alt_address=ALT_LOOPBACK) as service:
            port = udp_port(service)
            rc, out = await run_tool([stunclient, "-p", str(port), LOOPBACK], timeout=30)
            assert rc == 0, out
            mapped = re.findall(r"UDP reflexive addr: (127\.0\.0\.1):(\d+)", out)
            assert mapped, out
            # RFC 5780: the alternate address is announced, and CHANGE-REQUEST answered from it.
            assert f"Other addr: : {ALT_LOOPBACK}:{port + 1}" in out, out
            assert f"Response origin: : {ALT_LOOPBACK}:{port + 1}" in out, out
            assert f"Response origin: : {LOOPBACK}:{port}" in out, out
            assert service.binding is not None
            assert service.binding.counters["binding_success"] >= 3

    run(body)


def test_turnutils_stunclient_without_alt_address() -> None:
    stunclient = tool("turnutils_stunclient")

    async def body() -> None:
        async with our_server() as service:
            port = udp_port(service)
            rc, out = await run_tool([stunclient, "-p", str(port), LOOPBACK], timeout=30)
            assert rc == 0, out
            assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out), out

    run(body)


def test_pystun3_classic_rfc3489_client() -> None:
    try:
        import stun as pystun3  # PyPI pystun3: a classic RFC 3489 client
    except ImportError:
        pytest.fail("pystun3 is not installed: pip install -e '.[dev]'")

    async def body() -> None:
        async with our_server(alt_address=ALT_LOOPBACK) as service:
            port = udp_port(service)
            source_port = free_port()
            # Always our host and port: pystun3's defaults are public servers.
            nat_type, ip, mapped_port = await asyncio.to_thread(
                pystun3.get_ip_info,
                source_ip=LOOPBACK,
                source_port=source_port,
                stun_host=LOOPBACK,
                stun_port=port,
            )
            assert (ip, mapped_port) == (LOOPBACK, source_port)
            # Its test II (CHANGE-REQUEST ip+port) was answered from 127.0.0.2:PORT+1.
            assert nat_type == pystun3.OpenInternet
            assert service.binding is not None
            assert service.binding.counters["rfc3489"] >= 2

            # Its test I, by hand: MAPPED-ADDRESS and CHANGED-ADDRESS (RFC 3489 attributes).
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.settimeout(2)
                sock.bind((LOOPBACK, 0))
                own_port = sock.getsockname()[1]
                pystun3._initialize()
                reply = await asyncio.to_thread(pystun3.stun_test, sock, LOOPBACK, port, LOOPBACK, own_port)
            finally:
                sock.close()
            assert reply["Resp"] is True
            assert (reply["ExternalIP"], reply["ExternalPort"]) == (LOOPBACK, own_port)
            assert (reply["SourceIP"], reply["SourcePort"]) == (LOOPBACK, port)
            assert (reply["ChangedIP"], reply["ChangedPort"]) == (ALT_LOOPBACK, port + 1)

    run(body)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_turnutils_uclient_relays_through_us_with_long_term_credentials(transport: str) -> None:
    async def body() -> None:
        with processes() as procs:
            peer = start_echo_peer(procs)
            async with our_server() as service:
                argv = uclient_argv(
                    udp_port(service), peer, user=USER, password=PASSWORD, tcp=transport == "tcp"
                )
                rc, out = await run_tool(argv, timeout=60)
                assert_relayed(rc, out, clients=4, messages=50)
                assert service.turn is not None

    run(body, timeout=90)


def test_turnutils_uclient_relays_through_us_with_rest_api_credentials() -> None:
    async def body() -> None:
        with processes() as procs:
            peer = start_echo_peer(procs)
            async with our_server() as service:
                # uclient -W SECRET makes "EXPIRY:USER" usernames with base64(HMAC-SHA1) passwords.
                argv = uclient_argv(udp_port(service), peer, user="bob", secret=SECRET)
                rc, out = await run_tool(argv, timeout=60)
                assert_relayed(rc, out, clients=4, messages=50)
                # The wrong secret is refused.
                argv = uclient_argv(udp_port(service), peer, user="bob", secret="not-the-secret")
                rc, out = await run_tool(argv, timeout=60)
                assert rc != 0, out
                assert "Cannot complete Allocation" in out, out
                assert service.turn is not None and service.turn.counters["auth_failures"] > 0

    run(body, timeout=90)


def test_coremesh_relay_cli_with_coturn_style_flags_serves_uclient() -> None:
    """The console script, with the flags coturn users know, against uclient and a REST credential."""
    relay = shutil.which("coremesh-relay") or str(Path(sys.executable).with_name("coremesh-relay"))
    if not Path(relay).exists():
        pytest.fail("coremesh-relay is not installed in this environment")
    port, admin = free_udp_tcp_port(), free_port(socket.SOCK_STREAM)
    argv = [
        relay,
        "--listen", f"{LOOPBACK}:{port}",
        "--realm", REALM,
        "--user", f"{USER}:{PASSWORD}",
        "--static-auth-secret", SECRET,
        "--allow-loopback-peers",
        "--min-port", str(OUR_PORTS[0]),
        "--max-port", str(OUR_PORTS[1]),
        "--admin", f"{LOOPBACK}:{admin}",
        "--log-format", "text",
    ]  # fmt: skip

    async def body(log: Path) -> None:
        with processes() as procs, log.open("wb") as out_file:
            proc = subprocess.Popen(argv, stdout=out_file, stderr=subprocess.STDOUT)
            procs.append(proc)
            await asyncio.to_thread(wait_for_stun, port, proc, "coremesh-relay", log)
            peer = start_echo_peer(procs)
            rc, out = await run_tool(uclient_argv(port, peer, user=USER, password=PASSWORD), 60)
            assert_relayed(rc, out, clients=4, messages=50)
            username, password = rest_api_credentials(SECRET, time.time(), 600, "carol")
            rc, out = await run_tool(uclient_argv(port, peer, user=username, password=password), 60)
            assert_relayed(rc, out, clients=4, messages=50)
            # An expired REST API credential is refused.
            username, password = rest_api_credentials(SECRET, time.time(), -60, "carol")
            rc, out = await run_tool(uclient_argv(port, peer, user=username, password=password), 60)
            assert rc != 0 and "Cannot complete Allocation" in out, out
            stop_process(proc)
            assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]

    with tempfile.TemporaryDirectory(prefix="coremesh-relay-") as tmp:
        run(lambda: body(Path(tmp) / "relay.log"), timeout=120)


@pytest.mark.parametrize(("transport", "size"), [("udp", 1200), ("tcp", 1200), ("udp", 1201), ("tcp", 1201)])
def test_turnutils_uclient_channels_through_us(transport: str, size: int) -> None:
    """uclient's default: ChannelBind, then ChannelData. It picks channel numbers in 0x4000-0x7FFF
    (RFC 5766's range; RFC 8656 narrowed it to 0x4000-0x4FFF), so the server must accept those.
    Over TCP, uclient does not pad ChannelData to four bytes (size 1201) unless given -D."""

    async def body() -> None:
        with processes() as procs:
            peer = start_echo_peer(procs)
            async with our_server() as service:
                argv = uclient_argv(
                    udp_port(service),
                    peer,
                    user=USER,
                    password=PASSWORD,
                    send_indications=False,
                    tcp=transport == "tcp",
                    size=size,
                )
                rc, out = await run_tool(argv, timeout=60)
                assert_relayed(rc, out, clients=4, messages=50, size=size)

    run(body, timeout=90)


# --------------------------------------------------------------------- our client, coturn's server


def coturn_argv(workdir: Path, port: int, *, rest_api: bool = False) -> list[str]:
    """``turnserver`` strictly on loopback, no config file, nothing written outside ``workdir``."""
    argv = [
        tool("turnserver"),
        "-n",  # no configuration file
        "--listening-ip", LOOPBACK,
        "--relay-ip", LOOPBACK,
        "--listening-port", str(port),
        "--min-port", str(COTURN_PORTS[0]),
        "--max-port", str(COTURN_PORTS[1]),
        "--realm", REALM,
        "--allow-loopback-peers",
        "--no-tls", "--no-dtls", "--no-cli",
        "--log-file", "stdout",
        "--pidfile", str(workdir / "turnserver.pid"),
        "--userdb", str(workdir / "turndb"),  # not /var/lib/turn/turndb
    ]  # fmt: skip
    if rest_api:
        argv += ["--use-auth-secret", "--static-auth-secret", SECRET]
    else:
        argv += ["--lt-cred-mech", "--user", f"{USER}:{PASSWORD}"]
    return argv


@contextlib.contextmanager
def coturn(*, rest_api: bool = False) -> Iterator[int]:
    """A coturn ``turnserver`` on 127.0.0.1; yields its port; stopped by PID on exit."""
    with tempfile.TemporaryDirectory(prefix="coturn-") as tmp, processes() as procs:
        port = free_udp_tcp_port()
        log = Path(tmp) / "turnserver.log"
        with log.open("wb") as out_file:
            proc = subprocess.Popen(
                coturn_argv(Path(tmp), port, rest_api=rest_api), stdout=out_file, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        wait_for_stun(port, proc, "turnserver", log)
        yield port


@dataclass
class ClientShell:
    """Drives a sans-IO :class:`TurnClient` over one real UDP socket, on a clock that a test can
    move forward (``skew``) to reach the client's refresh times without waiting minutes."""

    client: TurnClient
    sock: socket.socket
    skew: float = 0.0
    events: list[TurnClientEvent] = field(default_factory=list)
    data: list[tuple[Address, bytes, bool]] = field(default_factory=list)  # peer, payload, channel?
    sent: list[tuple[Method, StunClass]] = field(default_factory=list)
    received: list[tuple[Method, StunClass, int | None]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() + self.skew

    def flush(self) -> None:
        for datagram in self.client.datagrams_to_send():
            if datagram[0] < 0x40:
                msg = decode(datagram)
                self.sent.append((Method(msg.method), msg.msg_class))
            self.sock.sendto(datagram, self.client.server)
        while (event := self.client.next_event()) is not None:
            self.events.append(event)

    async def pump(self, until: Callable[[], bool], timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        self.flush()
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; events {self.events}, sent {self.sent}")
            timer = self.client.get_timer()
            wait = left if timer is None else max(0.0, min(left, timer - self.now()))
            try:
                raw, _src = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), wait)
            except TimeoutError:
                self.client.handle_timer(self.now())
            else:
                if raw[0] < 0x40:
                    msg = decode(raw)
                    if msg.msg_class in (StunClass.SUCCESS, StunClass.ERROR):
                        err = msg.get_error()
                        self.received.append(
                            (Method(msg.method), msg.msg_class, err.code if err is not None else None)
                        )
                got = self.client.on_datagram(raw, self.now())
                if got is not None:
                    self.data.append((got[0], got[1], 0x40 <= raw[0] <= 0x4F))
            self.flush()

    def send(self, payload: bytes, peer: Address) -> None:
        self.sock.sendto(self.client.wrap(payload, peer), self.client.server)


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LOOPBACK, 0))
    s.setblocking(False)
    return s


async def echo(sock: socket.socket, seen: list[Address]) -> None:
    """A plain UDP echo peer: every datagram goes back where it came from."""
    loop = asyncio.get_running_loop()
    while True:
        data, src = await loop.sock_recvfrom(sock, 65536)
        seen.append(Address(src[0], src[1]))
        await loop.sock_sendto(sock, data, src)


@pytest.mark.parametrize("credentials", ["long-term", "rest-api"])
def test_our_client_against_coturn(credentials: str) -> None:
    rest_api = credentials == "rest-api"
    if rest_api:
        username, password = rest_api_credentials(SECRET, time.time(), 3600, USER)
    else:
        username, password = USER, PASSWORD

    async def body(port: int) -> None:
        sock, peer_sock = udp_socket(), udp_socket()
        seen: list[Address] = []
        echo_task = asyncio.create_task(echo(peer_sock, seen))
        try:
            peer = Address(*peer_sock.getsockname())
            client = TurnClient(
                Address(LOOPBACK, port), username, password, random_bytes=os.urandom, software="coremesh"
            )
            shell = ClientShell(client, sock)

            # Allocate: a 401 brings realm and nonce, the second request succeeds.
            client.allocate(shell.now())
            await shell.pump(lambda: any(isinstance(e, Allocated) for e in shell.events))
            allocated = next(e for e in shell.events if isinstance(e, Allocated))
            assert client.state is ClientState.ALLOCATED
            assert client.realm == REALM
            assert allocated.relayed_address.host == LOOPBACK
            assert COTURN_PORTS[0] <= allocated.relayed_address.port <= COTURN_PORTS[1]
            assert allocated.mapped_address == Address(*sock.getsockname())
            assert allocated.lifetime > 0
            assert (Method.ALLOCATE, StunClass.ERROR, 401) in shell.received

            # CreatePermission, then Send indication out and Data indication back.
            client.create_permission(peer, shell.now())
            await shell.pump(lambda: (Method.CREATE_PERMISSION, StunClass.SUCCESS, None) in shell.received)
            shell.send(b"via send indication", peer)
            await shell.pump(lambda: len(shell.data) >= 1)
            assert shell.data[-1] == (peer, b"via send indication", False)
            assert seen[-1] == allocated.relayed_address  # the peer saw the relayed address

            # ChannelBind, then ChannelData both ways.
            number = client.bind_channel(peer, shell.now())
            await shell.pump(lambda: client.channel_for(peer) == number)
            for i in range(20):
                shell.send(b"via channel %d" % i + bytes(1000), peer)
            await shell.pump(lambda: len(shell.data) >= 21)
            assert [d[1][:20].rstrip(b"\0") for d in shell.data[1:]] == [
                b"via channel %d" % i for i in range(20)
            ]
            assert all(channel for _, _, channel in shell.data[1:])

            # The peer speaks first: a datagram to the relayed address reaches the client.
            await asyncio.get_running_loop().sock_sendto(
                peer_sock, b"hello from the peer", allocated.relayed_address
            )
            await shell.pump(lambda: len(shell.data) >= 22)
            assert shell.data[-1] == (peer, b"hello from the peer", True)

            # Refresh: move the client's clock to its refresh time; permission and channel are
            # refreshed on the way (they are due earlier).
            refreshes = shell.sent.count((Method.REFRESH, StunClass.REQUEST))
            shell.skew += allocated.lifetime - 59
            await shell.pump(
                lambda: (
                    shell.received.count((Method.REFRESH, StunClass.SUCCESS, None)) >= 1
                    and client.get_timer() is not None
                    and client.get_timer() > shell.now() + 1
                )
            )
            assert shell.sent.count((Method.REFRESH, StunClass.REQUEST)) > refreshes
            assert (Method.CREATE_PERMISSION, StunClass.SUCCESS, None) in shell.received
            assert shell.received.count((Method.CHANNEL_BIND, StunClass.SUCCESS, None)) >= 2
            assert client.state is ClientState.ALLOCATED
            assert client.lifetime > 0
            shell.send(b"after refresh", peer)
            await shell.pump(lambda: shell.data[-1][1] == b"after refresh")

            # Deallocate: Refresh with LIFETIME 0.
            client.close(shell.now())
            await shell.pump(lambda: any(isinstance(e, AllocationLost) for e in shell.events))
            lost = next(e for e in shell.events if isinstance(e, AllocationLost))
            assert lost.reason == "closed"
            assert client.state is ClientState.CLOSED
            assert shell.received[-1] == (Method.REFRESH, StunClass.SUCCESS, None)
            assert not any(isinstance(e, AllocationLost) and e.reason != "closed" for e in shell.events)

            # The relayed address goes away: coturn still relays for up to a second after its
            # success response to Refresh(0) (it frees the allocation on its next timer tick). The
            # deadline only bounds the wait; how soon it stops is coturn's business.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                await loop.sock_sendto(peer_sock, b"too late", allocated.relayed_address)
                try:
                    await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), 0.3)
                except TimeoutError:
                    break
                assert loop.time() < deadline, "coturn kept relaying after Refresh(0)"
            assert client.stats().get("drop_bad_integrity", 0) == 0
        finally:
            echo_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await echo_task
            sock.close()
            peer_sock.close()

    with coturn(rest_api=rest_api) as port:
        run(lambda: body(port))


def test_our_client_with_wrong_password_is_refused_by_coturn() -> None:
    async def body(port: int) -> None:
        sock = udp_socket()
        try:
            client = TurnClient(Address(LOOPBACK, port), USER, "wrong", random_bytes=os.urandom)
            shell = ClientShell(client, sock)
            client.allocate(shell.now())
            await shell.pump(lambda: bool(shell.events))
            assert client.state is ClientState.FAILED
            assert getattr(shell.events[0], "code", None) == 401
        finally:
            sock.close()

    with coturn() as port:
        run(lambda: body(port))
