"""Batch prediction: every image of some uploaded files (zips in any layout
`models.datasets` reads, or loose images) through a trained `Predictor`, in batched forward
passes, with per-file rejects, and an evaluation when the images carry labels.

Images are decoded safely by `models.datasets.read_stream` (zip limits, pixel limits, bounded
inflation) and streamed: at most `chunk` decoded images are held at a time, so memory does
not grow with the batch. A file or zip member that is not a usable image is a reject with its
reason; the others are kept. An exact copy of an image already read is not run again: its
row repeats the first one's answer, with `duplicate_of`.

Labels: an image of a zip has the class the zip's layout gives it (its class folder, or the
zip's name for a zip of loose images); it counts as a true label when it is one of the
predictor's classes. A loose file has none. With at least one labelled image, `evaluation`
holds the ensemble's accuracy, per-class scores and confusion matrix
(`models.metrics.classification_report`) and each backbone's accuracy, on those images.

`predict_batch` returns a JSON-ready dict (see there); `result_csv` renders it as CSV.
"""
from __future__ import annotations

import csv
import io
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.datasets import ZipLimits, looks_like_zip, read_stream
from models.images import MAX_PIXELS
from models.metrics import classification_report

# any label will do for a loose file (models.datasets needs one to read it); it is dropped
_LOOSE = "loose"


@dataclass(frozen=True)
class BatchFile:
    """One uploaded file, stored at `path`; `name` is what the user called it (shown in
    reports only, never used as a path)."""

    path: Path
    name: str


def count_candidates(files: Sequence[BatchFile]) -> int:
    """How many images the files may hold, for progress: a zip's file members (0 when it is
    not a readable zip: it is rejected whole), 1 for any other file."""
    total = 0
    for f in files:
        with open(f.path, "rb") as stream:
            if not looks_like_zip(f.name, stream.read(4)):
                total += 1
                continue
        try:
            with zipfile.ZipFile(f.path) as archive:
                total += sum(1 for info in archive.infolist() if not info.is_dir())
        except (zipfile.BadZipFile, OSError, ValueError):
            pass
    return total


def predict_batch(predictor, files: Sequence[BatchFile], *, chunk: int = 32,
                  threshold: float = 0.0, progress: Callable[[int, int], None] | None = None,
                  limits: ZipLimits = ZipLimits(), max_pixels: int = MAX_PIXELS) -> dict:
    """Classify every image of `files` with `predictor` (`models.predictor.Predictor`), `chunk`
    images per forward pass. `progress(done, total)` is called after each pass (`done`
    counts images read so far, answered or rejected); an exception it raises stops the batch.

    Returns {"classes", "backbones", "images": [row, ...], "rejected": [{"name", "reason"}],
    "n_images", "n_rejected", "labelled", "evaluation" (None without labelled images),
    "timing": {"forward_seconds", "decode_seconds", "wall_seconds", "images_per_second"}}; a
    row is {"name", "sha256", "label" (true class or None), "prediction" (ensemble answer,
    "unknown" below `threshold`), "score", "correct" (None without a label), "backbones":
    {name: {"label", "score"}}, "ensemble": the full ensemble answer, "duplicate_of"}.
    """
    classes = list(predictor.classes)
    known = set(classes)
    total = count_candidates(files)
    rows: list[dict] = []
    rejected: list[dict] = []
    by_source: dict[str, dict] = {}
    pending: list[tuple] = []  # (sample, image, true label)
    clock = {"forward": 0.0, "start": time.perf_counter()}
    seen = [0]

    def flush() -> None:
        if not pending:
            return
        images = [image for _, image, _ in pending]
        start = time.perf_counter()
        probabilities = predictor.probabilities(images)
        clock["forward"] += time.perf_counter() - start
        answers = predictor.answer(probabilities, top_k=1, threshold=threshold)
        for (sample, _, label), answer in zip(pending, answers):
            row = _row(sample.source, sample.sha256, label, answer)
            rows.append(row)
            by_source[sample.source] = row
        pending.clear()
        if progress is not None:
            progress(seen[0], max(total, seen[0]))

    current = {"labelled": False}  # whether the file being read can carry labels (a zip)

    def sink(sample, image) -> None:
        seen[0] += 1
        label = sample.label if current["labelled"] and sample.label in known else None
        pending.append((sample, image, label))
        if len(pending) >= chunk:
            flush()

    for f in files:
        with open(f.path, "rb") as stream:
            labelled = current["labelled"] = looks_like_zip(f.name, stream.read(4))
            stream.seek(0)
            dataset = read_stream(stream, name=f.name, label=None if labelled else _LOOSE,
                                  max_pixels=max_pixels, limits=limits, on_sample=sink)
        seen[0] += len(dataset.rejected) + len(dataset.duplicates)
        rejected += [{"name": r.source, "reason": r.reason} for r in dataset.rejected]
        flush()  # the kept copy of a duplicate must be answered before it is repeated
        for d in dataset.duplicates:
            first = by_source.get(d.kept_source)
            if first is None:  # pragma: no cover - a duplicate's first copy was always kept
                continue
            label = d.label if labelled and d.label in known else None
            rows.append({**_row(d.source, first["sha256"], label, first["ensemble"],
                                first["backbones"]), "duplicate_of": first["name"]})
    flush()
    wall = time.perf_counter() - clock["start"]
    forward = clock["forward"]
    return {
        "classes": classes, "backbones": list(predictor.backbones),
        "images": rows, "rejected": rejected,
        "n_images": len(rows), "n_rejected": len(rejected),
        "labelled": sum(r["label"] is not None for r in rows),
        "evaluation": evaluate(rows, classes),
        "timing": {"forward_seconds": round(forward, 3),
                   "decode_seconds": round(max(wall - forward, 0.0), 3),
                   "wall_seconds": round(wall, 3),
                   "images_per_second": round(len(by_source) / forward, 2) if forward else None},
    }


