"""The JSON API under /api/v1 (documented in docs/API.md). The pages use nothing else.

This package owns the blueprint `bp`; its routes live in one module per resource, imported at
the bottom (microblog's `app/api/` shape):

    errors        ApiError, the JSON error answers and handlers (400 ... 507), frees_space
    helpers       the app's services, the caller's project, the JSON body, shared queries
    serializers   the JSON of projects, images, jobs, iterations, backbones; image URLs
    projects      /projects (list, create, read, change, delete), /backbones
    images        a project's images, uploads, near-duplicates; image files and thumbnails
    training      /projects/<id>/train, jobs, cancel
    results       results, iterations, publishing, predict, ImageNet predict and backbones
    batches       batch predictions (a zip or many files sent to predict): follow, download
    account       /me, /tokens, /status, /openapi.yaml
    manage        /projects/<id>/images/bulk: relabel, move, delete many images; undo

Errors are RFC 9457 problem details plus `{"error": "..."}` (`web.problems`): 400 bad input
(naming the file and the reason), 401 no or bad credentials, 403 refused, 404 unknown ids (and
other users' ids: every project query is scoped to the caller, see `web.auth.owned`), 409
conflicts, 413 too large, 503 queue/database/backbone unavailable, 507 no room. Nothing
here imports TensorFlow except the two predict routes, and those run it off the gevent loop.

`web.create_app` registers `bp` and calls `register_error_handlers(app)`.
"""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from web.api import account, images, projects, results, training  # noqa: F401  (routes)
from web.api import manage  # noqa: F401,E402  (routes: bulk image changes and their undo)
from web.api import batches  # noqa: F401,E402  (routes)
from web.api.errors import register_error_handlers

__all__ = ["bp", "register_error_handlers"]
