"""Fitted priors, served: GET /sample?prior=&label=&per_label=, /models' `priors`,
GET /models/{name}/prior, and start-up refusing a bad prior file.

One real server on a loopback port over tiny models that carry real prior files
(harness.models: two Gaussians per label, fitted with numpy on the tiny encoder's codes):
`vae` (digits, default prior normal), `ae` (label names, default prior fitted) and `bare` (an
AE without a prior, as folders from before priors are).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import (
    PRIOR_LABEL_NAMES,
    edit_metadata,
    free_port,
    make_client,
    stop,
    wait_ready,
)
from PIL import Image

from harness.models import export_tiny_model
from service.inference.format import ModelLoadError
from service.inference.prior import load_prior

START_TIMEOUT = 60.0
NAMES = PRIOR_LABEL_NAMES
CELL, GAP = 28, 2


@pytest.fixture(scope="module")
def prior_dir(prior_model_dir: Path) -> Path:
    return prior_model_dir


@pytest.fixture(scope="module")
def server(prior_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(base URL, "host:port") of one server over the tiny models with priors."""
    from test_service_server import start

    port = free_port()
    log_path = tmp_path_factory.mktemp("prior-server") / "server.log"
    with open(log_path, "wb") as log:
        process = start(prior_dir, port, log, VAE_MAX_BATCH="64")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path, START_TIMEOUT)
            yield base, f"127.0.0.1:{port}"
        finally:
            stop(process)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[0], timeout=30) as client:
        yield client


@pytest.fixture
def triton(server):
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra)")
    client = httpclient.InferenceServerClient(url=server[1], network_timeout=30.0)
    try:
        yield client
    finally:
        client.close()


def prior_of(prior_dir: Path, name: str):
    spec = json.loads((prior_dir / name / "metadata.json").read_text())
    return load_prior(prior_dir / name / "prior.npz", spec["z_dim"], spec["prior"]["sha256"])


