"""Server-rendered page shells; the pages' JavaScript does the rest through the JSON API.

Nothing here imports TensorFlow: pages render from the database only (the project's name),
so they load instantly even while a training job keeps the worker busy. Every page needs a
logged-in user (`web.auth` redirects strangers to the login page); a project page shows only
the user's own projects: someone else's id is the same 404 as an unknown one.
"""
from flask import Blueprint, render_template

from web.auth import owned_project

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    return render_template("index.html")


@bp.get("/projects/<int:project_id>")
def project(project_id):
    found = owned_project(project_id)
    if found is None:
        return render_template("not_found.html", what=f"project {project_id}"), 404
    return render_template("project.html", project=found, project_id=project_id)


@bp.get("/imagenet")
def imagenet():
    return render_template("imagenet.html")
