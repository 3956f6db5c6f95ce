"""The service beside other serving stacks, same models, same machine, same run, same client.

    python -m bench.peers.compare                       # every peer, its candidate settings
    python -m bench.peers.compare --duration 2 --bentoml default w2_ort1 batching --no-torch
    python -m bench.peers.compare --peers litserve pytriton --configs pytriton=i2_ort1 --bentoml

Peers besides BentoML and eager PyTorch (issue #27; bench/peers/servers.py): LitServe, Ray
Serve and TorchServe on the two REST requests below, Triton (PyTriton) and MLServer on the
service's Open Inference Protocol models (the same request bytes to the service and to them:
vae-decoder with 16 z, JSON and binary; the "vae" pipeline with one PNG). Each runs in its own
environment (bench/peers/envs.py, .venv-<peer>/, set up on first use; a peer that cannot be set
up or started is reported, not fatal), at each of its candidate settings. Beside each row: the
server's CPU per request less the in-process cost of the same work (`overhead`: decode or
encode plus PNG, measured in this process in the same run, one onnxruntime thread), and the
memory of all its processes after the load (RSS and PSS).

One server at a time on a loopback port, started and stopped here, driven by wrk
(bench/loadgen.py) at concurrency 1 and 32 on the two requests every peer answers:

  sample  the service's GET /sample?n=16 (one PNG grid of 16 digits from z ~ N(0, I));
          BentoML's POST /sample {"n": 16} (its APIs are POST only); the eager-PyTorch peer's
          GET /sample?n=16
  encode  POST /encode, one 28x28 PNG as multipart field "file" (the same bytes to every
          server): the service and BentoML (the PyTorch peer has no /encode)

Peers: BentoML 1.4 (bench/peers/bentoml_service.py, in its own environment .venv-bentoml/,
set up on first use; skipped with the reason where that fails) at its default settings and at
the candidates for its best settings (BENTOML_CONFIGS, CANDIDATES: the best of them per
request is the one the targets compare with), and the eager-PyTorch peer
(bench/baseline_torch_app.py). Before any load, each peer's payloads are checked against the
service's: the same seed gives a PNG of the same size and the same pixels (to one level), the
same upload the same mu and log_var (to 1e-4). Per server, case and concurrency: requests/s,
p50/p99, server CPU; then the service's ratio to each peer.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from bench import http_load
from bench.common import (
    CACHE,
    Server,
    baseline_run,
    baseline_server,
    digit_pngs,
    model_dir,
    service_server,
    warn_if_busy,
    write_result,
)
from bench.loadgen import LoadResult, Request, multipart
from bench.peers import bentoml_env, servers
from bench.peers.servers import OIP_CASES, PEERS

CONCURRENCY = (1, 8, 32)
SAMPLE_N = http_load.SAMPLE_N
SERVICE_LABEL = "service"
TORCH_LABEL = "eager-pytorch"
# BentoML's settings, as environment variables bench/peers/bentoml_service.py reads (its
# docstring). "default": nothing set, BentoML's defaults (1 worker, 1 thread for sync APIs, an
# access log line per request) and onnxruntime's (a thread per core, spinning).
BENTOML_CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "w2": {"VAE_BENTO_WORKERS": "2"},
    "w2_ort1": {"VAE_BENTO_WORKERS": "2", "VAE_BENTO_ORT_THREADS": "1"},
    "w2_ort1_nolog": {
        "VAE_BENTO_WORKERS": "2",
        "VAE_BENTO_ORT_THREADS": "1",
        "VAE_BENTO_ACCESS_LOG": "0",
    },
    "w2_ort1_nolog_nometrics": {
        "VAE_BENTO_WORKERS": "2",
        "VAE_BENTO_ORT_THREADS": "1",
        "VAE_BENTO_ACCESS_LOG": "0",
        "VAE_BENTO_METRICS": "0",
    },
    "w2_t4_ort1_nolog": {
        "VAE_BENTO_WORKERS": "2",
        "VAE_BENTO_THREADS": "4",
        "VAE_BENTO_ORT_THREADS": "1",
        "VAE_BENTO_ACCESS_LOG": "0",
    },
    "w2_ort1_nolog_async": {
        "VAE_BENTO_WORKERS": "2",
        "VAE_BENTO_ORT_THREADS": "1",
        "VAE_BENTO_ACCESS_LOG": "0",
        "VAE_BENTO_ASYNC": "1",
    },
    "w1_ort2_nolog": {"VAE_BENTO_ORT_THREADS": "2", "VAE_BENTO_ACCESS_LOG": "0"},
    # adaptive batching: 2 front workers (32 threads each, so requests wait in the batcher,
    # not in the thread pool) in front of 1 model worker with batchable APIs
    "batching": {
        "VAE_BENTO_WORKERS": "2",
        "VAE_BENTO_THREADS": "32",
        "VAE_BENTO_ORT_THREADS": "1",
        "VAE_BENTO_ACCESS_LOG": "0",
        "VAE_BENTO_BATCHING": "1",
        "VAE_BENTO_MODEL_WORKERS": "1",
        "VAE_BENTO_RUNNER_MAX_REQUESTS": "100000000",
    },
}
# The settings `make bench` runs besides the defaults: the candidates for BentoML's best on a
# 2-core machine, from short development runs on 2026-12-02 (on a machine shared with a
# training run: good for ranking by server CPU per request, not for absolute figures). Workers
# = cores and one onnxruntime thread each cut BentoML's CPU per /sample?n=16 about in half
# against its defaults (one worker, a spinning thread per core); no access log and `async def`
# APIs (no thread-pool hop) each cut roughly another 10-30% (noisy figures); adaptive batching
# (a second Service, called over loopback) cost more CPU per request than it saved here. The
# best is chosen per request in each run, as the candidate with the most requests/s at
# concurrency 32, and the targets are against that one.
CANDIDATES = ("w2_ort1_nolog_async", "w2_ort1_nolog", "batching")
DEFAULT_RUN = ("default", *CANDIDATES)
BENTOML_TARGET_RATIO = 2.0


def descriptions() -> dict[str, str]:
    return {
        "sample": f"/sample, n={SAMPLE_N} (one PNG grid)",
        "encode": "POST /encode (one 28x28 PNG, multipart)",
    }


def requests(png: bytes) -> dict[str, dict[str, Request]]:
    """Per kind of server, the request of each case."""
    body, ctype = multipart([("digit.png", png)], "file")
    encode = Request("/encode", "POST", body, ctype)
    sample_json = json.dumps({"n": SAMPLE_N}).encode()
    return {
        SERVICE_LABEL: {"sample": Request(f"/sample?n={SAMPLE_N}"), "encode": encode},
        "bentoml": {
            "sample": Request("/sample", "POST", sample_json, "application/json"),
            "encode": encode,
        },
        TORCH_LABEL: {"sample": Request(f"/sample?n={SAMPLE_N}")},
    }


def bentoml_server(cli: Path, models: Path, config: dict[str, str], log: Path) -> Server:
    """`bentoml serve` of bench/peers/bentoml_service.py over `models`/vae, from the root."""
    knobs = {key: "" for settings in BENTOML_CONFIGS.values() for key in settings}
    env = {
        **knobs,  # unset, whatever this process's environment says: only `config` counts
        "VAE_BENTO_MODEL_DIR": str(models / "vae"),
        "BENTOML_HOME": str(CACHE / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONUNBUFFERED": "1",
        **config,
    }
    argv = [str(cli), "serve", "bench.peers.bentoml_service:VaePeer"]
    argv += ["--host", "127.0.0.1", "--port", "{port}"]
    return Server(argv, env=env, ready_path="/readyz", log=log, name="bentoml")


# --- payloads ---------------------------------------------------------------------------------


def _call(url: str, req: Request) -> bytes:
    headers = {"Content-Type": req.content_type} if req.content_type else {}
    r = urllib.request.Request(url + req.path, data=req.body, headers=headers, method=req.method)
    with urllib.request.urlopen(r, timeout=30) as response:
        return response.read()


def seeded(req: Request, seed: int) -> Request:
    """The sample request with a seed: `&seed=` on a query, `"seed"` in a JSON body."""
    if req.body is None:
        return Request(f"{req.path}&seed={seed}")
    body = {**json.loads(req.body), "seed": seed}
    return Request(req.path, req.method, json.dumps(body).encode(), req.content_type)


def payloads(url: str, reqs: dict[str, Request], seed: int = 0) -> dict:
    """What a server answers: the seeded sample grid's pixels, the encoding."""
    out: dict = {}
    png = _call(url, seeded(reqs["sample"], seed))
    out["sample"] = np.asarray(Image.open(io.BytesIO(png)))
    if "encode" in reqs:
        out["encode"] = json.loads(_call(url, reqs["encode"]))
    return out


