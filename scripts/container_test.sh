#!/usr/bin/env bash
# `make container-test`: build the Dockerfile and prove the image serves, without a Docker engine.
#
# buildah (Debian's) builds and runs OCI/Docker images as root with --isolation chroot. Nothing
# can be pulled from a registry here, so the base image is made locally: a debootstrapped Debian
# bookworm (minbase + python3, python3-pip, python3-venv; Debian's python is 3.11) dressed up to
# look like python:3.11-slim (/usr/local/bin/python, PATH, LANG) and tagged with that name, so
# the Dockerfile builds unchanged with --pull=never. The stand-in also carries this machine's CA
# bundle and an /etc/pip.conf pointing at it, so pip reaches PyPI from inside the build without
# the Dockerfile knowing. The debootstrapped root is cached as a tarball (CACHE_DIR) and repeat
# runs reuse it; a fresh machine builds it from scratch.
#
# Then: build, inspect (size, user, healthcheck, no torch/compilers/caches), run with PORT set
# to a free port, wait for /readyz, call /healthz /sample /encode /metrics and the image's own
# HEALTHCHECK command, SIGTERM it and require exit status 0. Every step's duration is printed.
#
# Environment: IMAGE (default vae-service:container-test), CACHE_DIR (default
# /var/cache/vae-container-base), PYTHON (for the tiny test models when models/ has none; default
# .venv/bin/python), KEEP_IMAGE=1 (keep the built image), READY_TIMEOUT (seconds, default 180).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
IMAGE=${IMAGE:-vae-service:container-test}
BASE_IMAGE=docker.io/library/python:3.11-slim
CACHE_DIR=${CACHE_DIR:-/var/cache/vae-container-base}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
READY_TIMEOUT=${READY_TIMEOUT:-180}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_PACKAGES=python3,python3-pip,python3-venv
# Bump when the stand-in's recipe changes: the cache key covers it.
BASE_RECIPE="v1 $SUITE minbase $BASE_PACKAGES $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
BASE_KEY=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-12)
BASE_TAR=$CACHE_DIR/python311-standin-$BASE_KEY.tar
BUILDAH=(buildah --storage-driver overlay)

WORK=$(mktemp -d /tmp/vae-container-test.XXXXXX)
CONTAINERS=()
SERVER_PID=
STEPS=()
T_START=$(date +%s.%N)

