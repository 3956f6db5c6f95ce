"""Optional API keys (VAE_API_KEYS, VAE_API_KEYS_FILE; service/api/auth.py): every status with
and without keys, the key file, the constant-time comparison, no key in any log, OpenAPI."""

from __future__ import annotations

import hmac
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import free_port, make_client, stop, wait_ready

from service.api import auth
from service.process import api_keys
from service.process.api_keys import ApiKeyError, load_api_keys
from service.process.settings import Settings

REPO = Path(__file__).resolve().parent.parent
KEYS = ["k3y-one-8d2f0c1e9b", "k3y-two-77aa31c5de", "k3y-three-0f0f0f0f0"]
WRONG = "k3y-wrong-1234567890"
PROTECTED = [
    ("GET", "/models", {}),
    ("GET", "/models/vae", {}),
    ("GET", "/models/vae/latent-points", {}),
    ("GET", "/sample?n=2&seed=1", {}),
    ("POST", "/decode", {"json": {"z": [[0.0, 0.0]]}}),
    ("POST", "/encode", "upload"),
    ("POST", "/encode/batch", "batch"),
    ("POST", "/reconstruct", "upload"),
]
OPEN = ["/", "/static/app.js", "/docs", "/openapi.json"]


def kwargs(spec, digit_png: bytes) -> dict:
    if spec == "upload":
        return {"files": {"file": ("d.png", digit_png, "image/png")}}
    if spec == "batch":
        return {"files": [("files", ("d.png", digit_png, "image/png"))]}
    return spec


@pytest.fixture(scope="module")
def keyed(model_dir):
    # No lockout here: these tests send many wrong keys on purpose (test_lifecycle.py tests it).
    with make_client(model_dir, api_keys=KEYS, auth_max_failures=0) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("method", "path", "spec"), PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_every_model_route_needs_a_key(keyed, client, digit_png, method, path, spec) -> None:
    send = kwargs(spec, digit_png)
    # Keys off (the default): as before.
    assert client.request(method, path, **send).status_code == 200
    for headers in ({}, bearer(WRONG), {"X-API-Key": WRONG}, {"Authorization": f"Basic {KEYS[0]}"}):
        r = keyed.request(method, path, headers=headers, **send)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert isinstance(r.json()["detail"], str)
        assert not any(key in r.text for key in KEYS)
    for headers in (
        bearer(KEYS[0]),
        bearer(KEYS[2]),
        {"Authorization": f"bearer {KEYS[1]}"},
        {"X-API-Key": KEYS[1]},
        {"x-api-key": KEYS[2]},
    ):
        r = keyed.request(method, path, headers=headers, **send)
        assert r.status_code == 200, (headers, r.text)


def test_missing_and_wrong_keys_say_so_and_nothing_more(keyed) -> None:
    missing = keyed.get("/models").json()["detail"]
    wrong = keyed.get("/models", headers=bearer(WRONG)).json()["detail"]
    assert "Authorization: Bearer" in missing and "X-API-Key" in missing
    assert wrong == "the API key is not valid"
    # Unknown paths too (default deny): no map of the routes without a key.
    assert keyed.get("/no-such-route").status_code == 401
    assert keyed.get("/no-such-route", headers=bearer(KEYS[0])).status_code == 404


def test_a_key_in_the_query_string_is_not_accepted(keyed) -> None:
    for query in (f"api_key={KEYS[0]}", f"key={KEYS[0]}", f"token={KEYS[0]}"):
        assert keyed.get(f"/models?{query}").status_code == 401


def test_page_docs_probes_and_metrics_are_open_by_default(keyed) -> None:
    for path in [*OPEN, "/healthz", "/readyz", "/metrics"]:
        assert keyed.get(path).status_code == 200, path
    # The Open Inference Protocol's probes too; its models and inference need a key.
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert keyed.get(path).status_code != 401, path
    for path in ("/v2", "/v2/models/vae-decoder"):
        assert keyed.get(path).status_code == 401, path
        assert keyed.get(path, headers=bearer(KEYS[0])).status_code != 401, path


