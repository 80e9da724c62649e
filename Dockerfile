# One Dockerfile, two images from one base: `--target edge` (the default: the last stage) and
# `--target bridge`. docs/deploy.md says what goes where.
FROM python:3.11-slim AS base
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY intent_contract ./intent_contract
COPY edge_outbox ./edge_outbox
COPY cloud_bridge ./cloud_bridge
# The programs run as uid:gid 10001:10001. Files mounted into the container must be readable by it:
# `cloud-bridge dev-certs --owner 10001 ...`, or chown a real key to 10001 (docs/deploy.md).
RUN pip install --no-cache-dir . \
 && groupadd --system --gid 10001 outbox \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin outbox \
 && mkdir -m 0700 /data && chown 10001:10001 /data
# Every command finds the data without --data-dir: `docker compose exec outbox edge-outbox status`.
ENV EDGE_OUTBOX_DATA_DIR=/data CLOUD_BRIDGE_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
VOLUME /data
# SIGTERM (Docker's default) is the clean stop for both programs; give them stop_grace_period: 30s.

FROM base AS bridge
# MQTT over TLS from devices; HTTPS for enrollment, /healthz and /v1/device (/metrics: --metrics-listen).
EXPOSE 8883 8443
CMD ["cloud-bridge", "run", "--config", "/config/bridge.toml", \
     "--tls-cert", "/certs/server.pem", "--tls-key", "/certs/server.key", \
     "--listen", "0.0.0.0:8883", "--http-listen", "0.0.0.0:8443"]
# Over verified TLS: with a certificate from a public CA, override with --server-name (docs/deploy.md).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["cloud-bridge", "health", "--url", "https://localhost:8443/healthz", "--ca", "/certs/ca.pem"]

FROM base AS edge
# The outbox's MQTT endpoint for local apps: publish it on the host's loopback only.
EXPOSE 1883
CMD ["edge-outbox", "run", "--listen", "0.0.0.0:1883"]
# Exits 1 when revoked, when intake is paused, or after an hour without a link (docs/operations.md).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["edge-outbox", "status"]
