# One image for both sides; compose/ picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY intent_contract ./intent_contract
COPY edge_outbox ./edge_outbox
COPY cloud_bridge ./cloud_bridge
RUN pip install --no-cache-dir . && useradd --system --uid 10001 outbox && mkdir /data && chown outbox /data
USER outbox
VOLUME /data
