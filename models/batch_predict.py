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

Suggestions: the unlabelled images whose labels would help the model most
(`models.active`: lowest margin between the ensemble's top two probabilities, spread over the
head inputs the forward passes computed anyway), kept in a bounded pool while the batch
streams. `read_image` gets an image's bytes back from the batch's stored files (to add it to
a project once the user labelled it).

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

from models.active import POOL_FACTOR, SUGGESTIONS, UncertainPool, embed, margins
from models.datasets import ZipLimits, looks_like_zip, read_stream
from models.datasets.zips import read_member
from models.ensemble import mean_probability
from models.images import MAX_PIXELS, sha256_hex
from models.metrics import classification_report
from models.result import combine_ensemble

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
                  limits: ZipLimits = ZipLimits(), max_pixels: int = MAX_PIXELS,
                  suggestions: int = SUGGESTIONS) -> dict:
    """Classify every image of `files` with `predictor` (`models.predictor.Predictor`), `chunk`
    images per forward pass. `progress(done, total)` is called after each pass (`done`
    counts images read so far, answered or rejected); an exception it raises stops the batch.

    Returns {"classes", "backbones", "images": [row, ...], "rejected": [{"name", "reason"}],
    "n_images", "n_rejected", "labelled", "evaluation" (None without labelled images),
    "timing": {"forward_seconds", "decode_seconds", "wall_seconds", "images_per_second"},
    "suggestions": [{"index" (of the row), "name", "sha256", "prediction", "margin", "top":
    the ensemble's two best [{"label", "score"}]}, ...] (up to `suggestions` unlabelled
    images, first copies only, in the order to label them; see `models.active`)}; a row is
    {"name", "sha256", "file" (index of its file in `files`), "label" (true class or None),
    "prediction" (ensemble answer, "unknown" below `threshold` or when unlike every class:
    `Predictor.ood_part`), "score", "correct" (None
    without a label), "backbones": {name: {"label", "score"}}, "ensemble": the full ensemble
    answer, "duplicate_of"}.
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
    pool = UncertainPool(POOL_FACTOR * suggestions)
    current = {"labelled": False, "file": 0}  # the file being read: its index, whether a zip

    def flush() -> None:
        if not pending:
            return
        images = [image for _, image, _ in pending]
        start = time.perf_counter()
        inputs = predictor.head_inputs(images)
        probabilities = predictor.head_probabilities(inputs)
        clock["forward"] += time.perf_counter() - start
        answers = predictor.answer(probabilities, top_k=1, threshold=threshold,
                                   ood=predictor.ood_part(inputs))
        ensemble = ensemble_probabilities(probabilities, predictor.result.report.get("ensemble"))
        uncertainty, embeddings = margins(ensemble), embed(inputs)
        for i, ((sample, _, label), answer) in enumerate(zip(pending, answers)):
            row = _row(sample.source, sample.sha256, label, answer, file=current["file"])
            if label is None:
                top = [{"label": classes[c], "score": round(float(ensemble[i, c]), 4)}
                       for c in np.argsort(-ensemble[i])[:2]]
                pool.offer((len(rows), top), uncertainty[i], embeddings[i])
            rows.append(row)
            by_source[sample.source] = row
        pending.clear()
        if progress is not None:
            progress(seen[0], max(total, seen[0]))

    def sink(sample, image) -> None:
        seen[0] += 1
        label = sample.label if current["labelled"] and sample.label in known else None
        pending.append((sample, image, label))
        if len(pending) >= chunk:
            flush()

    for index, f in enumerate(files):
        current["file"] = index  # (nothing is pending here: each file ends with a flush)
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
                                first["backbones"], file=index), "duplicate_of": first["name"]})
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
        "suggestions": [{"index": i, "name": rows[i]["name"], "sha256": rows[i]["sha256"],
                         "prediction": rows[i]["prediction"], "margin": round(margin, 4),
                         "top": top}
                        for (i, top), margin in pool.select(suggestions)],
    }


def ensemble_probabilities(per_backbone: dict[str, np.ndarray],
                           ensemble: dict | None) -> np.ndarray:
    """(n, C): the probabilities the project's ensemble (the report's {"key", "weights"})
    ranks classes by; for a vote (or none), the backbones' mean probability, since vote
    shares have no margin to speak of with one or two backbones."""
    key = (ensemble or {}).get("key", "vote")
    if key == "vote":
        return mean_probability(list(per_backbone.values()))
    return combine_ensemble(key, per_backbone, (ensemble or {}).get("weights")).probs


def _row(name: str, sha256: str, label: str | None, ensemble: dict,
         backbones: dict | None = None, *, file: int) -> dict:
    """One image's row; `ensemble` is `Predictor.answer`'s answer (or a row's ensemble)."""
    if backbones is None:
        backbones = {n: top[0] for n, top in ensemble["backbones"].items()}
        ensemble = ensemble["ensemble"]
    guess = ensemble.get("best_guess", ensemble["label"])
    return {"name": name, "sha256": sha256, "file": file, "label": label,
            "prediction": ensemble["label"],
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


def read_image(files: Sequence[BatchFile], row: dict, limits: ZipLimits = ZipLimits()) -> bytes:
    """The original bytes of a batch's image `row` (as `predict_batch` gave it), read back
    from its stored file: the file itself for a loose file, its member for a zip (checked and
    inflated as reading the batch did). Raises LookupError when the row's file or member is
    not there or no longer holds that image (its sha256 differs)."""
    index = row.get("file")
    if not isinstance(index, int) or not 0 <= index < len(files):
        raise LookupError(f"{row['name']}: the batch does not record which file it came from")
    f = files[index]
    with open(f.path, "rb") as stream:
        if looks_like_zip(f.name, stream.read(4)):
            prefix = f"{f.name}:"
            if not row["name"].startswith(prefix):
                raise LookupError(f"{row['name']}: not a member of {f.name}")
            stream.seek(0)
            try:
                data = read_member(stream, row["name"][len(prefix):], limits)
            except (KeyError, ValueError) as exc:
                raise LookupError(f"{row['name']}: {exc}") from None
        else:
            stream.seek(0)
            data = stream.read(limits.max_member_size + 1)
    if sha256_hex(data) != row["sha256"]:
        raise LookupError(f"{row['name']}: the stored file no longer holds this image")
    return data
