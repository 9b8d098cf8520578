# syntax=docker/dockerfile:1
# Escalator service image: multi-stage, slim, non-root, the runtime wheel and its dependencies only.
# Build:  docker build -t escalator .
#         (here, without a Docker engine: `make image`, with buildah; README, "Development")
# Run:    docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=... -e ANTHROPIC_API_KEY=... escalator run --tier cheap
# The emulator (development tools) is a separate target, never in the service image:
#         docker build --target emulator -t escalator-emulator .
# A machine that reaches PyPI only through its own pip configuration or CA bundle passes them
# as build secrets (mounted for the pip steps only, never written to a layer):
#         --secret id=pip.conf,src=/etc/pip.conf --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt

# Any image with Python 3.11's python3 and its venv module: `make image` uses a stand-in built
# from Debian bookworm's packages when no registry gives python:3.11-slim.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The base's own python3 makes the venv and its pip does the rest: Debian's python3 has no
# `python` or `pip` on the PATH.
RUN python3 -m venv /opt/escalator
# The runtime dependencies first, pinned by the lock file (which pins every package we test
# with; only the runtime ones are installed), in a layer that a source change keeps. With them
# the `otel` extra, so that the standard OTEL_* variables can turn tracing on (it is off
# unless they do; docs/OPERATIONS.md, "Tracing").
COPY pyproject.toml requirements.lock ./
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['otel'], sep='\n')" > /tmp/runtime.txt \
 && /opt/escalator/bin/pip install -c requirements.lock -r /tmp/runtime.txt
COPY README.md ./
COPY service/escalator ./service/escalator
COPY service/dev ./service/dev
# The runtime wheel (service/escalator only), then the dev-tools wheel for the emulator target.
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/escalator/bin/pip wheel --no-deps -w /wheels . ./service/dev \
 && /opt/escalator/bin/pip install --no-deps /wheels/escalator-0*.whl \
 && /opt/escalator/bin/pip check

FROM ${BASE_IMAGE} AS emulator
ENV PATH=/opt/escalator/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/escalator /opt/escalator
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /opt/escalator/bin/pip install --no-deps /wheels/escalator_dev-*.whl
USER 10001:10001
ENTRYPOINT ["escalator"]
CMD ["sim", "--host", "0.0.0.0", "--port", "8765"]

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="escalator" \
      org.opencontainers.image.description="Classifies text from Kafka with the cheapest Claude model that does the job" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV PATH=/opt/escalator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ESCALATOR_METRICS_PORT=9464
RUN groupadd --gid 10001 escalator \
 && useradd --uid 10001 --gid escalator --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin escalator
COPY --from=build /opt/escalator /opt/escalator
USER 10001:10001
EXPOSE 9464
# Liveness, as Kubernetes would check it: the tier tasks are alive and the loop answers.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ESCALATOR_METRICS_PORT', '9464'), timeout=2)"]
ENTRYPOINT ["escalator"]
CMD ["run", "--tier", "all"]