def _row(name: str, sha256: str, label: str | None, ensemble: dict,
         backbones: dict | None = None) -> dict:
    """One image's row; `ensemble` is `Predictor.answer`'s answer (or a row's ensemble)."""
    if backbones is None:
        backbones = {n: top[0] for n, top in ensemble["backbones"].items()}
        ensemble = ensemble["ensemble"]
    guess = ensemble.get("best_guess", ensemble["label"])
    return {"name": name, "sha256": sha256, "label": label, "prediction": ensemble["label"],
            "score": ensemble["score"], "correct": None if label is None else guess == label,
            "backbones": backbones, "ensemble": ensemble, "duplicate_of": None}


def evaluate(rows: Sequence[dict], classes: list[str]) -> dict | None:
    """The labelled rows' evaluation: the ensemble's `classification_report` (its best guess
    where it said "unknown") plus each backbone's accuracy; None without labelled rows."""
    labelled = [r for r in rows if r["label"] is not None]
    if not labelled:
        return None
    index = {c: i for i, c in enumerate(classes)}
    y_true = np.array([index[r["label"]] for r in labelled])
    guesses = [r["ensemble"].get("best_guess", r["ensemble"]["label"]) for r in labelled]
    report = classification_report(y_true, np.array([index[g] for g in guesses]), classes)
    report["backbones"] = {
        name: {"accuracy": float(np.mean([r["backbones"][name]["label"] == r["label"]
                                          for r in labelled]))}
        for name in labelled[0]["backbones"]}
    return report


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value) -> str:
    """A CSV cell; text that a spreadsheet would run as a formula (a file or class name
    starting with = + - @) is prefixed with a quote (OWASP's CSV-injection advice)."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def result_csv(result: dict) -> str:
    """The batch as CSV: one row per image (then one per reject, with its reason): name,
    true label, the ensemble's answer and score, whether it is right, each backbone's
    answer and score, and which earlier image it duplicates."""
    backbones = result["backbones"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "true_label", "prediction", "score", "correct",
                     *[c for b in backbones for c in (b, f"{b}_score")],
                     "duplicate_of", "rejected"])
    for r in result["images"]:
        correct = "" if r["correct"] is None else ("yes" if r["correct"] else "no")
        per = [c for b in backbones
               for c in (_cell(r["backbones"][b]["label"]), r["backbones"][b]["score"])]
        writer.writerow([_cell(r["name"]), _cell(r["label"]), _cell(r["prediction"]),
                         r["score"], correct, *per, _cell(r["duplicate_of"]), ""])
    for r in result["rejected"]:
        writer.writerow([_cell(r["name"]), "", "", "", "", *[""] * (2 * len(backbones)), "",
                         _cell(r["reason"])])
    return out.getvalue()
