#!/bin/sh
# Container entrypoint for the VAE service (POSIX sh: python:3.11-slim has dash, no bash needed).
#
# It only starts the server: `exec python -m service --host $HOST --port $PORT [ARGS...]`, with
# HOST defaulting to 0.0.0.0 and PORT to 8000, and any arguments passed on. Because of `exec`,
# the server replaces this shell (the container's first process is Python itself), so SIGTERM
# from `docker stop` or Kubernetes reaches it directly: it stops accepting, finishes the requests
# in progress (VAE_GRACEFUL_TIMEOUT) and exits 0; any other exit status passes through as it is.
#
# Sizing is not done here. `python -m service` reads VAE_WORKERS and VAE_INTRA_OP_THREADS
# (0 or unset = automatic) and sizes itself to the CPUs it may use, in service/process/cpus.py:
# its CPU affinity capped by its cgroup (v1 or v2) CPU quota, which `docker run --cpus` and a
# Kubernetes CPU limit set. Every other VAE_* variable reaches the service unchanged.
set -eu

exec python -m service --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"