def picture(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def query_error(response: httpx.Response, param: str) -> str:
    """The message of a 422 about query parameter `param`."""
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", param]
    return str(error["msg"])


# --- 200: sampling -------------------------------------------------------------------------


def test_normal_is_todays_bytes_and_says_so(http, prior_dir) -> None:
    """prior=normal (the vae's default) draws z ~ N(0, T^2 I) from the seed as before priors."""
    body = http.get("/sample?n=5&seed=42&temperature=0.5&format=json").json()
    expected = (np.random.default_rng(42).standard_normal((5, 2)) * 0.5).astype(np.float32)
    assert np.array_equal(np.asarray(body["z"], np.float32), expected)
    assert body["prior"] == "normal" and body["label"] is None and body["note"] is None
    png = http.get("/sample?n=5&seed=42&temperature=0.5")
    assert png.headers["x-prior"] == "normal"
    assert png.content == http.get("/sample?n=5&seed=42&temperature=0.5&prior=normal").content


def test_fitted_samples_the_mixture_seeded(http, prior_dir) -> None:
    a = http.get("/sample?n=6&seed=3&prior=fitted&format=json")
    b = http.get("/sample?n=6&seed=3&prior=fitted&format=json")
    assert a.status_code == 200 and a.content == b.content
    assert a.headers["x-prior"] == "fitted" and a.json()["prior"] == "fitted"
    expected = prior_of(prior_dir, "vae").sample(6, np.random.default_rng(3), 1.0)
    assert np.array_equal(np.asarray(a.json()["z"], np.float32), expected)
    png = [http.get("/sample?n=6&seed=3&prior=fitted").content for _ in range(2)]
    assert png[0] == png[1] != http.get("/sample?n=6&seed=4&prior=fitted").content


def test_temperature_scales_each_components_spread(http, prior_dir) -> None:
    cold = np.array(
        http.get("/sample?n=64&seed=1&prior=fitted&temperature=0&format=json").json()["z"]
    )
    means = prior_of(prior_dir, "vae").overall.means.astype(np.float32)
    # Temperature 0: every point is one of the components' means.
    assert all(np.isclose(means, z, atol=1e-6).all(axis=1).any() for z in cold)


def test_label_by_number_and_by_name(http, prior_dir) -> None:
    prior = prior_of(prior_dir, "ae")
    by_number = http.get("/sample?model=ae&label=4&n=8&seed=5&format=json")
    by_name = http.get("/sample?model=ae&label=four&n=8&seed=5&format=json")
    by_case = http.get("/sample?model=ae&label=FOUR&n=8&seed=5&format=json")
    assert by_number.content == by_name.content == by_case.content
    body = by_number.json()
    assert body["prior"] == "fitted" and body["label"] == 4 and body["note"] is None
    expected = prior.sample(8, np.random.default_rng(5), 1.0, label=4)
    assert np.array_equal(np.asarray(body["z"], np.float32), expected)
    # The vae has no label names: its labels are their numbers.
    assert http.get("/sample?label=7&n=2&seed=1").headers["x-prior"] == "fitted"


def test_default_prior_comes_from_the_metadata(http) -> None:
    """The ae's metadata says fitted: no note; asked for N(0, I), it says why not."""
    default = http.get("/sample?model=ae&n=3&seed=2&format=json").json()
    assert default["prior"] == "fitted" and default["note"] is None
    assert http.get("/sample?model=ae&n=3&seed=2").headers["x-prior"] == "fitted"
    normal = http.get("/sample?model=ae&n=3&seed=2&prior=normal")
    assert normal.headers["x-prior"] == "normal" and "prior=fitted" in normal.headers["x-note"]
    bare = http.get("/sample?model=bare&n=3&seed=2&format=json").json()
    assert bare["prior"] == "normal" and "no prior" in bare["note"]


def test_per_label_grid_has_a_row_per_label(http) -> None:
    r = http.get("/sample?model=ae&per_label=5&seed=9&scale=2")
    assert r.status_code == 200 and r.headers["x-prior"] == "fitted"
    assert r.headers["x-labels"] == "0,1,2,3,4,5,6,7,8,9"
    cell = CELL * 2
    assert picture(r.content).shape == (10 * cell + 9 * GAP, 5 * cell + 4 * GAP)
    assert r.content == http.get("/sample?model=ae&per_label=5&seed=9&scale=2").content


def test_per_label_json_rows_in_label_order(http, prior_dir) -> None:
    body = http.get("/sample?model=ae&per_label=3&seed=4&format=json").json()
    prior = prior_of(prior_dir, "ae")
    assert body["prior"] == "fitted"
    assert [row["label"] for row in body["labels"]] == list(range(10))
    assert [row["name"] for row in body["labels"]] == NAMES
    assert [row["share"] for row in body["labels"]] == pytest.approx(prior.shares)
    rng = np.random.default_rng(4)
    for row in body["labels"]:
        assert len(row["images"]) == 3 and len(row["z"]) == 3
        expected = prior.sample(3, rng, 1.0, label=row["label"])
        assert np.array_equal(np.asarray(row["z"], np.float32), expected)
        assert picture(base64.b64decode(row["images"][0])).shape == (CELL, CELL)


# --- 422: what the model cannot sample -----------------------------------------------------


def test_fitted_without_a_prior_is_422(http) -> None:
    message = query_error(http.get("/sample?model=bare&prior=fitted"), "prior")
    assert "has no fitted prior" in message and "normal" in message


def test_label_without_per_label_fits_is_422_saying_so(http) -> None:
    message = query_error(http.get("/sample?model=bare&label=3"), "label")
    assert "'bare' has no fitted prior, so no labels" in message
    message = query_error(http.get("/sample?model=bare&per_label=2"), "per_label")
    assert "no labels" in message


def test_unknown_label_is_422_naming_the_known_ones(http) -> None:
    message = query_error(http.get("/sample?model=ae&label=4x"), "label")
    assert "0 (zero), 1 (one)" in message and "9 (nine)" in message
    message = query_error(http.get("/sample?label=10"), "label")
    assert "known labels of model 'vae': 0, 1, 2" in message


def test_conflicting_parameters_are_422(http) -> None:
    assert "prior=fitted" in query_error(http.get("/sample?label=2&prior=normal"), "label")
    assert "leave n out" in query_error(http.get("/sample?per_label=2&n=3"), "n")
    assert "leave label out" in query_error(http.get("/sample?per_label=2&label=1"), "label")
    assert "prior=fitted" in query_error(http.get("/sample?per_label=2&prior=normal"), "prior")
    assert http.get("/sample?per_label=33").status_code == 422  # the declared limit
    assert http.get("/sample?prior=uniform").status_code == 422
    # 10 labels x 7 > VAE_MAX_BATCH (64 here)
    assert "at most 64 images" in query_error(http.get("/sample?per_label=7"), "per_label")


# --- /models and /models/{name}/prior ------------------------------------------------------


def test_models_list_each_models_priors(http, prior_dir) -> None:
    models = {m["name"]: m for m in http.get("/models").json()["models"]}
    assert models["bare"]["priors"] == {
        "available": ["normal"],
        "default": "normal",
        "per_label": False,
        "labels": [],
    }
    ae = models["ae"]["priors"]
    assert ae["available"] == ["normal", "fitted"] and ae["default"] == "fitted"
    assert ae["per_label"] and [x["name"] for x in ae["labels"]] == NAMES
    assert sum(x["share"] for x in ae["labels"]) == pytest.approx(1.0)
    vae = http.get("/models/vae").json()
    assert vae["priors"]["default"] == "normal" and vae["priors"]["labels"][3]["name"] == "3"
    on_disk = json.loads((prior_dir / "vae" / "metadata.json").read_text())
    assert {k: v for k, v in vae.items() if k != "priors"} == on_disk


def test_prior_route_returns_the_mixture(http, prior_dir) -> None:
    body = http.get("/models/ae/prior").json()
    prior = prior_of(prior_dir, "ae")
    assert body["z_dim"] == 2 and body["fitted_on"] == "z" and body["default"] == "fitted"
    weights = [c["weight"] for c in body["components"]]
    assert weights == pytest.approx(prior.overall.weights.tolist())
    first = body["components"][0]
    assert first["mean"] == pytest.approx(prior.overall.means[0].tolist())
    assert np.allclose(first["covariance"], prior.overall.covariances[0])
    assert [x["label"] for x in body["labels"]] == list(range(10))
    four = body["labels"][4]
    assert four["name"] == "four" and len(four["components"]) == len(prior.mixture(4).weights)


def test_prior_route_is_404_without_a_prior(http) -> None:
    r = http.get("/models/bare/prior")
    assert r.status_code == 404 and "has no fitted prior" in r.json()["detail"]
    assert http.get("/models/nope/prior").status_code == 404


def test_docs_show_the_parameters_and_limits(http) -> None:
    params = {
        p["name"]: p
        for p in http.get("/openapi.json").json()["paths"]["/sample"]["get"]["parameters"]
    }
    assert {"prior", "label", "per_label"} <= set(params)
    per_label = params["per_label"]["schema"]["anyOf"][0]
    assert per_label["minimum"] == 1 and per_label["maximum"] == 32


# --- start-up: a bad prior file stops the service naming it --------------------------------


@pytest.fixture
def broken(prior_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(prior_dir, copy)
    return copy


def start_fails(model_dir: Path, *fragments: str) -> None:
    with pytest.raises(ModelLoadError) as info, make_client(model_dir):
        pass
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_prior_sha256_mismatch_fails_start_up(broken) -> None:
    path = broken / "ae" / "prior.npz"
    path.write_bytes(path.read_bytes() + b"\0")
    start_fails(broken, "ae/prior.npz", "sha256")


def test_prior_of_the_wrong_z_dim_fails_start_up(broken, prior_dir) -> None:
    """A z_dim-5 model's prior (sha256 and all) in a z_dim-2 folder."""
    other = export_tiny_model(broken / "_five", "vae", z_dim=5, prior=True)
    shutil.copy(broken / "_five" / "prior.npz", broken / "vae" / "prior.npz")
    edit_metadata(broken / "vae", prior=other["prior"])
    start_fails(broken, "vae/prior.npz", "not a valid prior", "(K, 2)")


def test_missing_prior_and_metadata_disagreeing_fail_start_up(broken) -> None:
    (broken / "ae" / "prior.npz").rename(broken / "ae" / "elsewhere.npz")
    start_fails(broken, "ae/prior.npz", "cannot read")
    (broken / "ae" / "elsewhere.npz").rename(broken / "ae" / "prior.npz")
    spec = json.loads((broken / "vae" / "metadata.json").read_text())["prior"]
    edit_metadata(broken / "vae", prior={**spec, "components": 3})
    start_fails(broken, "vae/prior.npz", "prior.components is 3")


def test_cli_start_up_names_the_bad_prior_file(broken, tmp_path) -> None:
    from test_service_server import failed_start

    path = broken / "vae" / "prior.npz"
    path.write_bytes(b"not an npz")
    output = failed_start(broken, tmp_path / "server.log")
    assert "vae/prior.npz" in output and "sha256" in output


# --- the Open Inference Protocol's sampler, through tritonclient ---------------------------


def settings(**values: object) -> list:
    """The sampler's inputs as tritonclient sends them: one element each."""
    from tritonclient import http as httpclient

    types = {"count": "INT64", "seed": "INT64", "label": "INT64", "temperature": "FP32"}
    inputs = []
    for name, value in values.items():
        if name == "prior":
            tensor = httpclient.InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([str(value).encode()], dtype=np.object_))
        else:
            tensor = httpclient.InferInput(name, [1], types[name])
            dtype = np.float32 if types[name] == "FP32" else np.int64
            tensor.set_data_from_numpy(np.array([value], dtype=dtype))
        inputs.append(tensor)
    return inputs


def test_sampler_metadata(triton, prior_dir) -> None:
    meta = triton.get_model_metadata("ae-sampler")
    assert meta["platform"] == "sampler" and triton.is_model_ready("bare-sampler")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("count", "INT64", [1]),
        ("seed", "INT64", [1]),
        ("temperature", "FP32", [1]),
        ("prior", "BYTES", [1]),
        ("label", "INT64", [1]),
    ]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [
        ("image", [-1, 1, 28, 28]),
        ("z", [-1, 2]),
    ]


