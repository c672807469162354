"""The service's web app alone (no scheduler), served by uvicorn in a process of its own:
``python -m tests.perf.console_server '{"url": ..., "port": ...}'``. Stops when stdin closes."""

from __future__ import annotations

import json
import sys
import threading

import uvicorn

from reminders.logs import configure
from reminders.runtime import build_runtime
from reminders.web.app import create_app
from tests.perf.databases import settings_for


def main() -> None:
    args = json.loads(sys.argv[1])
    settings = settings_for(args["url"], secret_key=args["secret"], log_format="json")
    configure("WARNING", "json")
    runtime = build_runtime(settings)
    config = uvicorn.Config(
        create_app(runtime), host="127.0.0.1", port=args["port"], log_config=None, access_log=False
    )
    server = uvicorn.Server(config)

    def stop_when_told() -> None:
        sys.stdin.read()
        server.should_exit = True

    threading.Thread(target=stop_when_told, daemon=True).start()
    server.run()
    runtime.close()


if __name__ == "__main__":
    main()