def compare_payloads(reference: dict, peer: dict, pixels: bool = True) -> dict:
    """The peer's payloads against the service's; `same` is False where they differ. `pixels`
    False: the grid's size only (a peer that draws z with another generator)."""
    a, b = reference["sample"], peer["sample"]
    check: dict = {"sample_shape": list(b.shape), "service_sample_shape": list(a.shape)}
    same = a.shape == b.shape
    if same and pixels:
        check["sample_max_pixel_diff"] = int(np.abs(a.astype(int) - b.astype(int)).max())
        same = check["sample_max_pixel_diff"] <= 1
    if "encode" in peer:
        ours, theirs = reference["encode"], peer["encode"]
        keys = ("mu", "log_var")
        if all(len(ours[k]) == len(theirs.get(k, ())) for k in keys):
            diffs = [abs(x - y) for k in keys for x, y in zip(ours[k], theirs[k], strict=True)]
            check["encode_max_abs_diff"] = max(diffs)
            same = same and check["encode_max_abs_diff"] <= 1e-4
        else:
            check["encode_keys"] = sorted(theirs)
            same = False
    check["same"] = same
    return check


# --- the run ----------------------------------------------------------------------------------


def measure_server(
    server: Server,
    label: str,
    reqs: dict[str, Request],
    concurrency: list[int],
    duration: float,
    warmup: float,
) -> list[dict]:
    rows = []
    for case, req in reqs.items():
        results: list[LoadResult] = http_load.measure(
            server.url, server.pid, f"{label}:{case}", req, concurrency, duration, warmup
        )
        rows += [{**r.as_dict(), "server": label, "case": case} for r in results]
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """The service's requests/s over each peer's, and both p99s, per case and concurrency."""
    mine = {(r["case"], r["concurrency"]): r for r in rows if r["server"] == SERVICE_LABEL}
    out = []
    for r in rows:
        ours = mine.get((r["case"], r["concurrency"]))
        if r["server"] == SERVICE_LABEL or ours is None or not r["rps"]:
            continue
        out.append(
            {
                "peer": r["server"],
                "case": r["case"],
                "concurrency": r["concurrency"],
                "service_rps": ours["rps"],
                "peer_rps": r["rps"],
                "ratio": round(ours["rps"] / r["rps"], 2),
                "service_p99_ms": ours["p99_ms"],
                "peer_p99_ms": r["p99_ms"],
                "service_cpu_ms_per_request": ours["server_cpu_ms_per_request"],
                "peer_cpu_ms_per_request": r["server_cpu_ms_per_request"],
            }
        )
    return out


