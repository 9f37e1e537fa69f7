"""RSS of a real ``btoks serve`` process before/after requests of 24 solid-colour 4096x4096 PNG data URLs.

The reproduction of issue 14 (memory amplification): ``python -m bench.serve_rss [--requests 3]``. Starts the
server on 127.0.0.1 with a tiny random-weight Qwen2-VL model, posts ``{"input": [data URL] * 24}`` to
``/v1/embeddings`` ``--requests`` times, and prints VmRSS (and the peak, VmHWM) read from /proc.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024  # MiB
    return out


def png_data_url(size: int = 4096) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--model", default=None, help="saved model folder (default: a tiny random Qwen2-VL)")
    p.add_argument("--image-budget", type=int, default=448 * 448,
                   help="image pixel budget of the default tiny model (448² = 256 tokens an image)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="btoks-rss-"))
    model = args.model
    if model is None:
        from btoks import BToksConfig, BToksModel
        from btoks.backbones.tiny import tiny_backbone

        model = str(tmp / "model")
        tiny = BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4))
        tiny.backbone.set_pixel_budget(max_pixels=args.image_budget)  # images must fit its max_length of 1024
        tiny.save_pretrained(model)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "btoks.cli", "serve", model, "--port", str(port),
                             "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        body = json.dumps({"input": [png_data_url(args.size)] * args.images}).encode()
        before = _status(proc.pid)
        print(f"body {len(body) / 1e6:.2f} MB; before: RSS {before['VmRSS']} MiB", flush=True)
        for i in range(args.requests):
            req = urllib.request.Request(url + "/v1/embeddings", data=body,
                                         headers={"Content-Type": "application/json"})
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = f"{e.code} {e.read()[:200]!r}"
            st = _status(proc.pid)
            print(f"request {i + 1}: HTTP {code} in {time.perf_counter() - t:.1f}s; RSS {st['VmRSS']} MiB "
                  f"(+{st['VmRSS'] - before['VmRSS']}), peak {st['VmHWM']} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
