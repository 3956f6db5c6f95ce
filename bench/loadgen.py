"""wrk as the load generator: closed loop, N connections, bounded in time (or in requests).

wrk is C with an epoll loop per thread: one wrk thread sustains tens of thousands of requests/s
while using a small share of a core, so it is not the bottleneck here (its CPU time is measured
and reported beside the server's: both share the machine's cores). Request bodies (multipart
uploads) are built here, written to a file, and sent by a tiny Lua script; the script's done()
prints the figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import CLK_TCK, machine_busy_seconds
from harness.processes import cpu_seconds

if TYPE_CHECKING:
    from resource import struct_rusage

LUA_COMMON = r"""
local function readfile(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*all")
  f:close()
  return data
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write("WRKJSON ", string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""

# One request, repeated (method, path, optional body file and content type).
LUA_SINGLE = r"""
wrk.method = "{method}"
{body}
{ctype}
{headers}
"""

# Several requests in rotation; the (single) wrk thread stops after `limit` responses in all.
LUA_MIX = r"""
local reqs = {{}}
{requests}
local i = 0
local seen = 0
local limit = {limit}
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
response = function(status, headers, body)
  seen = seen + 1
  if limit > 0 and seen == limit then
    -- wrk itself runs until -d: tell Python, which interrupts it (wrk then reports as usual)
    local f = io.open({marker}, "w")
    f:write("done")
    f:close()
    wrk.thread:stop()
  end
end
"""


@dataclass
class Request:
    path: str
    method: str = "GET"
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # any others (Inference-Header-...)


@dataclass
class LoadResult:
    name: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]
    server_cpu_s: float
    client_cpu_s: float
    server_cpu_share: float  # of all the machine's cores (1.0 = every core busy all the time)
    client_cpu_share: float
    server_cpu_ms_per_request: float
    other_cpu_share: float  # everything else on the machine meanwhile (should be ~0)
    extra: dict = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def multipart(files: list[tuple[str, bytes]], field_name: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one part per file in `field_name`."""
    boundary = "bench" + uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
                f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def _lua_body(req: Request, tmp: Path, key: str) -> tuple[str, str]:
    if req.body is None:
        return "nil", ""
    path = tmp / f"body_{key}.bin"
    path.write_bytes(req.body)
    return f"readfile({_lua_string(str(path))})", _lua_string(req.content_type or "")


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    base_url: str,
    requests: list[Request],
    concurrency: int,
    duration: float,
    server_pid: int | None = None,
    name: str = "",
    max_responses: int = 0,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> LoadResult:
    """Drive `requests` (one, or several in rotation) at `concurrency` connections for
    `duration` seconds, or until `max_responses` responses (then with one wrk thread)."""
    if not wrk_available():
        raise RuntimeError("wrk not found: apt-get install wrk (see BENCHMARKS.md)")
    threads = 1 if max_responses else max(1, min(threads, concurrency))
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmpdir:
        tmp = Path(tmpdir)
        if len(requests) == 1 and not max_responses:
            req = requests[0]
            body_expr, ctype = _lua_body(req, tmp, "0")
            script = LUA_SINGLE.format(
                method=req.method,
                body=f"wrk.body = {body_expr}" if req.body is not None else "",
                ctype=f'wrk.headers["Content-Type"] = {ctype}' if req.body is not None else "",
                headers="\n".join(
                    f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}"
                    for k, v in req.headers.items()
                ),
            )
            path = req.path
        else:
            lines = []
            for i, req in enumerate(requests):
                body_expr, ctype = _lua_body(req, tmp, str(i))
                fields = [f'["Content-Type"] = {ctype}'] if req.body is not None else []
                fields += [f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in req.headers.items()]
                headers = "{" + ", ".join(fields) + "}" if fields else "nil"
                lines.append(
                    f"reqs[{i + 1}] = wrk.format({_lua_string(req.method)}, "
                    f"{_lua_string(req.path)}, {headers}, {body_expr})"
                )
            script = LUA_MIX.format(
                requests="\n".join(lines),
                limit=max_responses,
                marker=_lua_string(str(tmp / "done")),
            )
            path = "/"
        script_path = tmp / "script.lua"
        script_path.write_text(LUA_COMMON + script)
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(script_path),
            base_url + path,
        ]
        server_before = cpu_seconds(server_pid) if server_pid else 0.0
        busy_before = machine_busy_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        waited: tuple[int, int, struct_rusage | None] = (0, 0, None)
        if max_responses:
            while not (tmp / "done").exists():
                waited = os.wait4(proc.pid, os.WNOHANG)
                if waited[0]:
                    break
                time.sleep(0.02)
            if not waited[0]:
                os.kill(proc.pid, signal.SIGINT)
        _, status, rusage = waited if waited[0] else os.wait4(proc.pid, 0)
        assert rusage is not None  # waited[0] set: wait4 reaped it, with its usage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = proc.stdout.read().decode() if proc.stdout else ""
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        server_after = cpu_seconds(server_pid) if server_pid else 0.0
        busy = machine_busy_seconds() - busy_before
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr or stdout}")
    line = next((x for x in stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {stdout}\n{stderr}")
    data = json.loads(line[len("WRKJSON ") :])
    seconds = data["duration_us"] / 1e6
    client_cpu = rusage.ru_utime + rusage.ru_stime
    server_cpu = server_after - server_before
    cores = os.cpu_count() or 1
    count = data["requests"]
    return LoadResult(
        name=name,
        concurrency=concurrency,
        requests=count,
        seconds=round(seconds, 3),
        rps=round(count / seconds, 1) if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mean_ms=round(data["mean_us"] / 1000, 3),
        errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout")},
        server_cpu_s=round(server_cpu, 2),
        client_cpu_s=round(client_cpu, 2),
        server_cpu_share=round(server_cpu / wall / cores, 3),
        client_cpu_share=round(client_cpu / wall / cores, 3),
        server_cpu_ms_per_request=round(1000 * server_cpu / count, 3) if count else 0.0,
        other_cpu_share=round(max(0.0, busy - server_cpu - client_cpu) / wall / cores, 3),
        extra={"wall_s": round(wall, 3), "clk_tck": CLK_TCK},
    )
