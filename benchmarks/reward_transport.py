"""What sending images to the reward server costs, against scoring them in-process.

For 64, 256 and 512 px images and 1, 4, 16, 64 concurrent clients, against a
real reward server subprocess (jpeg_compressibility), each client a thread with
its own keep-alive connection sending one image per request, doing per request
exactly what trainer.reward_client does per chunk: PNG encode (level 1) +
base64, the ScoreItem JSON, POST /v1/score, parse the ScoreResponse. Reported:

- images/s over HTTP; latency per request (p50, p95);
- added ms per image = p50 latency - the in-process scorer's time for that image
  (what a caller waits beyond scoring); at more than one client this includes
  queueing behind the other clients on the same cores;
- the single-thread cost of each step (encode, base64, JSON, server parse,
  decode, score), which bounds what transport can cost;
- one row through trainer.reward_client.RewardClient itself (1 client), the
  trainer's own path with its event loop and encode pool.

The server runs twice, side by side in one invocation: with its default dynamic
batching wait (DDPO_BATCH_MAX_WAIT_MS=5) and with 0.

    python benchmarks/reward_transport.py
    python benchmarks/reward_transport.py --sizes 256 --clients 1 4 --seconds 2
    python benchmarks/reward_transport.py --encoder nofilter0   # a cheaper PNG encoder
    python benchmarks/reward_transport.py --per-request 6       # the trainer's request size

`--encoder nofilter0` swaps the client's PNG encoder for png_nofilter (row filter
"none", stored deflate: still a valid PNG, the same pixels, the server unchanged),
to measure what that change to shared/images.py would save.

Writes benchmarks/results/reward_transport[-ENCODERS][-perN].json. Images: a smooth
gradient plus Gaussian noise (sigma 12), so PNG and JPEG sizes sit between flat
and pure noise.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from _common import (
    OUR_PACKAGES,
    machine_info,
    single_thread_env,
    stop_on_sigterm,
    versions,
    write_result,
)


def test_image(px: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:px, 0:px] / max(px - 1, 1)
    base = np.stack([255 * x, 255 * y, 255 * (1 - x) * y], axis=-1)
    noisy = base + rng.normal(0, 12, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def component_costs(px: int, reps: int) -> dict[str, float]:
    """Median single-thread ms of each step for one image of px x px."""
    from PIL import Image
    from pydantic import TypeAdapter

    from reward_server.scorers.jpeg import JpegCompressibility
    from shared.images import decode_image, encode_png
    from shared.protocol import ScoreItem, ScoreRequest

    img = test_image(px)
    adapter = TypeAdapter(list[ScoreItem])
    payload = encode_png(img)
    raw_png = base64.b64decode(payload.data)
    items = [ScoreItem(id="0", prompt="a cat", image=payload)]
    body = b'{"scorer":"jpeg_compressibility","items":' + adapter.dump_json(items) + b"}"
    scorer = JpegCompressibility()
    pil = decode_image(payload)
    fast = encode_payload(img, "nofilter0")
    if not np.array_equal(np.asarray(decode_image(fast)), img):
        raise AssertionError("the no-filter PNG does not decode to the same pixels")

    def png_at(level: int):
        def run() -> None:
            Image.fromarray(img).save(io.BytesIO(), format="PNG", compress_level=level)

        return run

    def png_size(level: int) -> int:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=level)
        return buf.tell()

    return {
        "png_bytes": len(raw_png),
        "png_encode_ms": _median_ms(png_at(1), reps),
        "png_level0_ms": _median_ms(png_at(0), reps),
        "png_level0_bytes": png_size(0),
        "png_level6_ms": _median_ms(png_at(6), max(3, reps // 4)),
        "png_level6_bytes": png_size(6),
        "png_nofilter0_ms": _median_ms(lambda: png_nofilter(img, 0), reps),
        "png_nofilter0_bytes": len(png_nofilter(img, 0)),
        "png_nofilter1_ms": _median_ms(lambda: png_nofilter(img, 1), reps),
        "png_nofilter1_bytes": len(png_nofilter(img, 1)),
        "server_decode_nofilter0_ms": _median_ms(lambda: decode_image(fast), reps),
        "base64_encode_ms": _median_ms(lambda: base64.b64encode(raw_png), reps),
        "encode_png_total_ms": _median_ms(lambda: encode_png(img), reps),
        "json_dump_ms": _median_ms(lambda: adapter.dump_json(items), reps),
        "server_parse_ms": _median_ms(lambda: ScoreRequest.model_validate_json(body), reps),
        "server_decode_ms": _median_ms(lambda: decode_image(payload), reps),
        "score_in_process_ms": _median_ms(lambda: scorer.score([pil], ["a cat"]), reps),
        "scorer_throughput_img_s": 1000
        / _median_ms(lambda: scorer.score([pil] * 16, ["a cat"] * 16), max(3, reps // 4))
        * 16,
    }


def png_nofilter(image: np.ndarray, level: int = 0) -> bytes:
    """A valid PNG with filter type 0 (none) on every row and zlib at `level`.

    Pillow picks PNG row filters adaptively, which costs more than the
    compression at level 0/1; with no filter and stored (level 0) deflate the
    file is the raw pixels plus ~0.4% framing, and any PNG decoder reads it.
    """
    h, w, _ = image.shape
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = image.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(rows.tobytes(), level)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encode_payload(image: np.ndarray, encoder: str):
    """The ImagePayload the client sends: shared.images.encode_png, or the no-filter PNG."""
    from shared.images import encode_png
    from shared.protocol import ImagePayload

    if encoder == "pillow":
        return encode_png(image)
    level = int(encoder.removeprefix("nofilter"))
    return ImagePayload(format="png", data=base64.b64encode(png_nofilter(image, level)).decode())


def _request_body(img: np.ndarray, i: int, encoder: str = "pillow", per_request: int = 1) -> bytes:
    from pydantic import TypeAdapter

    from shared.protocol import ScoreItem

    adapter = TypeAdapter(list[ScoreItem])
    items = [
        ScoreItem(id=f"{i}-{j}", prompt="a cat", image=encode_payload(img, encoder))
        for j in range(per_request)
    ]
    return b'{"scorer":"jpeg_compressibility","items":' + adapter.dump_json(items) + b"}"


def http_load(
    url: str,
    img: np.ndarray,
    clients: int,
    seconds: float,
    encoder: str = "pillow",
    per_request: int = 1,
) -> dict[str, float]:
    """`clients` threads, each POSTing `per_request` images per request for `seconds`."""
    import httpx

    from shared.protocol import ScoreResponse

    latencies: list[list[float]] = [[] for _ in range(clients)]
    retries = [0] * clients
    errors: list[str] = []
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]
    last_done = [0.0]
    lock = threading.Lock()

    def worker(k: int) -> None:
        with httpx.Client(timeout=120.0) as http:

            def one(i: int) -> float:
                t0 = time.perf_counter()
                body = _request_body(img, i, encoder, per_request)
                headers = {"Content-Type": "application/json"}
                try:
                    resp = http.post(f"{url}/v1/score", content=body, headers=headers)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # uvicorn closes keep-alive connections idle for 5 s (a slow warm-up
                    # of many clients); resend once on a new connection, as RewardClient
                    # would, and count it.
                    retries[k] += 1
                    resp = http.post(f"{url}/v1/score", content=body, headers=headers)
                resp.raise_for_status()
                ScoreResponse.model_validate_json(resp.content)
                return time.perf_counter() - t0

            try:
                one(0)  # warm-up: connection, first-call costs
            except Exception as exc:
                errors.append(repr(exc))
            start_gate.wait()
            i = 1
            while time.perf_counter() < stop_at[0]:
                try:
                    latencies[k].append(one(i))
                except Exception as exc:
                    errors.append(repr(exc))
                    break
                i += 1
            with lock:
                last_done[0] = max(last_done[0], time.perf_counter())

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 3600  # set for real once everyone is warm
    start_gate.wait()
    t_start = time.perf_counter()
    stop_at[0] = t_start + seconds
    for t in threads:
        t.join()
    wall = last_done[0] - t_start
    flat = sorted(x for per in latencies for x in per)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return {
        "requests": len(flat),
        "resent_after_idle_close": sum(retries),
        "wall_s": wall,
        "images_per_s": per_request * len(flat) / wall,
        "latency_p50_ms": 1000 * statistics.median(flat),
        "latency_p95_ms": 1000 * flat[min(len(flat) - 1, int(0.95 * len(flat)))],
    }


def reward_client_load(
    url: str, img: np.ndarray, seconds: float, per_request: int = 1
) -> dict[str, float]:
    """One caller submitting `per_request` images at a time through trainer.reward_client."""
    from trainer.config import RewardEndpoint
    from trainer.reward_client import RewardClient

    ep = RewardEndpoint(url=url, scorer="jpeg_compressibility", mode="sync")
    lat = []
    batch = np.repeat(img[None], per_request, axis=0)
    prompts = ["a cat"] * per_request
    with RewardClient([ep]) as client:
        for _ in range(2):
            client.submit(batch, prompts).result()
        t_start = time.perf_counter()
        while time.perf_counter() < t_start + seconds:
            t0 = time.perf_counter()
            client.submit(batch, prompts).result()
            lat.append(time.perf_counter() - t0)
        wall = time.perf_counter() - t_start
    lat.sort()
    return {
        "requests": len(lat),
        "wall_s": wall,
        "images_per_s": per_request * len(lat) / wall,
        "latency_p50_ms": 1000 * statistics.median(lat),
        "latency_p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=3.0, help="timed load per configuration")
    ap.add_argument("--reps", type=int, default=40, help="repeats per component timing")
    ap.add_argument("--batch-waits-ms", type=float, nargs="+", default=[5.0, 0.0])
    ap.add_argument(
        "--encoder",
        nargs="+",
        choices=["pillow", "nofilter0", "nofilter1"],
        default=["pillow"],
        help="client PNG encoder(s): shared.images.encode_png (the trainer's), or no-filter PNG",
    )
    ap.add_argument("--per-request", type=int, nargs="+", default=[1], help="images per request")
    ap.add_argument("--out", default=None, help="default: reward_transport[-ENCODERS][-perN]")
    args = ap.parse_args()
    stop_on_sigterm()

    from ddpo.server_process import RewardServerProcess

    info = machine_info()
    components = {px: component_costs(px, args.reps) for px in args.sizes}
    print("single-thread cost per image, ms (median)")
    cols = [
        "png_encode_ms",
        "png_level0_ms",
        "png_nofilter0_ms",
        "base64_encode_ms",
        "json_dump_ms",
        "server_parse_ms",
        "server_decode_ms",
        "server_decode_nofilter0_ms",
        "score_in_process_ms",
    ]
    print(f"{'px':>5}{'PNG kB':>8}" + "".join(f"{c.removesuffix('_ms'):>16.15}" for c in cols))
    for px, c in components.items():
        print(f"{px:>5}{c['png_bytes'] / 1000:>8.1f}" + "".join(f"{c[k]:>16.3f}" for k in cols))

    results = []
    for wait_ms in args.batch_waits_ms:
        env = single_thread_env({"DDPO_LOG_FORMAT": "text", "DDPO_BATCH_MAX_WAIT_MS": str(wait_ms)})
        with RewardServerProcess(["jpeg_compressibility"], extra_env=env) as server:
            for px in args.sizes:
                img = test_image(px)
                score_ms = components[px]["score_in_process_ms"]
                rows = []
                for enc in args.encoder:
                    for k in args.per_request:
                        if enc == "pillow":  # RewardClient always encodes with encode_png
                            r = reward_client_load(server.url, img, args.seconds, k)
                            rows.append(("RewardClient", enc, k, 1, r))
                        for n in args.clients:
                            r = http_load(server.url, img, n, args.seconds, enc, k)
                            rows.append(("httpx threads", enc, k, n, r))
                for client_kind, enc, k, n, r in rows:
                    r.update(
                        {
                            "batch_wait_ms": wait_ms,
                            "px": px,
                            "clients": n,
                            "client": client_kind,
                            "score_in_process_ms": score_ms,
                            "per_request": k,
                            "encoder": enc,
                            "added_ms_per_image": (r["latency_p50_ms"] - k * score_ms) / k,
                            "wall_ms_per_image": 1000 / r["images_per_s"],
                        }
                    )
                    results.append(r)

    print(
        f"\n{'wait':>5}{'px':>5}{'client':>14}{'encoder':>10}{'img/req':>8}{'N':>4}"
        f"{'img/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'score ms':>9}"
        f"{'added ms/img':>14}{'wall ms/img':>12}"
    )
    for r in results:
        print(
            f"{r['batch_wait_ms']:>5g}{r['px']:>5}{r['client']:>14}{r['encoder']:>10}"
            f"{r['per_request']:>8}{r['clients']:>4}"
            f"{r['images_per_s']:>9.1f}{r['latency_p50_ms']:>9.2f}{r['latency_p95_ms']:>9.2f}"
            f"{r['score_in_process_ms']:>9.2f}{r['added_ms_per_image']:>14.2f}"
            f"{r['wall_ms_per_image']:>12.2f}"
        )
    target = [
        r for r in results if r["px"] == 256 and r["clients"] == 1 and r["client"] != "RewardClient"
    ]
    for r in target:
        ok = "met" if r["added_ms_per_image"] <= 3 else "missed"
        print(
            f"256 px, 1 client, batch wait {r['batch_wait_ms']:g} ms, {r['encoder']}, "
            f"{r['per_request']}/request: "
            f"{r['added_ms_per_image']:.2f} ms/image added (target <= 3 ms: {ok})"
        )
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    name = args.out or "reward_transport" + (
        "" if args.encoder == ["pillow"] else "-" + "-".join(args.encoder)
    ) + ("" if args.per_request == [1] else "-per" + "-".join(map(str, args.per_request)))
    path = write_result(
        name,
        {
            "command": command,
            "machine": info,
            "versions": versions(OUR_PACKAGES),
            "images": "gradient + N(0, 12) noise, uint8 RGB",
            "encoders": args.encoder,
            "per_request": args.per_request,
            "components_ms": {str(k): v for k, v in components.items()},
            "target_256px_1_client": [
                {k: r[k] for k in ("batch_wait_ms", "encoder", "per_request", "added_ms_per_image")}
                for r in target
            ],
            "load": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