log() { printf '[container-test] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# The processes below pid $1, from /proc (no procps needed). Every thread's children: buildah
# is a Go program and forks from any of its threads.
descendants() {
    local child
    for child in $(cat "/proc/$1"/task/*/children 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

cleanup() {
    local status=$?
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        log "cleanup: stopping the server (pid $SERVER_PID and what it started)"
        local pids
        pids=$(descendants "$SERVER_PID")
        # shellcheck disable=SC2086
        kill -KILL "$SERVER_PID" $pids 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    for ctr in "${CONTAINERS[@]}"; do
        "${BUILDAH[@]}" umount "$ctr" >/dev/null 2>&1 || true
        "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
    done
    if [ "${KEEP_IMAGE:-0}" != 1 ] && [ "$status" = 0 ]; then
        "${BUILDAH[@]}" rmi "$IMAGE" >/dev/null 2>&1 || true
    fi
    # debootstrap mounts /proc (and more) in its target: never rm -rf through a mount.
    local mnt
    for mnt in $(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done
    if awk -v w="$WORK/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        log "cleanup: mounts remain under $WORK, leaving it in place"
    else
        rm -rf "$WORK"
    fi
    if [ "$status" != 0 ]; then log "FAILED (exit $status)"; fi
}
trap cleanup EXIT

# step NAME FUNCTION: run it, time it, remember the duration.
step() {
    local name=$1 t0 t1 secs
    shift
    log "==> $name"
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    STEPS+=("$(printf '%-10s %7ss' "$name" "$secs")")
    log "<== $name: ${secs}s"
}

# ---------------------------------------------------------------------------------------------
tools() {
    [ "$(id -u)" = 0 ] || die "run as root (buildah --isolation chroot and debootstrap need it)"
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" uidmap >/dev/null
    fi
    buildah --version
}

# The stand-in for python:3.11-slim (see the header). Cached as a tarball under CACHE_DIR.
make_base_tar() {
    local root=$WORK/base-root
    log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $MIRROR: not cached yet"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
    # What python:3.11-slim provides: python, python3 and pip on PATH under /usr/local/bin.
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    # Test-harness plumbing only (the real base needs neither): this machine's CA bundle, so
    # pip inside the build can reach PyPI through whatever TLS this network uses.
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt \
        "$root/usr/local/share/container-test/ca-certificates.crt"
    printf '[global]\ncert = /usr/local/share/container-test/ca-certificates.crt\n' \
        >"$root/etc/pip.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/log/*.log
    mkdir -p "$CACHE_DIR"
    # As in any image: /proc, /sys and /dev are empty; the runtime provides them.
    tar -C "$root" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
        -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$root"
}

base() {
    local have
    have=$("${BUILDAH[@]}" inspect --type image --format \
        '{{index .OCIv1.Config.Labels "org.vae-service.standin"}}' "$BASE_IMAGE" 2>/dev/null ||
        true)
    if [ "$have" = "$BASE_KEY" ]; then
        log "$BASE_IMAGE stand-in $BASE_KEY already in buildah storage"
        return
    fi
    [ -f "$BASE_TAR" ] || make_base_tar
    log "importing $BASE_TAR as $BASE_IMAGE"
    local ctr
    ctr=$("${BUILDAH[@]}" from --pull=never scratch)
    CONTAINERS+=("$ctr")
    "${BUILDAH[@]}" add "$ctr" "$BASE_TAR" / >/dev/null
    "${BUILDAH[@]}" config \
        --env PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3 \
        --label "org.vae-service.standin=$BASE_KEY" \
        --label "org.vae-service.note=container-test stand-in for python:3.11-slim" "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
    CONTAINERS=("${CONTAINERS[@]/$ctr/}")
}

# The image ships models/. Until the real models exist, serve tiny random ones (same format,
# made by training.export) mounted over /app/models; the image's own copy is used otherwise.
MODEL_MOUNT=()
models() {
    if [ -f models/vae/metadata.json ] && [ -f models/ae/metadata.json ]; then
        log "using the image's own models/ (vae and ae found)"
        return
    fi
    log "models/vae or models/ae missing: exporting tiny test models to $WORK/models"
    [ -x "$PYTHON" ] || die "$PYTHON not found (make test installs it; or set PYTHON)"
    OMP_NUM_THREADS=1 "$PYTHON" - "$WORK/models" <<'EOF'
import sys
from pathlib import Path

import numpy as np
import torch

from training.config import ModelConfig, TrainConfig
from training.export import export_model
from training.model import build_model

torch.set_num_threads(1)
torch.manual_seed(0)
out = Path(sys.argv[1])
images = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
for kind in ("vae", "ae"):
    cfg = ModelConfig(
        kind=kind,
        encoder_conv_filters=[4, 8],
        encoder_conv_kernel_size=[3, 3],
        encoder_conv_strides=[2, 2],
        decoder_conv_t_filters=[4, 1],
        decoder_conv_t_kernel_size=[3, 3],
        decoder_conv_t_strides=[2, 2],
    )
    model = build_model(cfg)
    with torch.no_grad():
        z = model.encode(torch.from_numpy(images))
    z = z[0] if isinstance(z, tuple) else z
    points = {"z": np.round(z.numpy(), 4).tolist(), "labels": list(range(8)), "source": "random"}
    meta = export_model(
        model, TrainConfig(model=cfg), out / kind, images, name=kind, latent_points=points
    )
    print(f"tiny {kind}: {meta['version']}")
EOF
    chmod -R a+rX "$WORK/models"
    MODEL_MOUNT=(--volume "$WORK/models:/app/models:ro")
}

build() {
    [ -d service ] || die "service/ is missing"
    "${BUILDAH[@]}" build --pull=never --isolation chroot --network host --layers \
        --format docker -t "$IMAGE" -f Dockerfile . 2>&1 | sed 's/^/    /'
}

inspect_image() {
    local size_b cfg ctr mnt
    size_b=$("${BUILDAH[@]}" images --format '{{.Size}}' --filter "reference=$IMAGE" | head -1)
    # Uncompressed size: the image's root file system, summed.
    ctr=$("${BUILDAH[@]}" from --pull=never "$IMAGE")
    CONTAINERS+=("$ctr")
    mnt=$("${BUILDAH[@]}" mount "$ctr")
    IMAGE_BYTES=$(du -sb "$mnt" | cut -f1)
    local bctr bmnt
    bctr=$("${BUILDAH[@]}" from --pull=never "$BASE_IMAGE")
    CONTAINERS+=("$bctr")
    bmnt=$("${BUILDAH[@]}" mount "$bctr")
    BASE_BYTES=$(du -sb "$bmnt" | cut -f1)
    local mb=$((1000 * 1000))
    log "image $IMAGE: $((IMAGE_BYTES / mb)) MB uncompressed (buildah images: $size_b);" \
        "stand-in base $((BASE_BYTES / mb)) MB; added by the Dockerfile:" \
        "$(((IMAGE_BYTES - BASE_BYTES) / mb)) MB"
    log "  of which: venv $(($(du -sb "$mnt/opt/venv" | cut -f1) / mb)) MB," \
        "service $(($(du -sb "$mnt/app/service" | cut -f1) / 1000)) kB," \
        "models $(($(du -sb "$mnt/app/models" | cut -f1) / 1000)) kB"
    # What must not be in it.
    local bad
    bad=$(cd "$mnt" && find opt app root tmp \( -name 'torch' -o -name '__pycache__' \
        -o -name '.cache' -o -name 'tests' -o -name 'runs' -o -name '.venv' -o -name '.git' \
        -o -name 'pip' -o -name 'setuptools' \) 2>/dev/null | grep -v '^opt/venv/lib/.*/tests$' |
        head -5 || true)
    [ -z "$bad" ] || die "image holds what it should not: $bad"
    for tool in gcc cc g++ make curl; do
        [ ! -e "$mnt/usr/bin/$tool" ] || die "image holds /usr/bin/$tool"
    done
    cfg=$("${BUILDAH[@]}" inspect --type image --format \
        'user={{.Docker.Config.User}} stop={{.Docker.Config.StopSignal}} ports={{.Docker.Config.ExposedPorts}} health={{.Docker.Config.Healthcheck}}' \
        "$IMAGE")
    log "  config: $cfg"
    case "$cfg" in *"user=10001:10001 "*) ;; *) die "image does not run as uid 10001" ;; esac
    case "$cfg" in *"stop=SIGTERM"*) ;; *) die "no STOPSIGNAL SIGTERM" ;; esac
    case "$cfg" in *healthz*) ;; *) die "no HEALTHCHECK on /healthz" ;; esac
    HEALTHCHECK_CMD=$("${BUILDAH[@]}" inspect --type image --format \
        '{{range $i, $a := .Docker.Config.Healthcheck.Test}}{{if $i}}{{$a}}{{"\n"}}{{end}}{{end}}' \
        "$IMAGE" | sed -n 1p)
    "${BUILDAH[@]}" umount "$ctr" >/dev/null
    "${BUILDAH[@]}" umount "$bctr" >/dev/null
}

