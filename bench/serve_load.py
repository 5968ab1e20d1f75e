"""``fcnseg serve`` under load on loopback: requests per second and p50/p95 latency for 1, 4 and 16 clients.

Starts ``python -m fcnseg serve`` (the shipped CamVid model, or ``--checkpoint``) on a free 127.0.0.1 port,
waits for ``/healthz``, then for each number of concurrent clients sends ``--requests`` POST /v1/segment requests
of a CamVid 360x480 image (each client sends its next request as soon as its last is answered) and stops the
server. The clients (httpx2, asyncio) run in this process, on the same machine as the server.

    python bench/serve_load.py --requests 48 --json-out bench/serve_load.json
    python bench/serve_load.py --clients 1,4,16 --requests 200 --threads 2 --format png

Latency: from sending a request to reading the whole answer (time.perf_counter). Requests per second: answered
(200) requests over the wall time of that level. 503s (the server's bounded queue) are counted, not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "fcnseg" / "assets" / "examples" / "0016E5_07997.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, args: argparse.Namespace) -> subprocess.Popen:
    command = [sys.executable, "-m", "fcnseg", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--max-queue", str(args.max_queue), "--device", args.device]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.bf16:
        command += ["--bf16"]
    return subprocess.Popen(command, cwd=ROOT)


def wait_until_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if httpx2.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /healthz within {timeout_s:.0f} s")


async def run_level(url: str, image: bytes, *, clients: int, requests: int, output: str) -> dict:
    """``requests`` requests from ``clients`` concurrent clients; latencies of the answered ones."""
    remaining = requests
    latencies: list[float] = []
    inference_ms: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx2.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sent = time.perf_counter()
            answer = await client.post(f"/v1/segment?format={output}",
                                       files={"image": ("camvid.png", image, "image/png")})
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - sent)
                timing = dict(part.split(";dur=") for part in answer.headers["server-timing"].split(", "))
                inference_ms.append(float(timing["inference"]))

    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall_s = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": requests,
        "ok": len(latencies),
        "rejected_503": statuses.get(503, 0),
        "other_errors": sum(count for status, count in statuses.items() if status not in (200, 503)),
        "wall_s": round(wall_s, 3),
        "req_per_s": round(len(latencies) / wall_s, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "server_inference_ms_median": round(float(np.median(inference_ms)), 1) if inference_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="an fcnseg checkpoint (default: the shipped CamVid model)")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="image to send (default: a CamVid 360x480)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per level (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=48, help="requests per level (default 48)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first (default 3)")
    parser.add_argument("--format", choices=["json", "png"], default="json", help="answer format (default json)")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    parser.add_argument("--max-queue", dest="max_queue", type=int, default=32, help="the server's --max-queue")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="serve with --bf16 (fast bf16 kernels only)")
    parser.add_argument("--json-out", help="write the results as JSON here")
    args = parser.parse_args()
    levels = [int(v) for v in args.clients.split(",")]
    image = Path(args.image).read_bytes()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port, args)
    try:
        wait_until_healthy(url, server)
        model = httpx2.get(url + "/v1/model").json()["name"]
        asyncio.run(run_level(url, image, clients=1, requests=args.warmup, output=args.format))
        results = [asyncio.run(run_level(url, image, clients=c, requests=args.requests, output=args.format))
                   for c in levels]
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"fcnseg serve, {model}, {Path(args.image).name}, format={args.format}, {args.requests} requests a level, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'ok':>6}{'503':>6}{'inference ms':>14}")
    for r in results:
        print(f"{r['clients']:>8}{r['req_per_s']:>9.2f}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['ok']:>6}"
              f"{r['rejected_503']:>6}{r['server_inference_ms_median']:>14.1f}")
    if args.json_out:
        report = {
            "model": model, "image": Path(args.image).name, "format": args.format, "device": args.device,
            "threads": args.threads, "cpu_count": os.cpu_count(), "machine": platform.platform(), "levels": results,
        }
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
