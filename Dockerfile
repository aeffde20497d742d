# Transferlab: web and worker from one image.
#   docker build -t transferlab .
#   docker run -p 5000:5000 -v transferlab-data:/data -v keras-weights:/home/app/.keras transferlab
# The worker alone: docker run ... transferlab python app.py worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TRANSFERLAB_HOST=0.0.0.0 TRANSFERLAB_PORT=5000 \
    TRANSFERLAB_INSTANCE_PATH=/data \
    KERAS_HOME=/home/app/.keras

RUN useradd --create-home --uid 1000 app && mkdir -p /data /home/app/.keras/models \
    && chown -R app:app /data /home/app/.keras
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY --chown=app:app . .

USER app
# Instance data (database, images, features, models) and the Keras weights cache persist.
VOLUME ["/data", "/home/app/.keras"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:5000/api/v1/openapi.yaml', timeout=4); sys.exit(0)"
CMD ["python", "app.py"]
