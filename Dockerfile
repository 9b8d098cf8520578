# syntax=docker/dockerfile:1
# Escalator service image: multi-stage, slim, non-root, the runtime wheel and its dependencies only.
# Build:  docker build -t escalator .
# Run:    docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=... -e ANTHROPIC_API_KEY=... escalator run --tier cheap
# The emulator (development tools) is a separate target, never in the service image:
#         docker build --target emulator -t escalator-emulator .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY service/escalator ./service/escalator
COPY service/dev ./service/dev
# The runtime wheel (service/escalator only), then the dev-tools wheel for the emulator target.
# The lock file pins every package we test with; only runtime dependencies are installed.
RUN pip wheel --no-deps -w /wheels . ./service/dev \
 && python -m venv /opt/escalator \
 && /opt/escalator/bin/pip install -c requirements.lock /wheels/escalator-0*.whl

FROM python:3.11-slim AS emulator
ENV PATH=/opt/escalator/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/escalator /opt/escalator
COPY --from=build /wheels /wheels
RUN /opt/escalator/bin/pip install --no-deps /wheels/escalator_dev-*.whl && rm -rf /wheels
USER 10001:10001
ENTRYPOINT ["escalator"]
CMD ["sim", "--host", "0.0.0.0", "--port", "8765"]

FROM python:3.11-slim
ENV PATH=/opt/escalator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ESCALATOR_METRICS_PORT=9464
RUN groupadd --system --gid 10001 escalator \
 && useradd --system --uid 10001 --gid escalator --no-create-home --shell /usr/sbin/nologin escalator
COPY --from=build /opt/escalator /opt/escalator
USER 10001:10001
EXPOSE 9464
# Liveness, as Kubernetes would check it: the tier tasks are alive and the loop answers.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ESCALATOR_METRICS_PORT', '9464'), timeout=2)"]
ENTRYPOINT ["escalator"]
CMD ["run", "--tier", "all"]
