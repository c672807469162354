"""The HTTP server: uvicorn, whose signal handler also stops the dispatcher at once."""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType

import uvicorn


class Server(uvicorn.Server):
    """On SIGTERM/SIGINT uvicorn drains its connections (up to ``timeout_graceful_shutdown``)
    before :meth:`run` returns and the service stops; ``on_exit`` runs from the signal itself,
    so no reminder is claimed and no provider call starts during that drain."""

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)
