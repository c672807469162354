"""A benchmark's child process: ``python -m tests.perf.worker '{json}'``.

Modes:
- ``drain``: a :class:`reminders.dispatch.Dispatcher` sends every due reminder (or as many as
  it can in ``seconds``) with the console channel (``sender: console``, written to /dev/null)
  or the real Twilio SMS channel (``sender: twilio``, pointed at a fake), logging as
  ``reminders run`` does (JSON on stderr).
- ``bare``: the bare ``twilio`` SDK creates ``count`` messages from ``threads`` threads.

It prints ``{"ready": true}`` once set up, waits for a line on stdin (so several workers start
together), works, then prints one JSON line: counts, wall-clock start and end, CPU seconds, and its
peak resident memory (``VmHWM``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import sys
import threading
import time
from collections import Counter
from typing import Any

from reminders.channels import Sender
from reminders.channels.console import ConsoleSender
from reminders.channels.registry import build_senders
from reminders.dispatch import Dispatcher
from reminders.interpreter import tune_for_service, tune_interpreter
from reminders.logs import configure
from reminders.runtime import Runtime, build_runtime
from reminders.service import process_owner
from tests.perf.databases import settings_for

SMS_FROM = "+15005550006"
BODY = (  # as long as the rendered `due` SMS template
    "Ayşe, your next visit at the clinic is possible from 18 Feb 2026. Please book. "
    "Reply STOP to opt out."
)


def twilio_settings(fake: dict[str, str]) -> dict[str, Any]:
    return {
        "delivery_mode": "live",
        "twilio_account_sid": fake["account_sid"],
        "twilio_auth_token": fake["auth_token"],
        "twilio_api_base_url": fake["base_url"],
        "twilio_sms_from": SMS_FROM,
        "provider_timeout": 10.0,
    }


def runtime_for_worker(args: dict[str, Any]) -> Runtime:
    overrides: dict[str, Any] = {
        "sms_rate": 1_000_000.0,
        "email_rate": 1_000_000.0,
        "whatsapp_rate": 1_000_000.0,
        "log_format": "json",
        "dispatch_concurrency": args.get("threads", 4),
        "dispatch_ahead": args.get("ahead", 0),
        "dispatch_batch_size": args.get("batch", 100),
    }
    if args["sender"] == "twilio":
        overrides |= twilio_settings(args["fake"])
    settings = settings_for(args["url"], **overrides)
    senders: dict[str, Sender]
    if args["sender"] == "twilio":
        senders = build_senders(settings)
    else:
        sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        senders = {"sms": ConsoleSender("sms", sink)}
    configure(settings.log_level, settings.log_format)
    return build_runtime(settings, senders)


def drain(args: dict[str, Any]) -> dict[str, Any]:
    runtime = runtime_for_worker(args)
    dispatcher = Dispatcher(runtime, process_owner())
    tune_for_service()  # as `reminders run` does
    outcomes: Counter[str] = Counter()
    started = _ready()
    if args.get("seconds"):  # a time limit: stop claiming, finish what is in flight
        timer = threading.Timer(args["seconds"], dispatcher.stopping.set)
        timer.daemon = True
        timer.start()
    while not dispatcher.stopping.is_set():
        done = dispatcher.run_once(now=runtime.clock())
        outcomes.update(done)
        if not done:
            break
    finished = time.time()
    dispatcher.close()
    runtime.close()
    return {
        "outcomes": dict(outcomes),
        "started": started,
        "finished": finished,
        **waits(runtime),
    }


def waits(runtime: Runtime) -> dict[str, float]:
    """What a message waited for, from the dispatcher's histograms: provider calls and steps
    (the commits its delivery row waited for), how many of each and their mean seconds."""
    registry, found = runtime.metrics.registry, {}
    channel = "sms"  # the only channel a drain sends on, with either sender
    for name, metric, labels in (
        ("call", "reminders_provider_call_seconds", {"channel": channel}),
        ("step", "reminders_dispatch_step_seconds", {}),
    ):
        count = registry.get_sample_value(f"{metric}_count", labels) or 0.0
        total = registry.get_sample_value(f"{metric}_sum", labels) or 0.0
        found[f"{name}s"] = count
        found[f"{name}_seconds"] = total / count if count else 0.0
    return found


def bare(args: dict[str, Any]) -> dict[str, Any]:
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    fake = args["fake"]
    client = Client(
        fake["account_sid"],
        fake["auth_token"],
        http_client=TwilioHttpClient(timeout=10.0),
        environment={"REMINDERS_TWILIO_CONFIG": "explicit"},
    )
    client.api.base_url = fake["base_url"]
    messages = client.api.v2010.account.messages
    count, threads = args["count"], args.get("threads", 4)
    tune_for_service()  # the interpreter as a dispatcher's: the figure compares the code
    numbers = iter(range(count))
    lock, sent = threading.Lock(), Counter[str]()

    def work() -> None:
        while True:
            with lock:
                i = next(numbers, None)
            if i is None:
                return
            created = messages.create(to=f"+90534{i:07d}", from_=SMS_FROM, body=BODY)
            with lock:
                sent[created.status] += 1

    pool = [threading.Thread(target=work) for _ in range(threads)]
    started = _ready()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"outcomes": dict(sent), "started": started, "finished": time.time()}


def peak_rss_kb(pid: int | str = "self") -> int:
    """The peak resident set of this process image (``VmHWM``). Not ``ru_maxrss``: Linux
    carries the parent's peak across fork and exec into it."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:  # not Linux, or the process has ended
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if pid == "self" else 0


_CPU_AT_START: list[float] = []


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ready() -> float:
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    _CPU_AT_START.append(_cpu())
    return time.time()


def main() -> None:
    tune_interpreter()  # as in a `reminders` process, for the bare SDK too
    args = json.loads(sys.argv[1])
    result = {"drain": drain, "bare": bare}[args["mode"]](args)
    result["maxrss_kb"] = peak_rss_kb()
    # the work's CPU, not the imports and set-up before the start
    result["cpu_seconds"] = _cpu() - (_CPU_AT_START[0] if _CPU_AT_START else 0.0)
    result["at"] = dt.datetime.now(dt.UTC).isoformat()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
