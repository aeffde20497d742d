"""The JSON shapes of the API's objects: a project (`project_json`), one of its images
(`image_json`), a training job (`job_json`), a trained iteration (`iteration_json`), a backbone
(`backbone_json`), and the URLs of an image and its thumbnail. Every route that answers one
of these builds it here, so an object looks the same wherever it appears.
"""
from __future__ import annotations

from flask import url_for

from models.registry import BACKBONES, availability, default_backbones
from web.api.helpers import latest_job, project_iterations, weights_dir
from web.db import Iteration, Job, Project, ProjectImage, iso, utcnow
from web.jobs import class_counts, live_workers
from web.publishing import live_iteration


def thumbnail_url(sha256: str) -> str:
    return url_for("api.image_thumbnail", sha256=sha256)


def image_url(sha256: str) -> str:
    return url_for("api.image_file", sha256=sha256)


def backbone_json(name: str, defaults: list[str] | None = None) -> dict:
    """A backbone and whether its weights are here; when they are not, `reason` says so,
    `weights_file` names the file and `remedy` where to put it. `default`: a new project on
    this machine starts with it (`models.registry.default_backbones`)."""
    spec = BACKBONES[name]
    status = availability(name, weights_dir())
    if defaults is None:
        defaults = default_backbones(weights_dir())
    return {
        "name": name, "title": spec.title, "available": status.available,
        "reason": status.reason, "weights_file": status.filename,
        "remedy": status.remedy or None, "input_size": spec.input_size,
        "feature_dim": spec.feature_dim, "default": name in defaults,
        "offline": spec.offline, "gflops": spec.gflops,
    }


def missing_weights(names) -> list[dict]:
    """The backbones of `names` whose weights are not here: {backbone, title, file, remedy,
    reason} each (empty when all are here)."""
    out = []
    for name in names:
        if name not in BACKBONES:
            continue
        status = availability(name, weights_dir())
        if not status.available:
            out.append({"backbone": name, "title": BACKBONES[name].title,
                        "file": status.filename, "remedy": status.remedy,
                        "reason": status.reason})
    return out


def job_json(job: Job | None) -> dict | None:
    if job is None:
        return None
    now = utcnow()
    return {
        "id": job.id, "job_id": job.id, "project_id": job.project_id, "state": job.state,
        "kind": job.kind or "train",
        "progress": round(float(job.progress or 0.0), 4), "stage": job.stage,
        "done": job.done, "total": job.total, "error": job.error,
        "iteration": job.iteration.number if job.iteration is not None else None,
        "cancel_requested": bool(job.cancel_requested), "backbones": job.backbones,
        "attempts": job.attempts, "worker": job.worker,
        "n_train": job.n_train, "n_test": job.n_test,
        "features_computed": job.features_computed, "features_total": job.features_total,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "updated_at": iso(job.updated_at),
        # the server's clock, so a page can tell how long ago started_at/updated_at were
        "server_time": iso(now), "elapsed_seconds": _seconds_between(job.started_at, job.finished_at or now),
        # is any worker alive to run it? (queued/running jobs only; null otherwise)
        "worker_alive": bool(live_workers()) if job.state in ("queued", "running") else None,
    }


def _seconds_between(start, end) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 1)


def iteration_json(it: Iteration) -> dict:
    ensemble = (it.summary or {}).get("ensemble", {})
    return {
        "number": it.number, "iteration": it.number, "id": it.id, "job_id": it.job_id,
        "created_at": iso(it.created_at), "classes": it.classes, "backbones": it.backbones,
        "n_train": it.n_train, "n_test": it.n_test,
        "features_computed": it.features_computed, "features_total": it.features_total,
        "cv_accuracy": ensemble.get("cv_accuracy"),
        "test_accuracy": ensemble.get("test_accuracy"),
        "summary": it.summary,
    }


def project_json(project: Project, *, full: bool = True) -> dict:
    train, test = class_counts(project.id, "train"), class_counts(project.id, "test")
    latest = latest_job(project.id)
    iterations = project_iterations(project.id)
    live = live_iteration(project)
    out = {
        "id": project.id, "name": project.name, "backbones": project.backbones,
        "threshold": project.threshold or 0.0,
        "fine_tune": bool(project.fine_tune),
        "created_at": iso(project.created_at), "updated_at": iso(project.updated_at),
        "classes": train, "test_classes": test,
        "n_classes": len(train), "n_train": sum(train.values()), "n_test": sum(test.values()),
        "latest_iteration": iterations[-1].number if iterations else None,
        # what predictions use when none is named (web.publishing): published, else latest
        "published_iteration": project.published_iteration,
        "live_iteration": live.number if live is not None else None,
        "status": latest.state if latest else None,
        "latest_job": job_json(latest),
        "can_train": len(train) >= 2 and not (latest and latest.state in ("queued", "running")),
    }
    if full:
        defaults = default_backbones(weights_dir())
        out["backbone_status"] = [backbone_json(n, defaults) for n in project.backbones
                                  if n in BACKBONES]
        out["iterations"] = [iteration_json(it) for it in iterations]
    return out


def image_json(row: ProjectImage) -> dict:
    blob = row.blob
    return {
        "sha256": row.sha256, "label": row.label, "split": row.split, "name": row.name,
        "thumbnail": thumbnail_url(row.sha256), "url": image_url(row.sha256),
        "width": blob.width if blob else None, "height": blob.height if blob else None,
        "size": blob.size if blob else None,
        "content_type": blob.content_type if blob else None,
        "created_at": iso(row.created_at),
    }
