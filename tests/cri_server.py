"""A grpclite server on a unix socket, in an event loop of its own thread: how the CRI tests
serve a servicer in-process and call it with the (synchronous) CRI client."""

from __future__ import annotations

import asyncio
import threading

from grpclite import GrpcServer


class ServerThread:
    """``register(server)`` adds the servicers (the generated add_*Servicer_to_server);
    it runs in the server's loop, so servicers may take that loop. ``stop()`` at teardown."""

    def __init__(self, path: str, register) -> None:
        self.path = path
        self.register = register
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: GrpcServer | None = None
        self._thread = threading.Thread(target=self._run, name=f"cri-server {path}", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server on {self.path} did not start in {timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as e:  # noqa: BLE001 (start() reports it)
            self._error = e
        finally:
            self._ready.set()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _serve(self) -> None:
        self.server = GrpcServer()
        self.register(self.server)
        await self.server.listen_unix(self.path)
        await self.server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(0.5)

    def stop(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
