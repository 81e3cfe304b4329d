# letsfrag in a container: slim Python, non-root, the package installed from this checkout.
# Build:  docker build -t letsfrag .
# Your bot: FROM letsfrag, COPY your code to /app, and point `bot.module` (with `bot.cwd: /app`) at it.
# The example bot (examples/bot.py) is included so the compose rehearsal and the manifests run as they are.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin letsfrag
COPY . /src
RUN pip install /src && mkdir -p /app/logs && cp -r /src/examples /app/examples && rm -rf /src \
    && chown -R letsfrag:letsfrag /app
WORKDIR /app
USER 10001
# the metrics listener (metrics.listen) of a broker or a host
EXPOSE 9464
ENTRYPOINT ["letsfrag", "--log-format", "json"]
CMD ["--help"]