def peer_errors_of(rows: list[dict], server: str) -> int:
    """Failed requests of one peer, over all its cases."""
    return sum(sum(r["errors"].values()) for r in rows if r["server"] == server)


def best_configs(rows: list[dict]) -> dict[str, str]:
    """Per case, the BentoML settings (not the defaults, where others ran) with the most
    requests/s at the highest concurrency measured."""
    top = max((r["concurrency"] for r in rows), default=0)
    bento = [r for r in rows if r["server"].startswith("bentoml-") and r["concurrency"] == top]
    tuned = [r for r in bento if r["server"] != "bentoml-default"] or bento
    best: dict[str, str] = {}
    for case in dict.fromkeys(r["case"] for r in tuned):
        fastest = max((r for r in tuned if r["case"] == case), key=lambda r: r["rps"])
        best[case] = fastest["server"].removeprefix("bentoml-")
    return best


def targets(data: dict) -> list[dict]:
    """Issue #17's targets against BentoML at its best settings (none where it was skipped)."""
    out = []
    p99_rows = []
    for case, name in data.get("bentoml_best", {}).items():
        rows = [r for r in data["ratios"] if r["peer"] == f"bentoml-{name}" and r["case"] == case]
        at32 = next((r for r in rows if r["concurrency"] == 32), None)
        p99_rows += [r for r in rows if r["concurrency"] in (1, 32)]
        if at32:
            out.append(
                {
                    "target": f">= {BENTOML_TARGET_RATIO:g}x BentoML (best settings) on "
                    f"{descriptions()[case]} at concurrency 32",
                    "measured": f"{at32['service_rps']:,.0f} vs {at32['peer_rps']:,.0f} "
                    f"requests/s: {at32['ratio']:.1f}x",
                    "holds": at32["ratio"] >= BENTOML_TARGET_RATIO,
                    "detail": f"BentoML {data.get('bentoml_version')} at {name}: "
                    f"{settings_text(BENTOML_CONFIGS[name])}",
                }
            )
    if p99_rows:
        worse = [r for r in p99_rows if r["service_p99_ms"] >= r["peer_p99_ms"]]
        out.append(
            {
                "target": "lower p99 than BentoML (best settings) at concurrency 1 and 32, "
                "both requests",
                "measured": "; ".join(
                    f"{r['case']} c={r['concurrency']}: {r['service_p99_ms']:.1f} vs "
                    f"{r['peer_p99_ms']:.1f} ms"
                    for r in p99_rows
                ),
                "holds": not worse,
                "detail": "p99 from wrk, same run, against the best settings of each request",
            }
        )
    return out