# GET a URL with the standard library (no curl on a bare CI machine); fails unless 200.
http_get() {
    python3 -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode(errors="replace"))' "$1"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    PORT=$(free_port)
    RUN_CTR=$("${BUILDAH[@]}" from --pull=never "$IMAGE")
    CONTAINERS+=("$RUN_CTR")
    log "running $IMAGE as $RUN_CTR on port $PORT ${MODEL_MOUNT[*]:-}"
    # buildah run does not apply the image's ENTRYPOINT: name it, as `docker run` would run it.
    # Two workers whatever this machine's size (the service would otherwise start one per CPU).
    "${BUILDAH[@]}" run --isolation chroot --network host --env "PORT=$PORT" \
        --env VAE_WORKERS=2 "${MODEL_MOUNT[@]}" "$RUN_CTR" -- /usr/local/bin/vae-entrypoint \
        >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local deadline=$(($(date +%s) + READY_TIMEOUT)) ready
    until ready=$(http_get "http://127.0.0.1:$PORT/readyz" 2>/dev/null); do
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log"; die "server exited"; }
        [ "$(date +%s)" -lt "$deadline" ] || { cat "$WORK/server.log"; die "not ready"; }
        sleep 0.5
    done
    log "ready: $(head -c 300 <<<"$ready")"
}

