"""A Core Mesh in Docker containers for integration tests: a bootstrap, a relay and N nodes.

::

    with CoreMeshCluster(nodes=3, base_image="coremesh-base:bookworm") as mesh:
        a, b = mesh.nodes[0], mesh.nodes[1]
        a.cli("connect", b.peer_id)            # `coremesh connect PEERID --json` inside node-1
        a.cli("send", b.peer_id, "hi")
        assert b.cli("recv", "--timeout", "10")["data"] == "hi"

The images are built from the repository's Dockerfile (targets ``bootstrap``, ``relay``, ``node``) and
tagged by the content of the build context and the base image (``coremesh-node:ctx-<hash>``): an
unchanged tree reuses them. The cluster gets its own Docker network (unique name); each service has a
named volume on ``/var/lib/coremesh`` (its identity), so :meth:`Service.restart` (a new container on the
same volume) keeps the PeerId. Every container, the network and the volumes carry the label
``io.coremesh.testing.cluster=<id>`` and are removed on exit, also when the block raises or is
interrupted; :func:`remove_cluster` removes what a killed process left.

Containers are started with testcontainers' ``DockerContainer``. Its reaper (Ryuk) needs an image from a
registry, so this module sets ``TESTCONTAINERS_RYUK_DISABLED=true`` unless the environment says
otherwise and cleans up by label itself. Nothing here publishes a port: the CLI and the admin API are
reached with ``docker exec`` inside the containers, where they listen on loopback as in production.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer
from testcontainers.core.docker_client import DockerClient
from testcontainers.core.network import Network

Role = Literal["bootstrap", "relay", "node"]
ROLES: Final[tuple[Role, ...]] = ("bootstrap", "relay", "node")

LABEL: Final = "io.coremesh.testing"
LABEL_CLUSTER: Final = "io.coremesh.testing.cluster"
LABEL_ROLE: Final = "io.coremesh.testing.role"
LABEL_CONTENT: Final = "io.coremesh.testing.content"

DEFAULT_BASE_IMAGE: Final = "python:3.11-slim-bookworm"
DATA_DIR: Final = "/var/lib/coremesh"
MESH_PORT: Final = 7946
RELAY_PORT: Final = 3478
KEYED_RELAY_PORT: Final = 8443
# Where each service's admin API listens inside its container (the images' defaults, loopback only).
ADMIN_ADDRESS: Final[Mapping[Role, str]] = {
    "node": "127.0.0.1:7947",
    "bootstrap": "127.0.0.1:7948",
    "relay": "127.0.0.1:9641",
}
RELAY_USER: Final = "mesh:mesh-local"
_SECOND_NS: Final = 1_000_000_000

# One HTTP request to the admin API from inside the container, answered as JSON on stdout.
_ADMIN_SCRIPT: Final = """\
import json, sys, urllib.error, urllib.request
url, method, body, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
headers = {"Content-Type": "application/json"} if body else {}
req = urllib.request.Request(url, data=body.encode() if body else None, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        code, data = resp.status, resp.read()
except urllib.error.HTTPError as exc:
    code, data = exc.code, exc.read()
print(json.dumps({"status": code, "body": data.decode("utf-8", "replace")}))
"""


class ClusterError(Exception):
    """The cluster could not be built, started or reached; the message says what and why."""


class CommandFailed(ClusterError):
    """A command inside a container exited non-zero (``cli`` with a failing CLI command, for one)."""

    def __init__(self, service: str, argv: Sequence[str], result: ExecResult) -> None:
        self.service = service
        self.argv = list(argv)
        self.result = result
        super().__init__(
            f"{service}: {' '.join(argv)} exited {result.exit_code}\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        )


class AdminError(ClusterError):
    """The admin API answered with an HTTP error; ``body`` is its JSON error when it sent one."""

    def __init__(self, service: str, path: str, status: int, body: Any) -> None:
        self.service = service
        self.path = path
        self.status = status
        self.body = body
        super().__init__(f"{service}: {path} answered {status}: {body}")


@dataclass(frozen=True)
class ExecResult:
    """What a command run inside a container did."""

    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Images:
    """The three images a cluster runs, by name."""

    bootstrap: str
    relay: str
    node: str

    def of(self, role: Role) -> str:
        name: str = getattr(self, role)
        return name


# ------------------------------------------------------------------------------------------ images


def find_build_context() -> Path | None:
    """The repository this package was installed from (editable or source checkout), if any:
    ``COREMESH_BUILD_CONTEXT`` first, then the folders above the package holding a Dockerfile."""
    configured = os.environ.get("COREMESH_BUILD_CONTEXT")
    if configured:
        return Path(configured)
    here = Path(__file__).resolve().parent
    for folder in here.parents:
        if (folder / "Dockerfile").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    return None


def context_files(build_context: Path) -> list[str]:
    """The files ``docker build`` sends from ``build_context`` (its .dockerignore applied), sorted."""
    ignore = build_context / ".dockerignore"
    patterns = ignore.read_text().splitlines() if ignore.is_file() else []
    # docker's own rule, so that the hash covers exactly what the daemon receives.
    build_utils: Any = importlib.import_module("docker.utils.build")
    paths: set[str] = build_utils.exclude_paths(str(build_context), patterns, "Dockerfile")
    return sorted(p for p in paths if (build_context / p).is_file())


def content_tag(build_context: Path, base: str) -> str:
    """``ctx-`` and 16 hex digits of a hash over the build context's files and ``base`` (the base
    image's id where known): the same tree on the same base gives the same tag."""
    digest = hashlib.sha256(base.encode())
    for name in context_files(build_context):
        digest.update(b"\0" + name.encode() + b"\0")
        digest.update((build_context / name).read_bytes())
    return "ctx-" + digest.hexdigest()[:16]


def build_images(
    build_context: Path | str,
    base_image: str = DEFAULT_BASE_IMAGE,
    *,
    client: DockerClient | None = None,
    timeout: int = 1200,
) -> Images:
    """Build (or reuse, by content tag) ``coremesh-bootstrap``, ``coremesh-relay`` and ``coremesh-node``
    from ``build_context``'s Dockerfile on ``base_image``. Raises :class:`ClusterError` if a build fails."""
    context = Path(build_context)
    if not (context / "Dockerfile").is_file():
        raise ClusterError(f"no Dockerfile in the build context {context}")
    docker = client or DockerClient()
    try:
        base = str(docker.client.images.get(base_image).id)
    except Exception:  # not local: the build pulls it by name
        base = base_image
    tag = content_tag(context, base)
    names = {role: f"coremesh-{role}:{tag}" for role in ROLES}
    for role, name in names.items():
        if _image_exists(docker, name):
            continue
        try:
            docker.build(
                path=str(context),
                tag=name,
                target=role,
                dockerfile="Dockerfile",
                buildargs={"BASE_IMAGE": base_image},
                labels={LABEL_CONTENT: tag},
                forcerm=True,
                timeout=timeout,
            )
        except Exception as exc:
            log = "".join(
                str(line.get("stream", line.get("error", "")))
                for line in getattr(exc, "build_log", [])
                if isinstance(line, dict)
            )
            raise ClusterError(f"building {name} on {base_image} failed: {exc}\n{log[-4000:]}") from None
    return Images(bootstrap=names["bootstrap"], relay=names["relay"], node=names["node"])


def _image_exists(docker: DockerClient, name: str) -> bool:
    try:
        docker.client.images.get(name)
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------------------ services


def _healthcheck(role: Role) -> dict[str, Any]:
    """The image's health check on ``/readyz``, polled every 0.5 s instead of every 10 s."""
    host, _, port = ADMIN_ADDRESS[role].rpartition(":")
    probe = f"import urllib.request as r; r.urlopen('http://{host}:{port}/readyz', timeout=2)"
    return {
        "test": ["CMD", "python3", "-c", probe],
        "interval": _SECOND_NS // 2,
        "timeout": 3 * _SECOND_NS,
        "retries": 240,
        "start_period": 0,
    }


@dataclass
class Service:
    """One container of a cluster: the bootstrap, the relay or a node (``name`` is its host name on the
    cluster network). The container is recreated by :meth:`start` on the same named volume."""

    cluster: CoreMeshCluster
    role: Role
    name: str
    env: dict[str, str]
    peer_id: str | None = None
    _container: DockerContainer | None = field(default=None, repr=False)

    @property
    def container_name(self) -> str:
        return f"{self.cluster.id}-{self.name}"

    @property
    def volume(self) -> str:
        return f"{self.cluster.id}-{self.name}-data"

    @property
    def address(self) -> str:
        """``HOST:PORT`` of its mesh (or STUN/TURN) socket on the cluster network."""
        return f"{self.name}:{RELAY_PORT if self.role == 'relay' else MESH_PORT}"

    @property
    def running(self) -> bool:
        if self._container is None:
            return False
        wrapped: Any = self._container.get_wrapped_container()
        try:
            wrapped.reload()
        except Exception:
            return False
        return bool(wrapped.attrs["State"]["Running"])

    def container(self) -> DockerContainer:
        if self._container is None:
            raise ClusterError(f"{self.name} is stopped")
        return self._container

    # -- commands

    def exec(self, *argv: str) -> ExecResult:
        """Run ``argv`` inside the container (as its user, in its working directory)."""
        wrapped: Any = self.container().get_wrapped_container()
        code, (out, err) = wrapped.exec_run(list(argv), demux=True)
        return ExecResult(
            int(code), (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace")
        )

    def cli_result(self, *args: str) -> ExecResult:
        """``coremesh ARGS --json`` inside the container, whatever its exit status."""
        return self.exec("coremesh", *args, "--json")

    def cli(self, *args: str) -> Any:
        """``coremesh ARGS --json`` inside the container, its output parsed; :class:`CommandFailed` if
        the CLI exits non-zero (``e.result`` holds its output)."""
        argv = ["coremesh", *args, "--json"]
        result = self.exec(*argv)
        if result.exit_code != 0:
            raise CommandFailed(self.name, argv, result)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise CommandFailed(self.name, argv, result) from None

    def admin(self, path: str, *, method: str = "GET", body: Any = None, timeout: float = 30.0) -> Any:
        """One request to the service's admin API (``/v1/status``, ``/metrics``, ...), made inside the
        container; the JSON answer parsed, or the text where it is not JSON. :class:`AdminError` on an
        HTTP error status."""
        url = f"http://{ADMIN_ADDRESS[self.role]}/{path.lstrip('/')}"
        payload = "" if body is None else json.dumps(body)
        argv = ["python3", "-c", _ADMIN_SCRIPT, url, method, payload, str(timeout)]
        result = self.exec(*argv)
        if result.exit_code != 0:
            raise CommandFailed(self.name, ["admin", method, path], result)
        answer = json.loads(result.stdout)
        try:
            data: Any = json.loads(answer["body"])
        except ValueError:
            data = answer["body"]
        if int(answer["status"]) >= 400:
            raise AdminError(self.name, path, int(answer["status"]), data)
        return data

    def logs(self) -> str:
        if self._container is None:
            return ""
        out, err = self._container.get_logs()
        return (out + err).decode(errors="replace")

    # -- life cycle

    def start(self) -> None:
        """Create and start its container (on its volume, with its host name) and wait until it is
        ready; learns its PeerId from the admin API."""
        if self._container is not None:
            raise ClusterError(f"{self.name} is running already")
        cluster = self.cluster
        container = DockerContainer(
            cluster.images.of(self.role),
            env=dict(self.env),
            name=self.container_name,
            network=cluster.network,
            network_aliases=[self.name],
            labels=cluster.labels(self.role),
            init=True,
            healthcheck=_healthcheck(self.role),
        ).with_volume_mapping(self.volume, DATA_DIR, "rw")
        self._container = container
        container.start()
        self._wait_ready(cluster.start_timeout)
        status = self.admin("/v1/status")
        self.peer_id = status.get("peer_id") if isinstance(status, dict) else None

    def stop(self, *, timeout: int = 10) -> None:
        """Stop it gracefully (SIGTERM, then SIGKILL after ``timeout`` s) and remove the container; the
        volume stays, so :meth:`start` brings back the same identity."""
        container, self._container = self._container, None
        if container is None:
            return
        wrapped: Any = container.get_wrapped_container()
        try:
            wrapped.stop(timeout=timeout)
        finally:
            wrapped.remove(force=True, v=True)

    def restart(self) -> None:
        """:meth:`stop` then :meth:`start`: a new container on the same volume (same PeerId)."""
        self.stop()
        self.start()

    def _wait_ready(self, timeout: float) -> None:
        wrapped: Any = self.container().get_wrapped_container()
        deadline = time.monotonic() + timeout
        while True:
            wrapped.reload()
            state = wrapped.attrs["State"]
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                return
            if not state.get("Running") or health == "unhealthy":
                raise ClusterError(
                    f"{self.name} did not start (state {state.get('Status')}, health {health}, "
                    f"exit code {state.get('ExitCode')}):\n{self.logs()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} not ready after {timeout:g}s:\n{self.logs()[-4000:]}")
            time.sleep(0.25)


# ------------------------------------------------------------------------------------------ cluster


class CoreMeshCluster:
    """A bootstrap, a relay and ``nodes`` nodes on a network of their own; a context manager.

    ``images`` names prebuilt images; otherwise they are built (or reused) from ``build_context``
    (default: the checkout this package runs from, or ``COREMESH_BUILD_CONTEXT``) on ``base_image``
    (default ``COREMESH_BASE_IMAGE`` or python:3.11-slim-bookworm). ``env`` is added to every node's
    environment (``COREMESH_*`` settings, docs/cli.md). Started, every service answers ``/readyz`` and
    every node's record is in the DHT (:meth:`wait_meshed`).
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        base_image: str | None = None,
        build_context: Path | str | None = None,
        images: Images | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        if nodes < 0:
            raise ValueError(f"nodes must be 0 or more, got {nodes}")
        self.id = f"coremesh-tc-{uuid.uuid4().hex[:10]}"
        self.start_timeout = start_timeout
        self._nodes = nodes
        self._base_image = base_image or os.environ.get("COREMESH_BASE_IMAGE") or DEFAULT_BASE_IMAGE
        self._build_context = Path(build_context) if build_context is not None else None
        self._images = images
        self._env = dict(env or {})
        self._docker: DockerClient | None = None
        self._network: Network | None = None
        self.bootstrap = Service(self, "bootstrap", "bootstrap", {})
        self.relay = Service(
            self,
            "relay",
            "relay",
            {
                "COREMESH_RELAY_USER": RELAY_USER,
                "COREMESH_RELAY_KEYED_LISTEN": f"0.0.0.0:{KEYED_RELAY_PORT}",
                # The cluster network is a private range, which a relay refuses by default.
                "COREMESH_RELAY_ALLOWED_PEER_IP": "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",
            },
        )
        node_env = {
            "COREMESH_BOOTSTRAP": f"bootstrap:{MESH_PORT}",
            "COREMESH_RELAY": f"{RELAY_USER}@relay:{RELAY_PORT}",
            "COREMESH_KEYED_RELAY": f"tcp://relay:{KEYED_RELAY_PORT}",
        }
        self.nodes = [
            Service(self, "node", f"node-{i}", {**node_env, **self._env}) for i in range(1, nodes + 1)
        ]

    @property
    def services(self) -> list[Service]:
        return [self.bootstrap, self.relay, *self.nodes]

    @property
    def images(self) -> Images:
        if self._images is None:
            raise ClusterError("the cluster is not started")
        return self._images

    @property
    def network(self) -> Network:
        if self._network is None:
            raise ClusterError("the cluster is not started")
        return self._network

    def labels(self, role: Role | None = None) -> dict[str, str]:
        labels = {LABEL: "true", LABEL_CLUSTER: self.id}
        if role is not None:
            labels[LABEL_ROLE] = role
        return labels

    def start(self) -> Self:
        """Build or reuse the images, start the bootstrap, the relay and the nodes, each ready, and wait
        until the nodes find each other (:meth:`wait_meshed`).
        On any failure (or KeyboardInterrupt) everything started so far is removed before it raises."""
        try:
            self._docker = DockerClient()
            if self._images is None:
                context = self._build_context or find_build_context()
                if context is None:
                    raise ClusterError(
                        "no build context: pass build_context= (a Core Mesh checkout), set "
                        "COREMESH_BUILD_CONTEXT, or pass images="
                    )
                self._images = build_images(context, self._base_image, client=self._docker)
            network = Network(docker_network_kw={"labels": self.labels()})
            network.name = self.id
            self._network = network.create()
            for service in self.services:
                self._docker.client.volumes.create(name=service.volume, labels=self.labels(service.role))
            for service in self.services:
                service.start()
            self.wait_meshed()
        except BaseException:
            self.close()
            raise
        return self

    def wait_meshed(self, timeout: float | None = None) -> None:
        """Wait until every node's signed record is in the DHT: node ``i+1`` finds node ``i`` by its
        PeerId (``coremesh lookup``), so a test can dial any node by PeerId alone."""
        if len(self.nodes) < 2:
            return
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        for i, sought in enumerate(self.nodes):
            seeker = self.nodes[(i + 1) % len(self.nodes)]
            while True:
                result = seeker.cli_result("lookup", sought.peer_id or "", "--timeout", "2")
                if result.exit_code == 0:
                    break
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{seeker.name} does not find {sought.name}'s record through the bootstrap: "
                        f"{result.stdout.strip()} {result.stderr.strip()}"
                    )
                time.sleep(0.25)

    def close(self) -> None:
        """Remove every container, the network and the volumes of this cluster (idempotent)."""
        for service in self.services:
            service._container = None
        remove_cluster(self.id, client=self._docker)
        self._network = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            for service in self.services:
                try:
                    tail = "\n".join(service.logs().splitlines()[-15:])
                except Exception as log_error:  # the daemon may be what failed
                    tail = f"(no logs: {log_error})"
                if service._container is not None:
                    exc.add_note(f"--- {service.name} ({service.container_name}), last log lines:\n{tail}")
        self.close()


@dataclass(frozen=True)
class ClusterOptions:
    """How ``coremesh_cluster`` builds its cluster (the arguments of :class:`CoreMeshCluster`)."""

    nodes: int = 3
    base_image: str | None = None
    build_context: Path | str | None = None
    images: Images | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0

    def cluster(self) -> CoreMeshCluster:
        return CoreMeshCluster(
            self.nodes,
            base_image=self.base_image,
            build_context=self.build_context,
            images=self.images,
            env=self.env,
            start_timeout=self.start_timeout,
        )


def leftovers(cluster_id: str, *, client: DockerClient | None = None) -> dict[str, list[str]]:
    """The containers, networks and volumes still labelled with ``cluster_id`` (all empty once closed)."""
    docker = client or DockerClient()
    flt = {"label": f"{LABEL_CLUSTER}={cluster_id}"}
    return {
        "containers": [str(c.name) for c in docker.client.containers.list(all=True, filters=flt)],
        "networks": [str(n.name) for n in docker.client.networks.list(filters=flt)],
        "volumes": [str(v.name) for v in docker.client.volumes.list(filters=flt)],
    }


def remove_cluster(cluster_id: str, *, client: DockerClient | None = None) -> None:
    """Remove everything labelled with ``cluster_id``: containers first (with their anonymous volumes),
    then the network and the named volumes."""
    docker = client or DockerClient()
    flt = {"label": f"{LABEL_CLUSTER}={cluster_id}"}
    for container in docker.client.containers.list(all=True, filters=flt):
        container.remove(force=True, v=True)
    for network in docker.client.networks.list(filters=flt):
        network.remove()
    for volume in docker.client.volumes.list(filters=flt):
        volume.remove(force=True)