def settings_text(config: dict[str, str]) -> str:
    """BENTOML_CONFIGS' environment as BentoML's and onnxruntime's own words."""
    if not config:
        return "BentoML's and onnxruntime's defaults"
    words = {
        "VAE_BENTO_WORKERS": "workers={}",
        "VAE_BENTO_THREADS": "threads={}",
        "VAE_BENTO_ORT_THREADS": "onnxruntime intra_op_num_threads={}",
        "VAE_BENTO_ACCESS_LOG": "access log {}",
        "VAE_BENTO_METRICS": "metrics {}",
        "VAE_BENTO_BATCHING": "adaptive batching {}",
        "VAE_BENTO_ASYNC": "async APIs {}",
        "VAE_BENTO_MODEL_WORKERS": "model Service workers={}",
        "VAE_BENTO_RUNNER_MAX_REQUESTS": "runner_connection.max_requests={}",
    }
    out = []
    for key, value in config.items():
        if key in (
            "VAE_BENTO_ACCESS_LOG",
            "VAE_BENTO_METRICS",
            "VAE_BENTO_BATCHING",
            "VAE_BENTO_ASYNC",
        ):
            value = "on" if value == "1" else "off"
        out.append(words.get(key, key + "={}").format(value))
    return ", ".join(out)


# --- the work in process, the peers' payloads, memory ----------------------------------------


def inprocess_costs(models: Path, png: bytes, seconds: float = 1.0) -> dict[str, float]:
    """CPU ms (this thread's CPU time, mean) of each case's work in this process, one
    onnxruntime thread, the service's own code (bench/peers/work.py): what every server must
    spend at least, whatever its stack. Per case name (REST and OIP)."""
    from bench.peers import work

    graphs = work.Graphs(models / "vae", threads=1)
    z = work.latents(graphs, SAMPLE_N, 0)
    ops = {
        "sample": lambda: work.sample_png(graphs, SAMPLE_N, None),
        "encode": lambda: work.encoding(graphs, png),
        "decoder16": lambda: graphs.decode(z),
        "pipeline1": lambda: work.pipeline(graphs, [png]),
    }
    costs = {}
    for name, fn in ops.items():
        for _ in range(20):
            fn()
        spent, count = 0.0, 0
        deadline = time.perf_counter() + seconds
        while count < 50 or time.perf_counter() < deadline:
            t0 = time.thread_time()
            fn()
            spent += time.thread_time() - t0
            count += 1
        costs[name] = round(1000 * spent / count, 4)
    out = {"sample": costs["sample"], "encode": costs["encode"]}
    for case in OIP_CASES:
        out[case] = costs["decoder16" if case.startswith("decoder16") else "pipeline1"]
    return out


def _post(url: str, req: Request) -> tuple[bytes, str | None]:
    headers = dict(req.headers)
    if req.content_type:
        headers["Content-Type"] = req.content_type
    r = urllib.request.Request(url + req.path, data=req.body, headers=headers, method=req.method)
    with urllib.request.urlopen(r, timeout=30) as response:
        return response.read(), response.headers.get(servers.HEADER)


def oip_payloads(url: str, reqs: dict[str, Request]) -> dict[str, dict]:
    """Each OIP case's outputs as arrays."""
    return {case: servers.decode_oip(*_post(url, req)) for case, req in reqs.items()}


