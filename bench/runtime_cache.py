"""Loading a backbone for serving, cold (converting to OpenVINO) vs from the conversion cache.

    python bench/runtime_cache.py [--backbones efficientnet_lite0,...] [--rounds 1]

For each backbone, in fresh processes (as after a restart): build it (`Backbone`), ask for the
fastest runtime with an empty cache folder (cold: trace, freeze, convert, check against
TensorFlow, store), then again in a new process with that folder (cached: load the IR, check
against the stored outputs), and time one image through it. Wall and CPU seconds per step and
the 1-minute load average before each, so loaded runs can be read. One JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import machine

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
from models.backbones import Backbone
from models.runtime import OpenVinoForward
def lap(t):
    return time.perf_counter() - t[0], time.process_time() - t[1]
t = (time.perf_counter(), time.process_time())
b = Backbone({name!r})
build = lap(t)
t = (time.perf_counter(), time.process_time())
b.use_fastest_runtime({cache!r})
runtime = lap(t)
x = np.full((1, b.input_size, b.input_size, 3), 128, np.float32)
t = (time.perf_counter(), time.process_time())
b.features(x)
first = lap(t)
print(json.dumps({{"build_s": build, "runtime_s": runtime, "first_image_s": first,
                  "openvino": isinstance(b._forward, OpenVinoForward)}}))
"""


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def child(name: str, cache: str) -> dict:
    load = load_average()
    done = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO), name=name,
                                                              cache=cache)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    row = {"load_average": load, "openvino": out["openvino"]}
    for key in ("build_s", "runtime_s", "first_image_s"):
        row[key] = {"wall": round(out[key][0], 3), "cpu": round(out[key][1], 3)}
    row["total_wall_s"] = round(sum(out[k][0] for k in ("build_s", "runtime_s", "first_image_s")), 3)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    result = {"machine": machine(), "backbones": {}}
    for name in args.backbones.split(","):
        rounds = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as cache:
                rounds.append({"cold": child(name, cache), "cached": child(name, cache)})
        result["backbones"][name] = rounds
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
