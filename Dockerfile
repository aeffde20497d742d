# Transferlab: the web app and the worker from one image.
#   docker build -t transferlab .
#   docker run -p 5000:5000 -v transferlab-data:/data -v keras-weights:/home/app/.keras transferlab
#     (one container: SQLite + the embedded queue + a worker child process)
#   docker compose up --scale worker=2   (compose.yaml: web, workers, Redis, PostgreSQL)
# The worker alone: docker run ... transferlab python app.py worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TRANSFERLAB_HOST=0.0.0.0 TRANSFERLAB_PORT=5000 \
    TRANSFERLAB_INSTANCE_PATH=/data/instance \
    TRANSFERLAB_STORAGE_DIR=/data \
    KERAS_HOME=/home/app/.keras

RUN useradd --create-home --uid 1000 app \
    && mkdir -p /data/instance /home/app/.keras/models \
    && chown -R app:app /data /home/app/.keras
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
# Root owns the code (the app cannot rewrite itself); the app user owns only its data.
COPY . .

USER app
# /data: images, feature cache, trained models (share it between machines, e.g. NFS) and the
# instance folder (SQLite database and queue when DATABASE_URL/REDIS_URL are not set).
# /home/app/.keras: the Keras weights cache (put resnet50/vgg16/xception .h5 files in models/).
VOLUME ["/data", "/home/app/.keras"]
EXPOSE 5000
# SIGTERM lets a worker finish its job within WORKER_SHUTDOWN_SECONDS (30 s), then it queues
# the job again: give containers longer than that to stop (compose: stop_grace_period).
STOPSIGNAL SIGTERM
# The web app's check; a worker container serves no HTTP: override it (compose.yaml does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=4)"
CMD ["python", "app.py"]