def when_answering(fn, timeout: float):  # type: ignore[no-untyped-def]
    """fn() once it stops failing (a server whose health answers before its models load), at
    most `timeout` seconds; its last error after that."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (urllib.error.URLError, OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def memory_of(server: Server) -> dict[str, float]:
    return {"rss_mb": round(server.rss_mb(), 1), "pss_mb": round(server.pss_mb(), 1)}


# --- the run ----------------------------------------------------------------------------------


def _service(
    models: Path, reqs: dict[str, Request], oip: dict[str, Request], run: dict, logs: Path
) -> tuple[dict, dict]:
    with service_server(models, log=logs / "service.log") as server:
        reference = payloads(server.url, reqs)
        oip_reference = oip_payloads(server.url, oip)
        cases = {**reqs, **oip}
        run["rows"] += measure_server(server, SERVICE_LABEL, cases, **run["load"])
        run["memory"][SERVICE_LABEL] = memory_of(server)
    return reference, oip_reference


def _bentoml(configs: list[str], install: bool, models: Path, png: bytes, run: dict) -> dict:
    skipped = None
    cli = None
    if configs:
        if install:
            cli, skipped = bentoml_env.ensure()
        elif bentoml_env.ready():
            cli = bentoml_env.bentoml_cli()
        else:
            skipped = "its environment is not set up (python -m bench.peers.bentoml_env)"
    if skipped:
        print(f"BentoML skipped: {skipped}", file=sys.stderr)
    failed: dict[str, str] = {}
    for name in configs:
        if cli is None:
            break
        label = f"bentoml-{name}"
        config = BENTOML_CONFIGS[name]
        print(f"-- {label}: {settings_text(config)}", flush=True)
        try:
            with bentoml_server(cli, models, config, run["logs"] / f"{label}.log") as peer:
                run["checks"][label] = compare_payloads(
                    run["reference"], payloads(peer.url, requests(png)["bentoml"])
                )
                rows = measure_server(peer, label, requests(png)["bentoml"], **run["load"])
                run["rows"] += rows
                run["memory"][label] = memory_of(peer)
        except (RuntimeError, OSError) as exc:  # ServerNotReady, an error status, wrk failing
            failed[name] = str(exc).strip().splitlines()[0][:300]
            print(f"{label} failed: {failed[name]}", file=sys.stderr)
    return {
        "bentoml_version": bentoml_env.version() if cli else None,
        "bentoml_skipped": skipped,
        "bentoml_failed": failed,
        "bentoml_configs": configs if cli else [],
        "bentoml_settings": {
            name: settings_text(BENTOML_CONFIGS[name]) for name in (configs if cli else [])
        },
    }


def _peer(peer: servers.Peer, configs: list[str], install: bool, models: Path, run: dict) -> dict:
    """One peer at each of `configs`: set up, started, payloads checked, then measured."""
    report: dict = {"title": peer.title, "kind": peer.kind, "note": peer.note, "configs": {}}
    if install:
        python, why = peer.env.ensure()
    elif peer.env.ready():
        python, why = peer.env.python(), ""
    else:
        python, why = (
            None,
            f"its environment is not set up (python -m bench.peers.envs {peer.name})",
        )
    if python is None:
        report["skipped"] = why
        print(f"{peer.title} skipped: {why}", file=sys.stderr)
        return report
    report["version"] = peer.env.version()
    if peer.kind == "rest":
        reqs = servers.rest_requests(peer.name, run["png"])
    else:
        reqs = {case: run["oip"][case] for case in peer.oip_cases}
    report["requests"] = {case: f"{r.method} {r.path}" for case, r in reqs.items()}
    for name in configs:
        label = f"{peer.name}-{name}"
        config = peer.configs[name]
        report["configs"][name] = config
        print(f"-- {label}: {config or 'defaults'}", flush=True)
        log = run["logs"] / f"{label}.log"
        try:
            with servers.server(peer, python, models, config, log) as srv:
                if peer.kind == "rest":
                    theirs = when_answering(lambda: payloads(srv.url, reqs), peer.ready_timeout)
                    check = compare_payloads(run["reference"], theirs)
                else:
                    theirs = when_answering(lambda: oip_payloads(srv.url, reqs), peer.ready_timeout)
                    check = servers.compare_oip(run["oip_reference"], theirs)
                run["checks"][label] = check
                if not check["same"]:
                    print(f"{label}: payloads differ, not measured: {check}", file=sys.stderr)
                    continue
                run["rows"] += measure_server(srv, label, reqs, **run["load"])
                run["memory"][label] = memory_of(srv)
        except (RuntimeError, OSError, ValueError) as exc:
            report.setdefault("failed", {})[name] = str(exc).strip().splitlines()[0][:300]
            print(f"{label} failed: {report['failed'][name]}", file=sys.stderr)
    return report


def run(
    duration: float = 5.0,
    warmup: float = 1.0,
    bentoml: list[str] | None = None,
    torch: bool = True,
    concurrency: list[int] | None = None,
    install: bool = True,
    out_dir: Path | None = None,
    out_name: str = "peers",
    peers: list[str] | None = None,
    configs: dict[str, list[str]] | None = None,
) -> dict:
    """`peers`: which of servers.PEERS (default all); `configs`: per peer, the settings to run
    (default its candidates)."""
    quiet = warn_if_busy()
    concurrency = concurrency or list(CONCURRENCY)
    bento_configs = list(DEFAULT_RUN if bentoml is None else bentoml)
    models, models_note = model_dir()
    png = digit_pngs(1)[0]
    reqs = requests(png)
    z_dim = json.loads((models / "vae" / "metadata.json").read_text())["z_dim"]
    oip = servers.oip_requests("vae", z_dim, png)
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    state: dict = {
        "rows": [],
        "checks": {},
        "memory": {},
        "logs": logs,
        "png": png,
        "oip": oip,
        "load": {"concurrency": concurrency, "duration": duration, "warmup": warmup},
    }
    print("-- in-process cost of each request's work", flush=True)
    inprocess = inprocess_costs(models, png, 0.2 if duration < 2 else 1.0)
    state["reference"], state["oip_reference"] = _service(
        models, reqs[SERVICE_LABEL], oip, state, logs
    )
    bento = _bentoml(bento_configs, install, models, png, state)
    others = {}
    for name in PEERS if peers is None else peers:
        peer = PEERS[name]
        chosen = (configs or {}).get(name) or list(peer.candidates)
        others[name] = _peer(peer, chosen, install, models, state)
    torch_note = None
    if torch:
        run_dir = baseline_run()
        torch_note = f"{run_dir}/checkpoint.pt" if run_dir else "untrained full-size VAE"
        with baseline_server(run_dir, log=logs / "baseline.log") as eager:
            # torch's generator, not numpy's: other z for the same seed, so the size only
            state["checks"][TORCH_LABEL] = compare_payloads(
                state["reference"], payloads(eager.url, reqs[TORCH_LABEL]), pixels=False
            )
            state["rows"] += measure_server(eager, TORCH_LABEL, reqs[TORCH_LABEL], **state["load"])
            state["memory"][TORCH_LABEL] = memory_of(eager)
    rows = state["rows"]
    for r in rows:
        if r["case"] in inprocess:
            r["overhead_ms_per_request"] = round(
                r["server_cpu_ms_per_request"] - inprocess[r["case"]], 3
            )
    # The service's failed requests fail the run; a peer's are its own result, reported.
    errors = sum(sum(r["errors"].values()) for r in rows if r["server"] == SERVICE_LABEL)
    peer_errors = {
        r["server"]: peer_errors_of(rows, r["server"])
        for r in rows
        if r["server"] != SERVICE_LABEL and sum(r["errors"].values())
    }
    checks = state["checks"]
    data: dict = {
        "quiet_machine": quiet,
        "models": models_note,
        "duration_s": duration,
        "concurrency": concurrency,
        "descriptions": descriptions(),
        "requests": {
            kind: {case: f"{r.method} {r.path}" for case, r in by_case.items()}
            for kind, by_case in reqs.items()
        },
        "oip_requests": {
            case: f"{r.method} {r.path} ({r.content_type})" for case, r in oip.items()
        },
        **bento,
        "bentoml_best": best_configs(rows),
        "peers": others,
        "peers_best": peers_best(rows),
        "inprocess_ms": inprocess,
        "memory": state["memory"],
        "torch_weights": torch_note,
        "payload_checks": checks,
        "results": rows,
        "ratios": ratios(rows),
        "errors": errors,
        "peer_errors": peer_errors,
    }
    data["targets"] = targets(data) + peer_targets(data)
    data["payloads_differ"] = [label for label, c in checks.items() if not c["same"]]
    write_result(out_name, data, out_dir)
    for r in data["ratios"]:
        print(
            f"service / {r['peer']:<28} {r['case']:<16} c={r['concurrency']:<3} "
            f"{r['ratio']:5.2f}x  p99 {r['service_p99_ms']:7.2f} vs {r['peer_p99_ms']:7.2f} ms"
        )
    if data["payloads_differ"]:
        print(f"payloads differ from the service's: {checks}", file=sys.stderr)
    return data


# --- issue #27's targets ----------------------------------------------------------------------


def peer_of(label: str) -> str:
    """ "litserve-w2_ort1" -> "litserve" (the service and eager PyTorch are their own)."""
    return label.split("-", 1)[0] if "-" in label and label != TORCH_LABEL else label


def peers_best(rows: list[dict]) -> dict[str, dict[str, str]]:
    """Per peer (BentoML included) and case, the server label with the most requests/s at the
    highest concurrency measured."""
    top = max((r["concurrency"] for r in rows), default=0)
    best: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["concurrency"] != top or r["server"] in (SERVICE_LABEL, TORCH_LABEL):
            continue
        if sum(r["errors"].values()) > 0.01 * max(1, r["requests"]):
            continue  # a setting that fails requests is not a best
        mine = best.setdefault(peer_of(r["server"]), {})
        if r["case"] not in mine or r["rps"] > mine[r["case"]]["rps"]:
            mine[r["case"]] = r
    return {peer: {case: r["server"] for case, r in cases.items()} for peer, cases in best.items()}


def peer_targets(data: dict) -> list[dict]:
    """Issue #27: at concurrency 32 more requests/s than every peer's best on every request,
    with at most half its overhead; at concurrency 1 the lowest p99 of all and p99 <= 2 x p50;
    the least warm RSS."""
    rows = data["results"]
    top = max((r["concurrency"] for r in rows), default=0)
    by = {(r["server"], r["case"], r["concurrency"]): r for r in rows}
    out = []
    faster: list[tuple[str, str, float, float]] = []
    cheaper: list[tuple[str, str, float, float]] = []
    for _peer, cases in data.get("peers_best", {}).items():
        for case, label in cases.items():
            ours, theirs = by.get((SERVICE_LABEL, case, top)), by[(label, case, top)]
            if ours is None:
                continue
            faster.append((label, case, ours["rps"], theirs["rps"]))
            if "overhead_ms_per_request" in ours and "overhead_ms_per_request" in theirs:
                cheaper.append(
                    (
                        label,
                        case,
                        ours["overhead_ms_per_request"],
                        theirs["overhead_ms_per_request"],
                    )
                )
    if faster:
        lose = [f for f in faster if f[2] <= f[3]]
        out.append(
            {
                "target": f"more requests/s than every peer's best setting at concurrency {top}, "
                "every request",
                "measured": f"{len(faster) - len(lose)} of {len(faster)} hold"
                + (
                    "; not: "
                    + "; ".join(f"{c} vs {lbl}: {a:,.0f} vs {b:,.0f}" for lbl, c, a, b in lose)
                    if lose
                    else ""
                ),
                "holds": not lose,
                "detail": "best = the peer's setting with the most requests/s at this concurrency",
            }
        )
    if cheaper:
        lose = [c for c in cheaper if c[2] > 0.5 * c[3]]
        out.append(
            {
                "target": "at most half of every peer's overhead (server CPU per request less "
                "the in-process cost of the same work)",
                "measured": f"{len(cheaper) - len(lose)} of {len(cheaper)} hold"
                + (
                    "; not: "
                    + "; ".join(f"{c} vs {lbl}: {a:.2f} vs {b:.2f} ms" for lbl, c, a, b in lose)
                    if lose
                    else ""
                ),
                "holds": not lose,
                "detail": "in process: "
                + ", ".join(f"{k} {v:.2f} ms" for k, v in data.get("inprocess_ms", {}).items()),
            }
        )
    low = min((r["concurrency"] for r in rows), default=0)
    tails: list[tuple[str, dict, dict]] = []
    for case in dict.fromkeys(r["case"] for r in rows if r["server"] == SERVICE_LABEL):
        ours = by.get((SERVICE_LABEL, case, low))
        others = [
            r
            for r in rows
            if r["case"] == case and r["concurrency"] == low and r["server"] != SERVICE_LABEL
        ]
        if ours and others:
            best = min(others, key=lambda r: r["p99_ms"])
            tails.append((case, ours, best))
    if tails:
        higher = [t for t in tails if t[1]["p99_ms"] >= t[2]["p99_ms"]]
        out.append(
            {
                "target": f"the lowest p99 of every server at concurrency {low}",
                "measured": "; ".join(
                    f"{c}: {o['p99_ms']:.1f} vs {b['server']} {b['p99_ms']:.1f} ms"
                    for c, o, b in tails
                ),
                "holds": not higher,
                "detail": "against the lowest p99 of any peer setting on the same request",
            }
        )
        wide = [t for t in tails if t[1]["p99_ms"] > 2 * t[1]["p50_ms"]]
        out.append(
            {
                "target": f"the service's p99 at most twice its p50 at concurrency {low}",
                "measured": "; ".join(
                    f"{c}: p50 {o['p50_ms']:.2f}, p99 {o['p99_ms']:.2f} ms" for c, o, _ in tails
                ),
                "holds": not wide,
                "detail": "wrk's percentiles, same run",
            }
        )
    memory = data.get("memory", {})
    best_labels = {
        label for cases in data.get("peers_best", {}).values() for label in cases.values()
    }
    peers_memory = {label: m for label, m in memory.items() if label in best_labels}
    if SERVICE_LABEL in memory and peers_memory:
        ours = memory[SERVICE_LABEL]["rss_mb"]
        least = min((m["rss_mb"], label) for label, m in peers_memory.items())
        smallest = min(
            (m["rss_mb"], label) for label, m in memory.items() if label != SERVICE_LABEL
        )
        out.append(
            {
                "target": "the least warm RSS of all servers at their best settings",
                "measured": f"{ours:.0f} MB vs {least[1]} {least[0]:.0f} MB (the smallest of "
                f"any setting: {smallest[1]} {smallest[0]:.0f} MB)",
                "holds": ours < least[0],
                "detail": "all processes of each server, after its load; each peer's best "
                "settings (the most requests/s); every setting's RSS and PSS in the table",
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds per case")
    p.add_argument(
        "--bentoml",
        nargs="*",
        choices=list(BENTOML_CONFIGS),
        default=None,
        help=f"BentoML settings to run (default: {' '.join(DEFAULT_RUN)}; none: skip BentoML)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the eager-PyTorch peer")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument(
        "--peers",
        nargs="*",
        default=None,
        help=f"peers besides BentoML (default: all of {' '.join(PEERS)}; none: skip them)",
    )
    p.add_argument(
        "--configs",
        nargs="*",
        default=[],
        help="PEER=NAME[,NAME...]: settings to run for a peer (default: its candidates; "
        "bench/peers/servers.py)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="skip peers whose environment is not set up"
    )
    p.add_argument("--out", default="peers", help="results file name (bench/results/NAME.json)")
    p.add_argument("--out-dir", type=Path, default=None, help="results folder")
    args = p.parse_args(argv)
    configs = {}
    for item in args.configs:
        peer, _, names = item.partition("=")
        if peer not in PEERS or not names:
            p.error(f"--configs {item!r}: PEER=NAME[,NAME], PEER one of {', '.join(PEERS)}")
        unknown = set(names.split(",")) - set(PEERS[peer].configs)
        if unknown:
            p.error(f"--configs {item!r}: {peer} has no settings {sorted(unknown)}")
        configs[peer] = names.split(",")
    unknown = set(args.peers or ()) - set(PEERS)
    if unknown:
        p.error(f"--peers: unknown {sorted(unknown)}; the peers: {', '.join(PEERS)}")
    started = time.perf_counter()
    data = run(
        args.duration,
        args.warmup,
        args.bentoml,
        not args.no_torch,
        args.concurrency,
        install=not args.no_install,
        out_dir=args.out_dir,
        out_name=args.out,
        peers=args.peers,
        configs=configs,
    )
    print(f"peers: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    # A peer that cannot be set up or started, or fails requests, is reported, not fatal.
    return 1 if data["payloads_differ"] or data["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
