"""The training run: a project's stored images -> `models.training.train` -> a new iteration.

`run_training(app, job_id)` runs one queued job from start to end in the calling thread,
inside an app context: it claims the job (`web.jobs.state.claim`), trains, saves the
iteration and marks the job succeeded, or marks it cancelled or failed; it never raises for
a failed training, and returns the job's final state ("succeeded", "failed", "cancelled", or
"skipped" when the job was not queued any more).

Its steps are usable without a job (a benchmark, a script), each inside an app context:
`load_samples` (the project's images, read lazily), `train_samples` (the engine with the
app's feature cache and weights) and `save_iteration` (the stored result plus its
`Iteration` row, left for the caller to commit).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa

from models.result import summarize, views_extracted
from web.db import Iteration, Job, Project, ProjectImage, db
from web.jobs import state
from web.jobs.state import JobCancelled
from web.storage import Storage

log = logging.getLogger("transferlab.worker")

PROGRESS_SHARE = 0.97  # training's share of the bar; saving the iteration is the rest


@dataclass(frozen=True)
class StoredSample:
    """A project image as the engine's `train()` sees a `Sample`, read from storage lazily:
    bytes are only read (and decoded) when the feature cache misses."""

    sha256: str
    label: str
    source: str
    path: Path

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    def image(self):
        from models.images import decode_image

        return decode_image(self.data)


def load_samples(storage: Storage, project_id: int) -> dict[str, list[StoredSample]]:
    """The project's images as samples, by split: {"train": [...], "test": [...]}."""
    rows = db.session.scalars(
        sa.select(ProjectImage).where(ProjectImage.project_id == project_id)
        .order_by(ProjectImage.id)).all()
    return {split: [StoredSample(r.sha256, r.label, r.name, storage.blob_path(r.sha256))
                    for r in rows if r.split == split] for split in ("train", "test")}


