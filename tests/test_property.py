"""Property-based tests (hypothesis): whatever the bytes, images, JSON or query values, the
service never answers 5xx; every valid input gets an answer.

Deterministic (derandomize=True) and modest in examples, so `make test` stays fast.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

SETTINGS = settings(
    derandomize=True,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
SIGNATURES = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"II*\x00",
    b"MM\x00*",
]
# (format, modes it can write) for the allowed formats.
WRITERS = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "BMP": ["1", "L", "P", "RGB"],
    "WEBP": ["L", "RGB", "RGBA"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"],
}
FORMATS_AND_MODES = [(fmt, mode) for fmt, modes in WRITERS.items() for mode in modes]


def assert_not_5xx(response) -> None:
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/json"
        assert "detail" in response.json()


@pytest.mark.filterwarnings("ignore::UserWarning")
@SETTINGS
@given(prefix=st.sampled_from(SIGNATURES), tail=st.binary(max_size=4096))
def test_random_bytes_are_never_a_5xx(client, prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    r = client.post("/encode", content=data, headers={"content-type": "image/png"})
    assert_not_5xx(r)
    r = client.post("/reconstruct?format=json", files={"file": ("x", data)})
    assert_not_5xx(r)


@st.composite
def images(draw) -> tuple[bytes, str, str]:
    fmt, mode = draw(st.sampled_from(FORMATS_AND_MODES))
    width = draw(st.integers(1, 300))
    height = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["noise", "strokes", "flat"]))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
    else:
        gray = np.full((height, width), rng.integers(0, 256), dtype=np.uint8)
        if kind == "strokes":
            ink = 255 - gray[0, 0]
            for _ in range(3):
                y0, x0 = rng.integers(0, height), rng.integers(0, width)
                gray[y0 : y0 + max(1, height // 4), x0 : x0 + max(1, width // 10)] = ink
    image = Image.fromarray(gray)
    if mode == "I;16":
        wide = (gray.astype("<u2") * 257).tobytes()
        image = Image.frombytes("I;16", (width, height), wide)
    elif mode in ("LA", "RGBA"):
        image = image.convert(mode)
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        image.putalpha(alpha)
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), fmt, mode


@pytest.mark.filterwarnings("ignore::UserWarning")
@SETTINGS
@given(image=images())
def test_valid_images_always_get_an_answer(client, image) -> None:
    """Any allowed format, mode and size from 1x1 to 300x300: `preprocess=none` always
    encodes; `auto` encodes or says clearly that there is no digit; the codes are finite."""
    data, fmt, mode = image
    r = client.post("/encode?preprocess=none", files={"file": ("i", data)})
    assert r.status_code == 200, (fmt, mode, r.text)
    assert all(math.isfinite(v) for v in r.json()["mu"] + r.json()["log_var"])
    r = client.post("/encode", content=data, headers={"content-type": "application/octet-stream"})
    assert r.status_code in (200, 422), (fmt, mode, r.text)
    if r.status_code == 422:
        assert "no digit found" in r.json()["detail"]
    else:
        assert all(math.isfinite(v) for v in r.json()["mu"] + r.json()["log_var"])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.sampled_from(["z", "y", "model", ""]), children, max_size=3)
    ),
    max_leaves=30,
)


@SETTINGS
@given(body=JSON)
def test_random_json_for_decode_is_never_a_5xx(client, body) -> None:
    import json

    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity on the wire, as a client might
    r = client.post("/decode", content=raw, headers={"content-type": "application/json"})
    assert_not_5xx(r)
    r = client.post(
        "/decode",
        content=json.dumps({"z": body}, allow_nan=True),
        headers={"content-type": "application/json"},
    )
    assert_not_5xx(r)


LATENT = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(
    z=st.lists(st.lists(LATENT, min_size=2, max_size=2), min_size=1, max_size=8),
    scale=st.integers(1, 4),
)
def test_valid_latent_vectors_always_decode(client, z, scale) -> None:
    r = client.post(f"/decode?scale={scale}", json={"z": z})
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text[:300]


QUERY_VALUE = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(codec="ascii", exclude_characters="&#"), max_size=8),
)


@SETTINGS
@given(n=QUERY_VALUE, scale=QUERY_VALUE, temperature=QUERY_VALUE, seed=QUERY_VALUE)
def test_random_sample_queries_are_never_a_5xx(client, n, scale, temperature, seed) -> None:
    params = {"n": n, "scale": scale, "temperature": temperature, "seed": seed}
    assert_not_5xx(client.get("/sample", params=params))


# --- the analysis routes: /interpolate, /manifold, /score -------------------------------


@SETTINGS
@given(body=JSON, steps=QUERY_VALUE, method=st.sampled_from(["linear", "slerp", "x", ""]))
def test_random_json_for_interpolate_is_never_a_5xx(client, body, steps, method) -> None:
    import json

    for payload in (body, {"start": body, "end": [0.0, 0.0]}):
        r = client.post(
            "/interpolate",
            params={"steps": steps, "method": method},
            content=json.dumps(payload, allow_nan=True),
            headers={"content-type": "application/json"},
        )
        assert_not_5xx(r)


@SETTINGS
@given(
    start=st.lists(LATENT, min_size=2, max_size=2),
    end=st.lists(LATENT, min_size=2, max_size=2),
    steps=st.integers(2, 64),
    method=st.sampled_from(["linear", "slerp"]),
)
def test_valid_interpolations_always_answer(client, start, end, steps, method) -> None:
    """Any two finite vectors (zero, parallel, antiparallel, huge): a path of `steps` finite
    points from exactly start to exactly end."""
    r = client.post(
        "/interpolate",
        params={"steps": steps, "method": method, "format": "json"},
        json={"start": start, "end": end},
    )
    assert r.status_code == 200, r.text[:300]
    z = np.asarray(r.json()["z"])
    assert z.shape == (steps, 2) and np.isfinite(z).all()
    assert (
        z[0].tolist() == np.float32(start).tolist() and z[-1].tolist() == np.float32(end).tolist()
    )


@SETTINGS
@given(
    n=QUERY_VALUE,
    p_min=QUERY_VALUE,
    p_max=QUERY_VALUE,
    dims=QUERY_VALUE,
    base=QUERY_VALUE,
    scale=QUERY_VALUE,
)
def test_random_manifold_queries_are_never_a_5xx(client, n, p_min, p_max, dims, base, scale):
    params = {"n": n, "p_min": p_min, "p_max": p_max, "dims": dims, "base": base, "scale": scale}
    assert_not_5xx(client.get("/manifold", params=params))


@SETTINGS
@given(
    p_min=st.floats(1e-300, 0.5, allow_nan=False),
    width=st.floats(1e-12, 0.5, allow_nan=False),
    n=st.integers(2, 6),
)
def test_valid_manifold_ranges_always_answer(client, p_min, width, n) -> None:
    p_max = min(p_min + width, 1 - 1e-16)
    r = client.get("/manifold", params={"n": n, "p_min": p_min, "p_max": p_max})
    assert r.status_code in (200, 422), r.text[:300]  # 422 only if p_max rounds to p_min
    if r.status_code == 422:
        assert r.json()["detail"][0]["loc"] == ["query", "p_max"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(
    prefix=st.sampled_from(SIGNATURES),
    tail=st.binary(max_size=2048),
    k=QUERY_VALUE,
    seed=QUERY_VALUE,
    model=st.sampled_from(["vae", "ae"]),
)
def test_random_score_requests_are_never_a_5xx(client, prefix, tail, k, seed, model) -> None:
    data = prefix + tail
    params = {"k": k, "seed": seed, "model": model}
    assert_not_5xx(client.post("/score", params=params, files={"file": ("x", data)}))
    assert_not_5xx(
        client.post("/interpolate", params={"model": model}, files={"start": data, "end": data})
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(
    derandomize=True,
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(image=images(), k=st.integers(1, 64))
def test_valid_images_always_get_a_finite_score(client, image, k) -> None:
    data, fmt, mode = image
    r = client.post(
        "/score", params={"preprocess": "none", "k": k, "seed": 0}, files={"file": ("i", data)}
    )
    assert r.status_code == 200, (fmt, mode, r.text[:300])
    body = r.json()
    for key in ("mse", "log_px", "elbo", "kl", "reconstruction_log_likelihood", "bits_per_dim"):
        assert math.isfinite(body[key]), (key, body[key])
