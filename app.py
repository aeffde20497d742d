"""Transferlab: build a custom image classifier from a few dozen images per class.

    python app.py            serve the web app with gevent on TRANSFERLAB_HOST:TRANSFERLAB_PORT
                             (default 127.0.0.1:5000) and start a worker child process
    python app.py worker     run only a worker (the Huey consumer that trains)
    python app.py create-user NAME [--admin] [--password-stdin]
                             add an account (the first visit to the site creates the admin
                             account too, when none exists, given the setup code that serving
                             prints in the log)
    python app.py set-password NAME [--password-stdin]
                             (ends the account's sessions)
    python app.py create-token NAME [--name WHAT-FOR] [--expires-in-days N]
                             print a new API token (Authorization: Bearer <token>)
    python app.py disable-user NAME | enable-user NAME
                             a disabled account cannot log in; its sessions end and its
                             tokens are refused until it is enabled again

Set TRANSFERLAB_WORKER=false to serve without starting a worker (run workers yourself, e.g.
on other machines with REDIS_URL and DATABASE_URL pointing at shared servers and
TRANSFERLAB_STORAGE_DIR at a shared folder; README, "Scale out").

A worker stops on SIGTERM after its running job finishes (at most WORKER_SHUTDOWN_SECONDS,
then the job is queued again) and on SIGINT at once (the job is queued again). Both processes
upgrade the database schema at start.
"""
from __future__ import annotations

import sys

_SERVING = __name__ == "__main__" and len(sys.argv) < 2
if _SERVING:  # gevent must patch the standard library before anything else imports it
    from gevent import monkey

    monkey.patch_all()

import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402

from web import create_app  # noqa: E402

log = logging.getLogger("transferlab")


class WorkerSupervisor:
    """Runs `python app.py worker` as a child process and restarts it if it dies."""

    def __init__(self, app):
        self.app = app
        self.proc = None
        self.stopping = False
        self.greenlet = None

    def _spawn(self):
        from gevent import subprocess

        from web.jobs import PARENT_PID_ENV

        env = dict(os.environ)
        env["TRANSFERLAB_INSTANCE_PATH"] = self.app.instance_path
        env[PARENT_PID_ENV] = str(os.getpid())
        script = os.path.abspath(__file__)
        # Own session: Ctrl-C in the terminal reaches the server, which then stops the worker.
        return subprocess.Popen([sys.executable, script, "worker"], env=env,
                                start_new_session=True)

    def _run(self):
        import gevent

        delay = 1.0
        while not self.stopping:
            self.proc = self._spawn()
            log.info("worker started (pid %s)", self.proc.pid)
            code = self.proc.wait()
            if self.stopping:
                break
            log.warning("worker exited with code %s; restarting in %.0f s", code, delay)
            gevent.sleep(delay)
            delay = min(delay * 2, 60.0)

    def start(self):
        import gevent

        self.greenlet = gevent.spawn(self._run)

    def stop(self):
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # SIGINT: the worker queues its running job again at once and exits; the job
            # resumes (its features cached) when a worker runs again. No grace period here:
            # stopping `python app.py` (Ctrl-C, docker stop) should be quick.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except Exception:
                proc.kill()


def serve(app) -> None:
    import gevent
    from gevent.pywsgi import WSGIServer

    from web.concurrency import warm_platform_cache

    warm_platform_cache()  # before any TensorFlow import in gevent's thread pool (see there)
    host, port = app.config["HOST"], int(app.config["PORT"])
    supervisor = WorkerSupervisor(app) if app.config["WORKER"] else None
    from web.serving import handler_class

    # handler_class: idle connections and too-slow request bodies are cut off (web/serving.py)
    server = WSGIServer((host, port), app, log=None, error_log=logging.getLogger("gevent"),
                        handler_class=handler_class(app.config))

    def shutdown():
        log.info("shutting down")
        if supervisor:
            supervisor.stop()
        server.stop(timeout=5)

    gevent.signal_handler(signal.SIGTERM, shutdown)
    gevent.signal_handler(signal.SIGINT, shutdown)
    if supervisor:
        supervisor.start()
    else:
        log.info("TRANSFERLAB_WORKER is off: run `python app.py worker` to train")
    log.info("Transferlab on http://%s:%s/ (instance folder %s)", host, port, app.instance_path)
    with app.app_context():
        from web.auth import SETUP_CODE_FILE, has_users, setup_code

        if not has_users():
            log.warning("no account yet: the first visit to http://%s:%s/ creates the admin "
                        "account with this setup code: %s (also in %s/%s; or run `python app.py "
                        "create-user NAME --admin`)", host, port, setup_code(), app.instance_path,
                        SETUP_CODE_FILE)
    from web.prediction import warm_recent_iterations

    warming = warm_recent_iterations(app)  # in the background: serving starts at once
    if warming:
        log.info("warming the predictors of iterations %s", ", ".join(map(str, warming)))
    server.serve_forever()


def checked_app():
    """The app, or exit with a one-line reason if its folders or database are unusable."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app = create_app()
        app.extensions["transferlab.storage"].check_writable()
    except (OSError, SQLAlchemyError) as exc:
        log.error("cannot start: the instance folder, storage folder or database is not "
                  "usable: %s", exc)
        raise SystemExit(2) from None
    return app


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] == "worker":
        from web.jobs import run_worker

        run_worker(checked_app())
        return 0
    from web.auth import CLI_COMMANDS, cli

    if argv and argv[0] in CLI_COMMANDS:
        return cli(create_app(), argv)
    if argv:
        print(f"unknown command {argv[0]!r}\n{__doc__}", file=sys.stderr)
        return 2
    serve(checked_app())
    return 0


if __name__ == "__main__":
    sys.exit(main())
