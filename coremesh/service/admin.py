"""Running a service's admin HTTP app (aiohttp) on one TCP address, shared by node and relay."""

from __future__ import annotations

from aiohttp import web

from ..addr import Address


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
