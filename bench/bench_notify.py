"""Alert delivery throughput: transitions/s through the queue to a webhook, next to a raw-POST ceiling.

    .venv/bin/python bench/bench_notify.py [--transitions 2000]

An alert storm: `--transitions` open transitions of as many devices (a fleet gone silent at
once) queued in one transaction, then delivered by the aggregator's delivery shell
(cloud.notify.shell.Courier, SQLite queue, one request at a time per sink, rate limit lifted) to a
webhook receiver in its own process on loopback (stdlib http.server, HTTP/1.1 keep-alive,
answers 200). The ceiling, measured in the same run against the same receiver: the same rendered
request bodies POSTed one after another with the same httpx client, no queue. Wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud.notify.config import NotifyConfig, SinkConfig  # noqa: E402
from cloud.notify.delivery import Router, lanes  # noqa: E402
from cloud.notify.ops import synthetic_alert  # noqa: E402
from cloud.notify.queue import Notice  # noqa: E402
from cloud.notify.shell import Courier  # noqa: E402
from cloud.notify.sinks import make_sink  # noqa: E402
from cloud.ops.views import alert_json  # noqa: E402
from cloud.store.sqlite.delivery import SqliteDeliveryQueue  # noqa: E402
from cloud.store.sqlite.store import SqliteStore  # noqa: E402

RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # status, headers and body in one segment (no Nagle + delayed-ACK stall)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit("receiver did not start")


async def ceiling(url: str, bodies: list[bytes], headers: list[tuple[str, str]]) -> float:
    async with httpx.AsyncClient() as client:
        start = time.perf_counter()
        for body in bodies:
            response = await client.post(url, content=body, headers=headers)
            assert response.status_code == 200
        return time.perf_counter() - start


async def delivered(courier: Courier, queue: SqliteDeliveryQueue, n: int) -> float:
    start = time.perf_counter()
    task = asyncio.create_task(courier.run())
    while queue.status(["bench"], dead_limit=0)[0].delivered < n:  # noqa: ASYNC110 - polls the store
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transitions", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/hook"
        config = SinkConfig(name="bench", type="webhook", url=url, rate_per_s=1e9, burst=10**9)
        now = time.time()
        alerts = [
            alert_json(synthetic_alert(now)) | {"alert_id": f"a{i}", "device": f"dev-{i}"}
            for i in range(args.transitions)
        ]
        sink = make_sink(config)
        notices = [Notice(f"{a['alert_id']}.open", a["alert_id"], a["device"], "open", a) for a in alerts]
        bodies = [sink.render([n], now).body for n in notices]
        raw = asyncio.run(ceiling(url, bodies, list(sink.render([], now).headers)))
        with tempfile.TemporaryDirectory() as tmp, SqliteStore(Path(tmp) / "cloud.db") as store:
            queue = SqliteDeliveryQueue(store)
            notify = NotifyConfig((config,), poll_s=0.01)
            router = Router(notify, queue)
            with store.transaction():
                for i in range(args.transitions):
                    router.enqueue(replace(synthetic_alert(now), alert_id=f"a{i}", device=f"dev-{i}"), now)

            async def call(fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
                return fn(*a, **kw)

            courier = Courier(lanes(notify, queue, now=time.time()), poll_s=0.01, call=call)
            took = asyncio.run(delivered(courier, queue, args.transitions))
    finally:
        receiver.terminate()
        receiver.wait()
    n = args.transitions
    print(f"raw POST ceiling (same bodies, same client, no queue): {n / raw:,.0f} requests/s")
    print(f"delivered through the queue, one by one:              {n / took:,.0f} transitions/s "
          f"({n / took / (n / raw):.0%} of the ceiling)")  # fmt: skip


if __name__ == "__main__":
    main()
