"""What the services' admin HTTP apps (aiohttp) share: running on one TCP address, JSON errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..addr import Address
from .logs import EventLogger


class AdminRunner:
    """Runs an admin app on one TCP address: ``await start(addr)`` → the bound address (port 0
    resolved); ``await stop()``. Subclasses record the address and mark the service not ready
    through :meth:`started` and :meth:`stopping`."""

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 2.0) -> None:
        self.app = app
        self._runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
        self.address: Address | None = None

    async def start(self, address: Address) -> Address:
        await self._runner.setup()
        site = web.TCPSite(self._runner, address.host, address.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        bound = self._runner.addresses[0]
        self.address = Address(str(bound[0]), int(bound[1]))
        self.started(self.address)
        return self.address

    async def stop(self) -> None:
        self.stopping()
        await self._runner.cleanup()

    def started(self, address: Address) -> None:
        """Called once the app listens on ``address``."""

    def stopping(self) -> None:
        """Called before the app stops serving."""


class ApiError(Exception):
    """A request the API refuses: HTTP status, a stable error code and one clear line."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


_HTTP_CODES: Final = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def served(app: web.Application) -> list[str]:
    """``GET /v1/status``, ... : the app's endpoints, in the order they were added."""
    return list(
        dict.fromkeys(
            f"{route.method} {route.resource.canonical}"
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        )
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_errors(
    log: EventLogger,
    error_map: Sequence[tuple[type[BaseException], int, str]] = (),
    *,
    service: str | None = None,
) -> Middleware:
    """Middleware: every failure becomes ``{"error": one line, "code": ...}`` with a 4xx/5xx status.

    ``error_map`` turns library errors into API errors (first matching class wins); anything else is
    a bug, logged with its traceback and answered 500, never a traceback to the client. With
    ``service`` (``coremesh-relay``), a request for an endpoint the app lacks is answered with what
    it is and what it serves (``GET /v1/peers: Not Found: this is a coremesh-relay, it serves ...``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = f"{request.method} {request.path}: {exc.reason}"
            if service is not None and exc.status == 404:
                message += f": this is a {service}, it serves {', '.join(served(request.app))}"
            return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for cls, status, code in error_map:
                if isinstance(exc, cls):
                    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    return error_response(status, code, text)
            log.error("admin.internal_error", method=request.method, path=request.path, exc_info=True)
            return error_response(500, "internal", f"internal error: {type(exc).__name__}: {exc}")

    return middleware


def metrics_registry(collector: Collector) -> CollectorRegistry:
    """A service's Prometheus registry: its own collector (read at every scrape) plus the process
    and platform collectors (``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """``GET /metrics``: the registry in the Prometheus text format."""
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
