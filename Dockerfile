# The VAE inference service: onnxruntime behind FastAPI/uvicorn, serving models/.
#
#   docker build -t vae-service .
#   docker run -p 8000:8000 -p 8001:8001 vae-service
#
# Stages: `build` installs the serving dependencies into /opt/venv, exactly as pinned in
# requirements/serve.lock, and the runtime stage is python:3.11-slim plus that venv, service/,
# models/ and the entrypoint only.
# No compilers, no pip cache, no build tools, no tests in the result. See README.md, "Container".

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
# requirements/serve.lock: pyproject's core dependencies (the serving set: no torch) resolved for
# CPython 3.11 on Linux x86_64 and aarch64, every package pinned to one version with the sha256
# of its files; `make lock` refreshes it. --require-hashes refuses anything unpinned or whose
# download does not match, --no-deps anything the lock does not list: the same lock always gives
# the same venv. Copied on its own, so this install is cached until the lock changes.
COPY requirements/serve.lock /tmp/serve.lock
# Once the install is checked, what serving never runs leaves the venv: pip and setuptools (the
# runtime installs nothing), numpy's test suite, and onnxruntime's offline model tools
# (transformer optimiser, quantisation, conversion scripts; inference is onnxruntime.capi).
RUN /opt/venv/bin/python -m pip install --no-compile --require-hashes --no-deps \
        -r /tmp/serve.lock \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && site=/opt/venv/lib/python3.11/site-packages \
 && rm -rf "$site"/onnxruntime/transformers "$site"/onnxruntime/quantization \
           "$site"/onnxruntime/tools \
 && find "$site"/numpy -depth -type d -name tests -exec rm -rf {} + \
 && find /opt/venv -depth -name __pycache__ -type d -exec rm -rf {} + \
 && /opt/venv/bin/python -c "import fastapi, grpc, grpc_health.v1.health, grpc_reflection.v1alpha.reflection, httptools, numpy, onnxruntime, PIL, prometheus_client, uvicorn, uvloop"


FROM ${PYTHON_IMAGE}
ARG APP_UID=10001
# PORT: where uvicorn listens; VAE_GRPC_PORT: the Open Inference Protocol over gRPC (Triton's
# 8001; 0 turns it off). VAE_WORKERS / VAE_INTRA_OP_THREADS: left unset here on purpose,
# so the service sizes them to the CPUs this container may use (its CPU affinity and cgroup
# quota, service/process/cpus.py); set them to override. VAE_*: the service's own settings.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000 \
    VAE_GRPC_PORT=8001 \
    VAE_MODEL_DIR=/app/models
RUN groupadd --system --gid ${APP_UID} app \
 && useradd --system --uid ${APP_UID} --gid app --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
COPY deploy/container/entrypoint.sh /usr/local/bin/vae-entrypoint
COPY service/ /app/service/
COPY models/ /app/models/
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER ${APP_UID}:${APP_UID}
EXPOSE 8000 8001
# SIGTERM: uvicorn stops accepting, finishes in-flight requests, then exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)" || exit 1
ENTRYPOINT ["/usr/local/bin/vae-entrypoint"]