@lru_cache(maxsize=1)
def recipe_version() -> str:
    """A hash of the training recipe's code (every module of the `models` package): a
    retraining after an upgrade that changed it is not "nothing changed"."""
    import models

    root = Path(models.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def training_fingerprint(samples: dict[str, list], backbones: list[str], *,
                         fine_tune: bool) -> str:
    """What a training is made of, as one sha256: the images (sha256 with label and split,
    as `load_samples` gives them), the backbones, the settings and `recipe_version`."""
    images = sorted((s.sha256, s.label, split) for split, items in samples.items()
                    for s in items)
    payload = {"images": images, "backbones": list(backbones),
               "settings": {"fine_tune": bool(fine_tune)}, "recipe": recipe_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def feature_cache(config):
    """The feature cache shared by every worker (computed features survive a crash)."""
    from models.features import FeatureCache

    return FeatureCache(config["FEATURE_CACHE_DIR"])


def train_samples(config, samples: dict[str, list], backbones: list[str], cache, *,
                  fine_tune: bool = False, progress=None):
    """`models.training.train` on `samples` (as `load_samples` gives them) with ImageNet
    backbones from the app's `WEIGHTS_DIR`; returns its `TrainingResult`."""
    from models.backbones import load_backbone
    from models.training import train

    weights_dir = config.get("WEIGHTS_DIR")
    return train(samples["train"], backbones, cache,
                 lambda name: load_backbone(name, "imagenet", weights_dir),
                 test_samples=samples["test"], progress=progress, fine_tune=fine_tune)


def save_iteration(storage: Storage, project_id: int, result, backbones: list[str], *,
                   features_computed: int, job_id: int | None = None,
                   fingerprint: str | None = None) -> Iteration:
    """Store `result` as the project's next iteration and add its row to the session,
    flushed but not committed: the caller commits it, or rolls back and removes
    `storage.resolve(iteration.folder)`."""
    number, relpath = _store_result(storage, project_id, result)
    report = result.report
    iteration = Iteration(
        project_id=project_id, number=number, job_id=job_id, folder=relpath,
        classes=report["classes"], backbones=backbones, n_train=report["n_train"],
        n_test=report["n_test"], features_computed=features_computed,
        features_total=(report["n_train"] + report["n_test"])
        * views_extracted(report, backbones),
        summary=summarize(report), fingerprint=fingerprint)
    db.session.add(iteration)
    db.session.flush()
    return iteration


def _store_result(storage: Storage, project_id: int, result) -> tuple[int, str]:
    """Write `result` to the next iteration's folder (atomically: a temporary folder moved
    into place); returns (number, relpath)."""
    tmp: Path | None = storage.temp_dir()
    try:
        result.save(tmp)
        number = (db.session.scalar(sa.select(sa.func.max(Iteration.number))
                                    .where(Iteration.project_id == project_id)) or 0) + 1
        relpath = storage.iteration_relpath(project_id, number)
        storage.commit_dir(tmp, relpath)
        tmp = None
        return number, relpath
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run_training(app, job_id: int) -> str:
    """Run one training job in this (worker) process; returns the job's final state."""
    def work(job: Job, me: str) -> str:
        project = db.session.get(Project, job.project_id)
        if project is None:
            raise JobCancelled()
        return _train_job(app, job, project, me)

    return state.run_claimed(job_id, work, describe="training",
                             error_message=_error_message)


def _train_job(app, job: Job, project: Project, me: str) -> str:
    """Train the claimed `job`, save its iteration and mark it succeeded; raises
    JobCancelled when it was cancelled or taken from us, whenever that is noticed."""
    storage: Storage = app.extensions["transferlab.storage"]
    job_id = job.id
    samples = load_samples(storage, project.id)
    backbones = list(job.backbones or project.backbones)
    fine_tune = bool(project.fine_tune)
    fingerprint = training_fingerprint(samples, backbones, fine_tune=fine_tune)
    cache = feature_cache(app.config)
    db.session.commit()  # end the read transaction: the progress callback writes
    on_progress = _progress_reporter(job_id, me, cache)
    on_progress(_Start())
    result = train_samples(app.config, samples, backbones, cache, fine_tune=fine_tune,
                           progress=on_progress)
    on_progress(_Start("saving", 1.0))  # last chance to cancel
    iteration = save_iteration(storage, project.id, result, backbones,
                               features_computed=cache.computed, job_id=job_id,
                               fingerprint=fingerprint)
    report = result.report
    if not state.mark_succeeded(
            job_id, me, iteration_id=iteration.id, features_computed=cache.computed,
            features_total=iteration.features_total, n_train=report["n_train"],
            n_test=report["n_test"]):  # cancelled (or marked failed) meanwhile
        db.session.rollback()
        shutil.rmtree(storage.resolve(iteration.folder), ignore_errors=True)
        raise JobCancelled()
    db.session.commit()
    log.info("job %s: iteration %s of project %s (%s of %s features computed)",
             job_id, iteration.number, project.id, cache.computed, iteration.features_total)
    return "succeeded"


def _progress_reporter(job_id: int, me: str, cache):
    """The engine's progress callback for the job: records progress, and raises
    JobCancelled (which stops the training) once the job is no longer ours to run."""
    shown = [0.0]  # the bar never moves backwards, whatever the stages report

    def on_progress(p) -> None:
        shown[0] = max(shown[0], round(PROGRESS_SHARE * float(p.fraction), 4))
        values = {"progress": shown[0], "stage": p.stage, "features_computed": cache.computed}
        if p.total:
            values.update(done=int(p.done), total=int(p.total))
        state.report_progress(job_id, me, **values)

    return on_progress


@dataclass(frozen=True)
class _Start:
    """A progress event of our own (before training starts / while saving)."""

    stage: str = "starting"
    fraction: float = 0.0
    done: int = 0
    total: int = 0


def _error_message(exc: Exception) -> str:
    from models.training import TrainingError
    from models.weights import WeightsNotFound

    if isinstance(exc, (TrainingError, WeightsNotFound)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
