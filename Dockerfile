# poller as a container: `docker build -t poller .` then `docker run -v $PWD/config:/app/config poller`.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY poller ./poller
COPY handlers ./handlers
# The speed extra adds uvloop, the event loop `poller run` uses when it is installed.
RUN pip install '.[speed]' \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin poller \
 && mkdir -p /var/lib/poller \
 && chown poller /var/lib/poller
COPY config ./config

USER poller
VOLUME ["/var/lib/poller"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# Exec form: poller is PID 1 and gets SIGTERM itself, so it drains in-flight batches before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["poller"]
CMD ["run", "-c", "config/compose.yaml"]
