"""The project's fake Twilio in a process of its own: ``python -m tests.perf.fake_provider``.

Run apart from the dispatcher so the two do not share one interpreter lock. It prints its base
URL and credentials as one JSON line; then each line on stdin is a question: ``count`` (how
many messages it accepted, and how many distinct recipients) or ``stop``. Given
``{"latency": seconds}``, it holds every request that long before answering, as a provider
across a network would.
"""

from __future__ import annotations

import json
import sys
import time

from tests.fakes import FakeTwilio


def main() -> None:
    args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    latency = float(args.get("latency", 0.0))
    with FakeTwilio() as fake:
        if latency > 0:
            fake.set_handler(lambda _: time.sleep(latency))  # None: then answers as usual
        info = {"base_url": fake.base_url, "account_sid": fake.account_sid}
        print(json.dumps(info | {"auth_token": fake.auth_token}), flush=True)
        for line in sys.stdin:
            if line.strip() != "count":
                break
            messages = fake.messages
            answer = {"messages": len(messages), "recipients": len({m.to for m in messages})}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