@pytest.mark.parametrize(
    ("setting", "paths"), [("auth_probes", ["/healthz", "/readyz"]), ("auth_metrics", ["/metrics"])]
)
def test_probes_and_metrics_can_need_a_key(model_dir, setting, paths) -> None:
    with make_client(model_dir, api_keys=KEYS, **{setting: True}) as c:
        for path in paths:
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert c.get(path, headers={"X-API-Key": KEYS[0]}).status_code == 200
        others = {"/healthz", "/readyz", "/metrics"} - set(paths)
        for path in others:
            assert c.get(path).status_code == 200, path
        for path in OPEN:
            assert c.get(path).status_code == 200, path


def test_a_refused_upload_closes_the_connection(keyed, digit_png) -> None:
    r = keyed.post("/encode", content=digit_png, headers={"content-type": "image/png"})
    assert r.status_code == 401 and r.headers["connection"] == "close"
    assert "connection" not in keyed.get("/models").headers


def test_refusals_have_a_request_id_and_are_counted(keyed) -> None:
    r = keyed.get("/models/vae", headers={"X-Request-ID": "auth-test-1"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "auth-test-1"
    text = keyed.get("/metrics").text
    assert 'route="/models/{name}",status="401"' in text
    assert not any(key in text for key in KEYS)


# --- where the keys come from ------------------------------------------------------------


def write_keys(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_key_file_lines_comments_and_reload_on_restart(model_dir, tmp_path) -> None:
    path = write_keys(tmp_path / "keys", "# the service's keys", "", f"  {KEYS[0]}  ", "# old one")
    with make_client(model_dir, api_keys_file=path) as c:
        assert c.get("/models", headers=bearer(KEYS[0])).status_code == 200
        assert c.get("/models", headers=bearer(KEYS[1])).status_code == 401
        assert c.get("/models", headers=bearer("# old one")).status_code == 401
        # Rotated: the running app keeps what it read at start-up...
        write_keys(path, KEYS[1], f"{KEYS[2]}\r")
        assert c.get("/models", headers=bearer(KEYS[0])).status_code == 200
    # ...and the next start (a new app) reads the file again.
    with make_client(model_dir, api_keys_file=path) as c:
        assert c.get("/models", headers=bearer(KEYS[0])).status_code == 401
        assert c.get("/models", headers=bearer(KEYS[1])).status_code == 200
        assert c.get("/models", headers={"X-API-Key": KEYS[2]}).status_code == 200


def test_keys_from_the_environment_and_a_file_add_up(model_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VAE_API_KEYS", f" {KEYS[0]} ,, {KEYS[1]}")
    monkeypatch.setenv("VAE_API_KEYS_FILE", str(write_keys(tmp_path / "keys", KEYS[2])))
    settings = Settings(model_dir=model_dir)
    assert len(load_api_keys(settings) or ()) == 3
    assert not any(key in repr(settings) or key in str(settings) for key in KEYS)
    monkeypatch.delenv("VAE_API_KEYS_FILE")
    monkeypatch.setenv("VAE_API_KEYS", "")
    assert load_api_keys(Settings(model_dir=model_dir)) is None  # empty: auth off


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it"),
        ("# nothing but comments\n\n", "holds no key"),
        ("good-key-1\nbad key with spaces\n", "key 2 has characters"),
        (b"\xff\xfe\x00k", "not UTF-8"),
    ],
)
def test_an_unusable_key_file_stops_start_up(model_dir, tmp_path, content, expected) -> None:
    path = tmp_path / "keys"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    settings = Settings(model_dir=model_dir, api_keys_file=path)
    with pytest.raises(ApiKeyError, match=expected) as info:
        load_api_keys(settings)
    assert "bad key" not in str(info.value) and "good-key" not in str(info.value)
    # `python -m service` says so plainly, before starting anything.
    result = subprocess.run(
        [sys.executable, "-m", "service", "--port", "0"],
        cwd=REPO,
        env={**os.environ, "VAE_MODEL_DIR": str(model_dir), "VAE_API_KEYS_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


# --- constant time -----------------------------------------------------------------------


def test_every_key_is_compared_in_constant_time(keyed, monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", recording)
    for key in (KEYS[0], KEYS[2], WRONG, "x", "y" * 5000):
        calls.clear()
        keyed.get("/models", headers=bearer(key))
        # Every key, whether the first one matched or none did; digests of equal length.
        assert calls == [(32, 32)] * len(KEYS), key
    calls.clear()
    keyed.get("/models", headers={**bearer(WRONG), "X-API-Key": KEYS[1]})
    assert len(calls) == 2 * len(KEYS)
    calls.clear()
    keyed.get("/healthz")
    assert calls == []  # open paths compare nothing


# --- logs --------------------------------------------------------------------------------


def test_no_key_in_any_log_line(keyed, caplog) -> None:
    with caplog.at_level(logging.DEBUG):
        keyed.get("/models", headers=bearer(KEYS[0]))
        keyed.get("/models", headers={"X-API-Key": KEYS[1]})
        keyed.get("/models", headers=bearer(WRONG))
        keyed.get(f"/models?api_key={KEYS[2]}&n=1")
        keyed.get(f"/models?token={WRONG}")
    access = [r.getMessage() for r in caplog.records if r.name == "service.access"]
    assert len(access) == 5
    lines = [json.loads(line) for line in access]
    assert [line["status"] for line in lines] == [200, 200, 401, 401, 401]
    assert lines[3]["query"] == "api_key=[redacted]&n=1"
    # The request's path and query, never its headers.
    assert {"path", "query"} <= set(lines[0])
    assert not {"headers", "authorization", "x-api-key"} & {k.lower() for k in lines[0]}
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    for record in server_side:
        text = record.getMessage() + str(record.args or "")
        assert not any(key in text for key in [*KEYS, WRONG]), text


def test_no_key_in_a_real_servers_output(model_dir, tmp_path) -> None:
    """`python -m service` at debug level with the access log on: requests with good, wrong
    and query-string keys leave no key anywhere in its output."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={
                **os.environ,
                "VAE_MODEL_DIR": str(model_dir),
                "VAE_WORKERS": "1",
                "VAE_API_KEYS": ",".join(KEYS),
                "VAE_LOG_LEVEL": "debug",
                "VAE_ACCESS_LOG": "true",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path, 60)
            with httpx.Client(base_url=base, timeout=10, trust_env=False) as c:
                assert c.get("/models", headers=bearer(KEYS[0])).status_code == 200
                assert c.get("/models", headers={"X-API-Key": KEYS[1]}).status_code == 200
                assert c.get("/models", headers=bearer(WRONG)).status_code == 401
                assert c.get(f"/sample?api_key={KEYS[2]}").status_code == 401
                assert c.get("/nope", headers={"X-API-Key": WRONG}).status_code == 401
                metrics = c.get("/metrics").text
        finally:
            stop(process)
    output = log_path.read_text()
    assert output.count('"status":401') == 3, output[-3000:]
    for key in [*KEYS, WRONG]:
        assert key not in output and key not in metrics


# --- OpenAPI, CORS ----------------------------------------------------------------------


def test_openapi_declares_both_schemes_when_keys_are_on(keyed, client) -> None:
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes[auth.BEARER_SCHEME] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key as `Authorization: Bearer <key>`",
    }
    assert schemes[auth.HEADER_SCHEME]["in"] == "header"
    assert schemes[auth.HEADER_SCHEME]["name"] == "X-API-Key"
    either = [{auth.BEARER_SCHEME: []}, {auth.HEADER_SCHEME: []}]
    paths = schema["paths"]
    assert paths["/encode"]["post"]["security"] == either
    assert "401" in paths["/sample"]["get"]["responses"]
    assert "security" not in paths["/healthz"]["get"]
    assert "security" not in paths["/metrics"]["get"]
    assert "Authorize" in keyed.get("/docs").text or "swagger" in keyed.get("/docs").text
    # Keys off: nothing of the kind.
    plain = client.get("/openapi.json").json()
    assert "securitySchemes" not in plain.get("components", {})
    assert "security" not in plain["paths"]["/encode"]["post"]


def test_cors_preflights_need_no_key_and_401s_carry_cors_headers(model_dir) -> None:
    origin = "http://localhost:3000"
    with make_client(model_dir, api_keys=KEYS, cors_origins=[origin]) as c:
        preflight = c.options(
            "/encode",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,x-api-key",
            },
        )
        assert preflight.status_code == 200
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "x-api-key" in allowed
        refused = c.get("/models", headers={"Origin": origin})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == origin
        assert c.get("/models", headers={"Origin": origin, **bearer(KEYS[0])}).status_code == 200
