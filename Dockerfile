# The VAE inference service: onnxruntime behind FastAPI/uvicorn, serving models/.
#
#   docker build -t vae-service .
#   docker run -p 8000:8000 vae-service
#
# Stages: `requirements` reads pyproject's core dependencies (the serving set: no torch), `build`
# installs them into /opt/venv, and the runtime stage is python:3.11-slim plus that venv,
# service/, models/ and the entrypoint only.
# No compilers, no pip cache, no build tools, no tests in the result. See README.md, "Container".

ARG PYTHON_IMAGE=python:3.11-slim

# The serving set is pyproject's core `dependencies`, read with tomllib. In a stage of its own,
# so the install below is keyed on requirements.txt alone: editing other parts of pyproject.toml,
# service/ or models/ reuses the cached install.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; \
deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; \
open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')"

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
# Once the install is checked, what serving never runs leaves the venv: pip and setuptools (the
# runtime installs nothing), numpy's test suite, and onnxruntime's offline model tools
# (transformer optimiser, quantisation, conversion scripts; inference is onnxruntime.capi).
RUN /opt/venv/bin/python -m pip install --no-compile -r /tmp/requirements.txt \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools \
 && site=/opt/venv/lib/python3.11/site-packages \
 && rm -rf "$site"/onnxruntime/transformers "$site"/onnxruntime/quantization \
           "$site"/onnxruntime/tools \
 && find "$site"/numpy -depth -type d -name tests -exec rm -rf {} + \
 && find /opt/venv -depth -name __pycache__ -type d -exec rm -rf {} + \
 && /opt/venv/bin/python -c "import fastapi, numpy, onnxruntime, PIL, prometheus_client, uvicorn"


FROM ${PYTHON_IMAGE}
ARG APP_UID=10001
# PORT: where uvicorn listens. VAE_WORKERS / VAE_INTRA_OP_THREADS: left unset here on purpose,
# so the entrypoint sizes them to the CPUs this container may use (its cgroup quota); set them
# to override. VAE_*: the service's own settings (prefix VAE_).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8000 \
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
EXPOSE 8000
# SIGTERM: uvicorn stops accepting, finishes in-flight requests, then exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)" || exit 1
ENTRYPOINT ["/usr/local/bin/vae-entrypoint"]