probe() {
    python3 - "$PORT" <<'EOF'
import json
import struct
import sys
import urllib.request
import uuid
import zlib

base = f"http://127.0.0.1:{sys.argv[1]}"


def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def png(width, height, pixels):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + bytes(pixels[y * width : (y + 1) * width]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


status, ctype, body = get("/healthz")
assert status == 200, status
print(f"GET /healthz -> {status} {body[:80]!r}")

status, ctype, body = get("/sample?n=16")
assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n", (status, ctype, body[:16])
print(f"GET /sample?n=16 -> {status} {ctype} {len(body)} bytes of PNG")

# A 28x28 '1': a light vertical stroke on a dark background, as MNIST.
digit = [255 if 12 <= x <= 15 and 4 <= y <= 23 else 0 for y in range(28) for x in range(28)]
boundary = uuid.uuid4().hex
form = (
    f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"one.png\"\r\n"
    f"Content-Type: image/png\r\n\r\n"
).encode() + png(28, 28, digit) + f"\r\n--{boundary}--\r\n".encode()
request = urllib.request.Request(
    base + "/encode",
    data=form,
    method="POST",
    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
)
with urllib.request.urlopen(request, timeout=30) as r:
    status, body = r.status, r.read()
assert status == 200, status
print(f"POST /encode -> {status} {json.dumps(json.loads(body))[:200]}")

status, ctype, body = get("/metrics")
text = body.decode()
assert status == 200 and "# TYPE" in text, status
print(f"GET /metrics -> {status} {ctype} {len(text.splitlines())} lines")
EOF
}

# Resident memory of the serving processes (all uvicorn processes of the container).
server_rss() {
    local p kb=0 rss
    for p in $(descendants "$SERVER_PID"); do
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q 'python -m service\|multiprocessing'; then
            rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
            kb=$((kb + ${rss:-0}))
        fi
    done
    log "server resident memory after the probes: $((kb / 1024)) MiB"
}

healthcheck() {
    # The image's own HEALTHCHECK command, run inside the image beside the server.
    [ -n "$HEALTHCHECK_CMD" ] || die "no healthcheck command found"
    log "HEALTHCHECK: $HEALTHCHECK_CMD"
    "${BUILDAH[@]}" run --isolation chroot --network host --env "PORT=$PORT" "$RUN_CTR" \
        -- /bin/sh -c "$HEALTHCHECK_CMD" || die "HEALTHCHECK failed"
    # The user it runs as, and what a uid 10001 process can do with the image.
    "${BUILDAH[@]}" run --isolation chroot --network host "$RUN_CTR" -- /bin/sh -c \
        'echo "runs as: $(id)"; python -c "import torch" 2>/dev/null && exit 1 || echo "no torch: ok"'
}

stop() {
    # SIGTERM to the container's first process, as `docker stop` sends it: the server itself,
    # `python -m service`, which the entrypoint exec'd (its workers are multiprocessing's).
    local pid="" p
    for p in $(descendants "$SERVER_PID"); do
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q '^python -m service '; then
            pid=$p
            break
        fi
    done
    [ -n "$pid" ] || { descendants "$SERVER_PID"; die "cannot find the server process"; }
    # A request in flight when SIGTERM lands must still complete: the drain. Deterministically:
    # a POST /encode whose upload is only half sent when the signal goes; the rest follows a
    # second later, and the answer must still be 200.
    python3 - "$PORT" "$WORK/inflight" <<'EOF_PY' &
import socket
import struct
import sys
import time
import zlib

port, out = int(sys.argv[1]), sys.argv[2]


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


rows = b"".join(b"\0" + bytes(255 if 12 <= x <= 15 else 0 for x in range(28)) for _ in range(28))
png = (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(rows))
    + chunk(b"IEND", b"")
)
form = (
    b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"one.png\"\r\n"
    b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--b0undary--\r\n"
)
head = (
    f"POST /encode HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    f"Content-Type: multipart/form-data; boundary=b0undary\r\n"
    f"Content-Length: {len(form)}\r\n\r\n"
).encode()
sock = socket.create_connection(("127.0.0.1", port), timeout=60)
sock.sendall(head + form[:40])
open(out + ".sent", "w").close()
time.sleep(1.5)
sock.sendall(form[40:])
reply = b""
while chunk_ := sock.recv(65536):
    reply += chunk_
status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/1.1") else "none"
with open(out, "w") as f:
    f.write(f"{status} {time.time():.3f}\n")
EOF_PY
    local client=$! waited=0
    until [ -e "$WORK/inflight.sent" ] || [ "$waited" -ge 200 ]; do
        sleep 0.05
        waited=$((waited + 1))
    done
    sleep 0.3
    log "SIGTERM to the server (pid $pid), with a half-sent POST /encode in flight"
    local rc=0 t0 t_sig
    t_sig=$(date +%s.%N)
    kill -TERM "$pid"
    t0=$(date +%s)
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=
    wait "$client" || true
    local status ended
    read -r status ended <"$WORK/inflight" || die "no result from the in-flight request"
    [ "$status" = 200 ] || die "the in-flight request got '$status', not 200, after SIGTERM"
    log "in-flight request: 200, answered" \
        "$(awk -v a="$t_sig" -v b="$ended" 'BEGIN { printf "%.2f", b - a }')s after SIGTERM"
    log "server log (last lines):"
    tail -12 "$WORK/server.log" | sed 's/^/    /'
    [ "$rc" = 0 ] || die "exit status $rc after SIGTERM (wanted 0)"
    log "exited 0 after SIGTERM in $(($(date +%s) - t0))s"
}

# One function, parsed whole before it runs: editing this file mid-run cannot derail it.
main() {
    step tools tools
    step base base
    step models models
    step build build
    step inspect inspect_image
    step start start
    step probe probe
    server_rss
    step health healthcheck
    step stop stop

    TOTAL=$(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    log "step durations:"
    for line in "${STEPS[@]}"; do log "  $line"; done
    log "  total      ${TOTAL}s"
    log "image size: $((IMAGE_BYTES / 1000000)) MB uncompressed with the stand-in base" \
        "($(((IMAGE_BYTES - BASE_BYTES) / 1000000)) MB over the base)"
    log "PASS"
}

main "$@"
