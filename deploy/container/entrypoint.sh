#!/bin/sh
# Container entrypoint for the VAE service (POSIX sh: python:3.11-slim has dash, no bash needed).
#
# 1. Sizes the process to the CPUs this container may use: VAE_WORKERS (server processes,
#    default one per CPU: one Python process does about one core of work; also passed on as
#    WEB_CONCURRENCY) and VAE_INTRA_OP_THREADS (onnxruntime threads per worker, default
#    CPUs / workers, so 1). CPUs = the cgroup CPU quota (docker --cpus, a Kubernetes CPU limit),
#    else the CPUs the process may run on (nproc); VAE_CPUS overrides the detection.
# 2. Runs `python -m service` on 0.0.0.0:$PORT and forwards SIGTERM/SIGINT to it. uvicorn then
#    stops accepting, drains in-flight requests and exits; a shutdown that we asked for exits 0
#    whatever the runtime's PID namespace does to the re-raised signal.
# Arguments, if any, are passed on to `python -m service`.
set -eu

quota_cpus() {
    # cgroup v2: "max 100000" or "<quota> <period>"; cgroup v1: cfs_quota_us / cfs_period_us.
    if [ -r /sys/fs/cgroup/cpu.max ]; then
        read -r quota period </sys/fs/cgroup/cpu.max || return 1
    elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && [ -r /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
        read -r quota </sys/fs/cgroup/cpu/cpu.cfs_quota_us || return 1
        read -r period </sys/fs/cgroup/cpu/cpu.cfs_period_us || return 1
    else
        return 1
    fi
    case "$quota" in max | -1 | '') return 1 ;; esac
    [ "$period" -gt 0 ] 2>/dev/null || return 1
    # Round up: a 1.5-CPU limit gets 2 threads, and never fewer than 1.
    echo $(((quota + period - 1) / period))
}

online=$(nproc 2>/dev/null || echo 1)
if [ -n "${VAE_CPUS:-}" ]; then
    cpus=$VAE_CPUS
elif quota=$(quota_cpus) && [ "$quota" -lt "$online" ]; then
    cpus=$quota
else
    cpus=$online
fi
[ "$cpus" -ge 1 ] 2>/dev/null || cpus=1

# uvicorn reads its worker count from WEB_CONCURRENCY (python -m service leaves `workers` unset).
: "${VAE_WORKERS:=${WEB_CONCURRENCY:-$cpus}}"
WEB_CONCURRENCY=$VAE_WORKERS
if [ -z "${VAE_INTRA_OP_THREADS:-}" ]; then
    VAE_INTRA_OP_THREADS=$((cpus / VAE_WORKERS))
    [ "$VAE_INTRA_OP_THREADS" -ge 1 ] || VAE_INTRA_OP_THREADS=1
fi
export VAE_WORKERS WEB_CONCURRENCY VAE_INTRA_OP_THREADS
: "${PORT:=8000}"
: "${HOST:=0.0.0.0}"

echo "vae-entrypoint: cpus=$cpus workers=$VAE_WORKERS intra_op_threads=$VAE_INTRA_OP_THREADS" \
    "listening on $HOST:$PORT" >&2

python -m service --host "$HOST" --port "$PORT" "$@" &
child=$!
stopping=0
trap 'stopping=1; kill -TERM "$child" 2>/dev/null || true' TERM INT
# `wait` returns early when a trapped signal arrives; wait again until the drain has finished.
status=0
while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break
done
# 143 = 128 + SIGTERM: uvicorn re-raises the signal after its graceful shutdown.
if [ "$stopping" = 1 ] && { [ "$status" = 0 ] || [ "$status" = 143 ]; }; then
    echo "vae-entrypoint: stopped cleanly" >&2
    exit 0
fi
exit "$status"