def test_sampler_draws_as_get_sample(triton, http, prior_dir) -> None:
    """The same z as GET /sample for the same settings and seed, and the decoder's images."""
    import onnxruntime as ort

    result = triton.infer("vae-sampler", settings(count=6, seed=11, label=3, temperature=0.5))
    assert result.get_response()["parameters"] == {"prior": "fitted", "label": 3}
    rest = http.get("/sample?n=6&seed=11&label=3&temperature=0.5&format=json").json()
    z = result.as_numpy("z")
    assert z.shape == (6, 2) and np.array_equal(z, np.asarray(rest["z"], np.float32))
    decoder = ort.InferenceSession(str(prior_dir / "vae" / "decoder.onnx"))
    assert np.array_equal(result.as_numpy("image"), decoder.run(None, {"z": z})[0])
    normal = triton.infer("vae-sampler", settings(count=2, seed=1, prior="normal"))
    expected = np.random.default_rng(1).standard_normal((2, 2)).astype(np.float32)
    assert np.array_equal(normal.as_numpy("z"), expected)


def test_sampler_default_prior_and_no_seed(triton) -> None:
    ae = triton.infer("ae-sampler", settings(count=3))
    assert ae.get_response()["parameters"] == {"prior": "fitted"}
    bare = triton.infer("bare-sampler", settings(count=3))
    assert bare.get_response()["parameters"] == {"prior": "normal"}
    assert not np.array_equal(
        bare.as_numpy("z"), triton.infer("bare-sampler", settings(count=3)).as_numpy("z")
    )


