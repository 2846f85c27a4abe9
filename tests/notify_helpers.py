"""Real receivers for the notify tests: a prometheus-alertmanager process and a scripted webhook.

Both listen on free loopback ports with their own config and storage, never on 9093.
`Receiver` fails on purpose: `down()` closes its socket (connection refused), and `mode` makes
it answer 500, 429 with Retry-After, or 400 until set back to "ok". It records every request
with the status it answered.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.mosquitto import free_port, wait_port
from tests.test_aggregator import FakeAgent

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or ""


class Alertmanager:
    def __init__(self, workdir: Path, port: int | None = None, *, config: Path | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "alertmanager.yml"
        if config is not None:
            shutil.copy(config, self.config)
        else:
            self.config.write_text(
                "route:\n  receiver: nobody\n  group_wait: 1s\nreceivers:\n  - name: nobody\n"
            )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "alertmanager.log"

    def start(self, storage: str = "data") -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    ALERTMANAGER,
                    f"--config.file={self.config}",
                    f"--storage.path={self.workdir / storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"alertmanager did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            wait_port(self.port, up=False)

    def alerts(self) -> list[dict[str, Any]]:
        """Alertmanager's own view: GET /api/v2/alerts (active alerts, resolved ones drop out)."""
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        response.raise_for_status()
        return list(response.json())


@dataclass(frozen=True)
class Received:
    at: float
    status: int
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on one loopback port; starts down."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.mode = "ok"
        self.retry_after = "1"
        self.error_body = "bad token"
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                mode = receiver.mode
                status = {"ok": 200, "500": 500, "429": 429, "400": 400}[mode]
                with receiver.lock:
                    receiver.requests.append(
                        Received(time.time(), status, self.path, dict(self.headers.items()), body)
                    )
                self.send_response(status)
                if mode == "429":
                    self.send_header("Retry-After", receiver.retry_after)
                reply = {"ok": b"ok", "500": b"internal error", "429": b"slow down"}.get(
                    mode, receiver.error_body.encode()
                )
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def up(self, mode: str = "ok") -> None:
        self.mode = mode
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.status == 200]

    def statuses(self) -> list[int]:
        with self.lock:
            return [r.status for r in self.requests]


def publish_spiky(
    agent: FakeAgent,
    devices: list[str],
    n: int,
    spikes: tuple[int, ...],
    *,
    start: int = 0,
    stop: int | None = None,
    t0: float,
    seed: int = 3,
) -> None:
    """Readings start..stop of a smooth series per device, each with the same spikes (+15)."""
    for device in devices:
        rng = random.Random(f"{seed}-{device}")
        values = [20.0 + 0.5 * math.sin(i / 15) + rng.gauss(0, 0.05) for i in range(n)]
        for s in spikes:
            values[s] += 15.0
        end = n if stop is None else stop
        for lo in range(start, end, 10):
            rows = [(i + 1, t0 + i, "sys", "temp", values[i], "C") for i in range(lo, min(lo + 10, end))]
            agent.publish(device, "e1", rows)
