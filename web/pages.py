"""Server-rendered page shells. The pages call the JSON API from JavaScript.

Nothing here imports TensorFlow: pages render from the database / registry only.
"""
from flask import Blueprint, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    return render_template("index.html")


@bp.get("/projects/<int:project_id>")
def project(project_id):
    return render_template("project.html", project_id=project_id)


@bp.get("/imagenet")
def imagenet():
    return render_template("imagenet.html")