@pytest.mark.parametrize(
    ("model", "values", "words"),
    [
        ("bare-sampler", {"count": 2, "label": 1}, "'bare' has no fitted prior, so no labels"),
        ("bare-sampler", {"count": 2, "prior": "fitted"}, "has no fitted prior"),
        ("ae-sampler", {"count": 2, "label": 12}, "0 (zero), 1 (one)"),
        ("ae-sampler", {"count": 2, "label": 1, "prior": "normal"}, "prior=fitted"),
        ("ae-sampler", {"count": 0}, "'count' must be 1..64"),
        ("ae-sampler", {"count": 65}, "'count' must be 1..64"),
        ("ae-sampler", {"count": 1, "seed": -1}, "'seed' must be 0 or more"),
        ("ae-sampler", {"count": 1, "temperature": 11}, "within +-10"),
        ("ae-sampler", {"count": 1, "prior": "uniform"}, "must be one of ['normal', 'fitted']"),
        ("ae-sampler", {"seed": 1}, "needs input(s) ['count']"),
    ],
)
def test_sampler_refusals_are_400(triton, model, values, words) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        triton.infer(model, settings(**values))
    assert info.value.status() == "400" and words in info.value.message(), info.value.message()


def test_sampler_json_settings_by_hand(http) -> None:
    """Plain JSON: [1, 1] shapes are one element too; an INT64 setting must be an integer."""
    body = {
        "inputs": [
            {"name": "count", "datatype": "INT64", "shape": [1, 1], "data": [[2]]},
            {"name": "prior", "datatype": "BYTES", "shape": [1], "data": ["fitted"]},
        ],
        "outputs": [{"name": "z"}],
    }
    r = http.post("/v2/models/vae-sampler/infer", json=body)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 2]
    body["inputs"][0]["data"] = [[2.5]]
    r = http.post("/v2/models/vae-sampler/infer", json=body)
    assert r.status_code == 400 and "integers" in r.json()["error"]
    body["inputs"][0].update(shape=[2], data=[1, 2])
    r = http.post("/v2/models/vae-sampler/infer", json=body)
    assert r.status_code == 400 and "one value" in r.json()["error"]


