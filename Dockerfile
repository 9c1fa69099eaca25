# Core Mesh images: one file, three targets (docs/deploy.md).
#   docker build --target node      -t coremesh-node .
#   docker build --target relay     -t coremesh-relay .
#   docker build --target bootstrap -t coremesh-bootstrap .
# BASE_IMAGE: any Debian bookworm-based image. With Python (python:3.11-slim-bookworm, the default) it is
# used as is; without (debian:bookworm-slim, or the local base of scripts/docker-base.sh) the build
# installs Debian's python3 (3.11) itself. Extra CA certificates (a proxy that re-signs HTTPS) come from
# the base image: docs/deploy.md shows how, without editing this file.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment in /opt/coremesh with the project and its dependencies ----
FROM ${BASE_IMAGE} AS builder
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    && python3 -m venv /opt/coremesh
WORKDIR /src
# The dependencies first, in their own layer: a change to the code alone does not download them again.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/coremesh/bin/pip install -q -r /tmp/requirements.txt
COPY README.md ./
COPY coremesh ./coremesh
COPY node ./node
COPY relay ./relay
COPY bootstrap ./bootstrap
COPY natlab ./natlab
RUN /opt/coremesh/bin/pip install -q --no-deps . \
    && /opt/coremesh/bin/python -m pip uninstall -q -y pip setuptools wheel \
    && find /opt/coremesh -name '__pycache__' -prune -exec rm -rf {} +

# ---- runtime: the base, Python if it has none, a non-root user, the venv ----
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/*; \
    fi \
    && groupadd --system --gid 10001 coremesh \
    && useradd --system --uid 10001 --gid coremesh --home-dir /var/lib/coremesh --no-create-home \
        --shell /usr/sbin/nologin coremesh \
    && mkdir -p /var/lib/coremesh && chown coremesh:coremesh /var/lib/coremesh && chmod 0700 /var/lib/coremesh
COPY --from=builder /opt/coremesh /opt/coremesh
ENV PATH=/opt/coremesh/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Identity key, lock, routing table: keep them on a volume so a new container keeps the PeerId.
VOLUME ["/var/lib/coremesh"]
WORKDIR /var/lib/coremesh
USER coremesh:coremesh
ARG VERSION=0.1.0
LABEL org.opencontainers.image.vendor="Core Mesh" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/coremesh/coremesh" \
      org.opencontainers.image.documentation="docs/deploy.md"
# Every service stops gracefully on SIGTERM (closes its connections, exits 0); compose adds an init.
STOPSIGNAL SIGTERM

# ---- coremesh-node: the mesh daemon; `coremesh status` in the container works with its defaults ----
FROM runtime AS node
LABEL org.opencontainers.image.title="coremesh-node" \
      org.opencontainers.image.description="Core Mesh node: the mesh daemon and the coremesh CLI"
# The admin API stays on loopback (it has no authentication): the CLI's default and the health check
# reach it inside the container. COREMESH_* variables configure the rest (docs/cli.md).
ENV COREMESH_LISTEN=0.0.0.0:7946 COREMESH_DATA_DIR=/var/lib/coremesh
EXPOSE 7946/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["python3", "-c", "import os, urllib.request as r; h, _, p = (os.environ.get('COREMESH_ADMIN') or '127.0.0.1:7947').rpartition(':'); h = {'0.0.0.0': '127.0.0.1', '[::]': '[::1]'}.get(h, h); r.urlopen(f'http://{h}:{p}/healthz', timeout=2)"]
ENTRYPOINT ["coremesh-node"]

# ---- coremesh-relay: STUN/TURN and the keyed relay ----
FROM runtime AS relay
LABEL org.opencontainers.image.title="coremesh-relay" \
      org.opencontainers.image.description="Core Mesh relay: STUN/TURN server and keyed mesh relay"
ENV COREMESH_RELAY_LISTEN=0.0.0.0:3478 COREMESH_RELAY_DATA_DIR=/var/lib/coremesh
EXPOSE 3478/udp 3478/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["python3", "-c", "import os, urllib.request as r; h, _, p = (os.environ.get('COREMESH_RELAY_ADMIN') or '127.0.0.1:9641').rpartition(':'); h = {'0.0.0.0': '127.0.0.1', '[::]': '[::1]'}.get(h, h); r.urlopen(f'http://{h}:{p}/healthz', timeout=2)"]
ENTRYPOINT ["coremesh-relay"]

# ---- coremesh-bootstrap: a stable DHT member with a persistent identity ----
FROM runtime AS bootstrap
LABEL org.opencontainers.image.title="coremesh-bootstrap" \
      org.opencontainers.image.description="Core Mesh bootstrap node: persistent identity, DHT entry point"
ENV COREMESH_BOOTSTRAP_LISTEN=0.0.0.0:7946 COREMESH_BOOTSTRAP_DATA_DIR=/var/lib/coremesh
EXPOSE 7946/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["python3", "-c", "import os, urllib.request as r; h, _, p = (os.environ.get('COREMESH_BOOTSTRAP_ADMIN') or '127.0.0.1:7948').rpartition(':'); h = {'0.0.0.0': '127.0.0.1', '[::]': '[::1]'}.get(h, h); r.urlopen(f'http://{h}:{p}/healthz', timeout=2)"]
ENTRYPOINT ["coremesh-bootstrap"]

# ---- coremesh-natlab: a NAT router with the NAT lab's rules (compose/docker-compose.nat.yml) ----
# Root with NET_ADMIN only (no --privileged). It also serves as the `coremesh-natlab` image of the
# in-cluster check (k8s/check/job.yaml): the NAT lab and its tools (iptables, nft, ip) are all here.
FROM runtime AS router
LABEL org.opencontainers.image.title="coremesh-natlab" \
      org.opencontainers.image.description="Core Mesh NAT lab: NAT routers with the lab's rules, coremesh-natlab"
USER root
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends iptables nftables iproute2 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/*
ENTRYPOINT ["python3", "-m", "coremesh_natlab.router", "nat"]
