"""Batch-prediction throughput through the real server, next to the backbones' raw extraction
speed (issue 15, item 2), in one run.

    python bench/batch_predict.py [DATASET_DIR] [--images 1000] [--per-class 10]
                                  [--backbones efficientnet_lite0] [--extraction-images 64]

1. Makes a temporary zip of `--images` distinct images in class folders from DATASET_DIR
   (default ../shared/datasets/galaxy4-dev): every image, then its flips and rotations
   (re-encoded JPEG, so no two are byte-identical), in a temporary folder, never in the repo.
2. Starts `python app.py` (gevent web process + worker child: `bench/server.py`) on a fresh
   instance; through the JSON API creates a project with `--backbones`, uploads `--per-class`
   images per class and trains it.
3. Sends a 16-image warm-up batch (the worker loads the model), then the big zip to
   `POST …/predict`, polls the batch as the page does, and reads its result:
   `wall_seconds` (POST to succeeded), `images_per_second` (images / wall), and the job's own
   `timing.images_per_second` (forward passes only, decoding excluded) and
   `timing.decode_seconds`.
4. Stops the server, then runs `bench/speed.py`'s `extraction` for each backbone (forward
   passes of `--extraction-images` images at its input size, best of 2): its images/s.
   A batch image costs one pass per view of each backbone's head (`views`, from the
   results), so `expected_images_per_second` = 1 / sum(views_b / extraction_b) is what
   forward passes alone allow, and `forward_vs_extraction` = the job's forward-pass images/s
   over that (1.0: the batch path adds nothing to the raw forward passes).

Prints one JSON object with the machine and the load average before and after.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import requests

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_training_time import Api, bench_token, train_and_wait  # noqa: E402
from machine import machine  # noqa: E402
from server import launch_app, stop_app  # noqa: E402

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "galaxy4-dev"


def class_images(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())
            for d in sorted(root.iterdir()) if d.is_dir()}


def training_zip(images: dict[str, list[Path]], per_class: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for label, paths in images.items():
            for p in paths[:per_class]:
                archive.write(p, f"{label}/{p.name}")
    return buf.getvalue()


def batch_zip(images: dict[str, list[Path]], n: int, path: Path) -> int:
    """A zip of `n` distinct JPEGs in class folders at `path`: each image, then each one
    flipped and rotated (as many rounds as needed); returns how many it holds."""
    from PIL import Image

    t = Image.Transpose
    variants = [None, t.FLIP_LEFT_RIGHT, t.FLIP_TOP_BOTTOM, t.ROTATE_90, t.ROTATE_180,
                t.ROTATE_270, t.TRANSPOSE, t.TRANSVERSE]
    flat = [(label, p) for label, paths in images.items() for p in paths]
    written = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for round_, variant in enumerate(variants):
            for label, p in flat:
                if written >= n:
                    return written
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    if variant is not None:
                        im = im.transpose(variant)
                    buf = io.BytesIO()
                    im.save(buf, "JPEG", quality=92)
                archive.writestr(f"{label}/v{round_}_{p.stem}.jpg", buf.getvalue())
                written += 1
    return written


class _Proc:
    """What `train_and_wait` needs of a server: `check()` and `log()`."""

    def __init__(self, proc, log_path: Path):
        self.proc, self.log_path = proc, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"python app.py exited:\n{self.log()[-4000:]}")


def run_batch(api: Api, server: _Proc, pid: int, name: str, data: bytes,
              timeout: float = 3600) -> dict:
    """POST the zip to predict, poll the batch until it finishes: its result and wall time."""
    began = time.perf_counter()
    batch = api.post_file(f"/api/v1/projects/{pid}/predict", name, data)
    while True:
        body = api.get(f"/api/v1/batches/{batch['job_id']}")
        if body["job"]["state"] not in ("queued", "running"):
            break
        if time.perf_counter() - began > timeout:
            raise TimeoutError(f"batch not finished after {timeout} s: {body['job']}")
        server.check()
        time.sleep(0.25)
    wall = time.perf_counter() - began
    if body["job"]["state"] != "succeeded":
        raise RuntimeError(f"batch {body['job']['state']}: {body['job'].get('error')}\n"
                           f"{server.log()[-4000:]}")
    body["wall_seconds"] = round(wall, 2)
    return body


def server_figures(args, workdir: Path, images: dict[str, list[Path]]) -> dict:
    from models.features import parse_head_input

    instance = workdir / "instance"
    zip_path = workdir / "batch.zip"
    n = batch_zip(images, args.images, zip_path)
    warmup = training_zip({k: v[-4:] for k, v in images.items()}, 4)
    token = bench_token(instance)
    log_path = workdir / "server.log"

    def ready(base: str) -> bool:
        up = requests.get(base + "/healthz", timeout=5).ok
        return up and "ready (queue" in log_path.read_text(errors="replace")

    proc, base = launch_app(instance, log_path, {"TRANSFERLAB_WORKER": "true",
                                                 "TF_CPP_MIN_LOG_LEVEL": "2"}, ready,
                            timeout=600)
    server, api = _Proc(proc, log_path), Api(base, token)
    try:
        pid = api.post_json("/api/v1/projects", {"name": "batch bench",
                                                 "backbones": args.backbones.split(",")})["id"]
        api.post_file(f"/api/v1/projects/{pid}/images", "train.zip",
                      training_zip(images, args.per_class))
        trained = train_and_wait(api, pid, 3600, server)
        results = api.get(f"/api/v1/projects/{pid}/results")
        views = {b: len(parse_head_input(e["hyperparameters"]["views"])[0])
                 for b, e in results["backbones"].items()}
        run_batch(api, server, pid, "warmup.zip", warmup)
        load_before = os.getloadavg()
        body = run_batch(api, server, pid, "batch.zip", zip_path.read_bytes())
        load_after = os.getloadavg()
    finally:
        stop_app(proc)
    timing = body["timing"]
    return {
        "images_in_zip": n, "zip_mb": round(zip_path.stat().st_size / 1e6, 1),
        "train_seconds": trained["seconds"], "views": views,
        "n_images": body["n_images"], "n_rejected": body["n_rejected"],
        "wall_seconds": body["wall_seconds"],
        "images_per_second": round(body["n_images"] / body["wall_seconds"], 2),
        "forward_images_per_second": timing["images_per_second"],
        "forward_seconds": timing["forward_seconds"], "decode_seconds": timing["decode_seconds"],
        "job_seconds": timing["wall_seconds"],
        "accuracy_on_labelled": (body["evaluation"] or {}).get("accuracy"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }


def extraction_figures(backbones: list[str], images: dict[str, list[Path]], n: int) -> dict:
    from models.images import decode_image
    from speed import extraction

    sample = [decode_image(p.read_bytes()) for p in next(iter(images.values()))[:16]]
    return {b: extraction(b, sample, n) for b in backbones}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--extraction-images", type=int, default=64)
    args = parser.parse_args(argv)
    images = class_images(Path(args.dataset))
    out: dict = {"backbones": args.backbones.split(","), "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        out["server"] = server_figures(args, Path(tmp), images)
    out["extraction"] = extraction_figures(out["backbones"], images, args.extraction_images)
    views = out["server"]["views"]
    per_image = sum(views[b] / out["extraction"][b]["images_per_second"] for b in views)
    out["expected_images_per_second"] = round(1 / per_image, 2)
    forward = out["server"]["forward_images_per_second"]
    out["forward_vs_extraction"] = round(forward / out["expected_images_per_second"], 3)
    out["load_average_end"] = os.getloadavg()
    out["machine"] = machine()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