def test_rgb_model_with_a_prior_and_names_needing_escapes(tmp_path) -> None:
    """Any shape: a 3x16x16 model of z_dim 5; a label name with a slash and a space."""
    names = ["T-shirt/top", "Ankle boot", *[f"class {i}" for i in range(2, 10)]]
    export_tiny_model(tmp_path / "rgb", "vae", z_dim=5, shape=(3, 16, 16), prior=True,
                      prior_default="fitted", label_names=names)  # fmt: skip
    with make_client(tmp_path, default_model="rgb") as client:
        grid = client.get("/sample", params={"per_label": 3, "seed": 1})
        assert grid.status_code == 200
        assert picture(grid.content).shape == (10 * 16 + 9 * GAP, 3 * 16 + 2 * GAP, 3)
        boot = client.get("/sample", params={"label": "ankle boot", "n": 2, "format": "json"})
        assert boot.json()["label"] == 1 and len(boot.json()["z"][0]) == 5
        shirt = client.get("/sample", params={"label": "T-shirt/top", "n": 2, "seed": 3})
        assert shirt.headers["x-prior"] == "fitted"
        assert shirt.content == client.get("/sample?label=0&n=2&seed=3").content
        body = client.get("/models/rgb/prior").json()
        assert len(body["components"][0]["covariance"]) == 5
        assert body["labels"][0]["name"] == "T-shirt/top"
