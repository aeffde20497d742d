"""First-prediction latency after a training and after a restart, and retraining costs, as a
user of `python app.py` sees them (issue 14, item 6).

    python bench/first_prediction.py [DATASET_DIR] [--backbones a,b] [--per-class 20]
                                     [--think 3] [--cold]

Starts the real server (gevent web process + worker child) on a fresh temporary instance,
through the JSON API only:
  1. creates a project (`--backbones`, default: the server's defaults, i.e. the backbones whose
     weights are here) and uploads `--per-class` images of each class of DATASET_DIR (default
     ../shared/datasets/galaxy4-dev);
  2. trains, polling the job as the page does, waits `--think` seconds (a user choosing an
     image), then times the first prediction            -> first_after_training_s
     and a second one                                   -> warm_prediction_s;
  3. trains again with nothing new                      -> nothing_changed_s (the answer)
     and, with `{"force": true}`, the full retraining   -> forced_retrain_s;
  4. uploads 5 more images and trains                   -> plus5_retrain_s, plus5_features;
  5. restarts the server, waits until it answers, waits `--think` s, times the first
     prediction                                         -> first_after_restart_s
     (the start-up warm-ups' seconds from its log       -> restart_warmups_s),
     then the same after emptying the OpenVINO conversion cache
                                                        -> first_after_restart_uncached_s.
`--cold` turns the warm-ups off (TRANSFERLAB_WARM_PREDICTORS=false, WARM_AT_START=0): today's
on-demand loading, for the "before" figures. Prints one JSON object with the machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from api_training_time import Api, Server, bench_token, free_port, train_and_wait
from machine import machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "galaxy4-dev"


def class_images(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())
            for d in sorted(root.iterdir()) if d.is_dir()}


def zip_of(files: dict[str, list[Path]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for label, paths in files.items():
            for p in paths:
                archive.write(p, f"{label}/{p.name}")
    return buf.getvalue()


def warmups(log: str) -> list[float]:
    """The web process's "iteration N warmed in S s" figures, from its log."""
    return [float(m) for m in re.findall(r"iteration \d+ warmed in ([0-9.]+) s", log)]


def timed(call):
    began = time.perf_counter()
    out = call()
    return out, round(time.perf_counter() - began, 3)


def run(args, workdir: Path) -> dict:
    os.environ["TRANSFERLAB_WARM_PREDICTORS"] = "false" if args.cold else "true"
    os.environ["TRANSFERLAB_WARM_AT_START"] = "0" if args.cold else "2"
    instance = workdir / "instance"
    port = free_port()
    images = class_images(Path(args.dataset))
    first = {k: v[:args.per_class] for k, v in images.items()}
    extra = {k: v[args.per_class:args.per_class + 2] for k, v in images.items()}
    extra = dict(list({k: v for k, v in extra.items() if v}.items()))
    plus5 = {}
    for label, paths in extra.items():  # 5 images over the classes
        take = paths[:max(0, 5 - sum(len(v) for v in plus5.values()))]
        if take:
            plus5[label] = take
    probe = next(iter(images.values()))[-1].read_bytes()
    out: dict = {"cold": args.cold, "per_class": args.per_class, "think_s": args.think}
    server = Server(instance, port, workdir / "server.log")
    api = Api(f"http://127.0.0.1:{port}", bench_token(instance))
    try:
        server.start()
        server.wait_ready(api, 600)
        body = {"name": "bench"} | ({"backbones": args.backbones.split(",")} if args.backbones else {})
        project = api.post_json("/api/v1/projects", body)
        pid = project["id"]
        out["backbones"] = project["backbones"]
        api.post_file(f"/api/v1/projects/{pid}/images", "data.zip", zip_of(first))
        out["train_s"] = train_and_wait(api, pid, 3600, server)["seconds"]
        time.sleep(args.think)
        predict = lambda: api.post_file(f"/api/v1/projects/{pid}/predict", "probe.jpg", probe)  # noqa: E731
        _, out["first_after_training_s"] = timed(predict)
        _, out["warm_prediction_s"] = timed(predict)
        answer, out["nothing_changed_s"] = timed(
            lambda: api.post_json(f"/api/v1/projects/{pid}/train", {}))
        out["nothing_changed"] = bool(answer.get("nothing_changed"))
        began = time.perf_counter()
        job = api.post_json(f"/api/v1/projects/{pid}/train", {"force": True})
        while job["state"] in ("queued", "running"):
            time.sleep(0.2)
            job = api.get(f"/api/v1/jobs/{job['job_id']}")
        out["forced_retrain_s"] = round(time.perf_counter() - began, 2)
        api.post_file(f"/api/v1/projects/{pid}/images", "more.zip", zip_of(plus5))
        done = train_and_wait(api, pid, 3600, server)
        out["plus5_retrain_s"] = done["seconds"]
        out["plus5_features_computed"] = done["job"]["features_computed"]
        out["plus5_stages"] = done["stages"]
        server.stop()
        server.start()
        began = time.perf_counter()
        server.wait_ready(api, 600)
        out["restart_ready_s"] = round(time.perf_counter() - began, 2)
        time.sleep(args.think)
        _, out["first_after_restart_s"] = timed(predict)
        _, out["warm_after_restart_s"] = timed(predict)
        out["restart_warmups_s"] = warmups(server.log())
        # The same restart without the OpenVINO conversion cache (what it saves, same load).
        server.stop()
        shutil.rmtree(instance / "openvino", ignore_errors=True)
        server.start()
        server.wait_ready(api, 600)
        time.sleep(args.think)
        _, out["first_after_restart_uncached_s"] = timed(predict)
        out["restart_uncached_warmups_s"] = warmups(server.log())
    finally:
        server.stop()
    out["machine"] = machine()
    out["load_average"] = os.getloadavg()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET))
    parser.add_argument("--backbones", default="")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--think", type=float, default=3.0)
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="first-prediction-") as tmp:
        print(json.dumps(run(args, Path(tmp)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
