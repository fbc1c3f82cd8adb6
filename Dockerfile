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
# tini as PID 1: functions run in execution environments, poller's child processes, and PID 1 must
# reap what they leave behind; it passes SIGTERM on to poller. The image has no node: for the
# Node.js runtimes, add it in an image of your own (docs/runtimes.md, "Requirements").
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
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
# Exec form under tini: SIGTERM reaches poller, which drains in-flight batches and stops its
# environments before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "poller"]
CMD ["run", "-c", "config/compose.yaml"]
