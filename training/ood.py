"""Out-of-distribution sets and the likelihood and typicality figures `vae-evaluate` reports.

    sets = build_sets(1000, seed=0)          # {name: OodSet}: 28x28 arrays in [0, 1]
    report = likelihood_report(model_dir, test, sets)
    print(markdown_table(report))

The sets, all built here from what this machine has (nothing is downloaded):
- letters: A-Z and a-z rendered light on dark from the system's TrueType fonts (PIL ImageFont;
  /usr/share/fonts, Debian `fonts-dejavu-core`), random font, size, offset and small rotation;
- strokes: random pen strokes (1-4 polylines) and filled blobs (ellipses, polygons), softened;
- noise: uniform noise, every pixel U(0, 1);
- photos: 28x28 cuts (random position and size, grayscale) of the photographs found on disk
  (the sample images matplotlib and scikit-learn ship, and /usr/share/backgrounds); with none,
  synthetic photo-like textures instead, and the report says so;
- fashion: Fashion-MNIST test images from Debian's `dataset-fashion-mnist` package (IDX files
  under /usr/share/datasets); skipped, with a message, when it is not installed. The project
  never needs it.

Each set is scored twice: as the raw 28x28 arrays, and after the upload preparation the
service gives every upload (service/imaging/prepare.py: invert light backgrounds, crop, fit
20x20, centre by mass), which can make a non-digit look more like a digit. The MNIST test
digits are scored both ways too, as the in-distribution side of each AUROC.

All of that is for digit models (1x28x28, MNIST or the default subset). A model of other
images gets the mean log p(x) and the typical share of its own test images only: the sets and
the digit preparation are skipped, and the report says so.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from service.imaging.prepare import preprocess_bytes
from service.imaging.uploads import ImageInputError
from service.inference import scoring

SIZE = 28
FONT_DIRS = ("/usr/share/fonts",)
FASHION_GLOBS = (
    "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte*",
    "/usr/share/datasets/**/fashion*/t10k-images-idx3-ubyte*",
)
PHOTO_DIRS = ("/usr/share/backgrounds", "/usr/share/wallpapers")
PHOTO_MIN_SIDE = 200
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LOG_PX_K = 1000
OOD_COUNT = 1000
LOG_PX_IMAGES = 1000
OFFLINE_CHUNK = 1000


@dataclass
class OodSet:
    name: str
    images: np.ndarray  # (N, 28, 28) float32 in [0, 1]
    description: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the sets


def font_files() -> list[Path]:
    found: list[Path] = []
    for root in FONT_DIRS:
        found += [Path(p) for p in glob.glob(f"{root}/**/*.ttf", recursive=True)]
    return sorted(found)


@functools.lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def letters(n: int, rng: np.random.Generator) -> OodSet:
    fonts = font_files()
    notes = []
    if fonts:
        where = sorted({p.parent.name for p in fonts})
        description = f"letters A-Z, a-z in {len(fonts)} TrueType fonts ({', '.join(where)})"
    else:
        notes.append(
            "no TrueType font under /usr/share/fonts (Debian: apt-get install "
            "fonts-dejavu-core): Pillow's built-in font instead"
        )
        description = "letters A-Z, a-z in Pillow's built-in font"
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        char = LETTERS[rng.integers(len(LETTERS))]
        size = int(rng.integers(14, 27))
        font = (
            _font(str(fonts[rng.integers(len(fonts))]), size)
            if fonts
            else ImageFont.load_default(size)
        )
        canvas = Image.new("L", (2 * SIZE, 2 * SIZE), 0)
        draw = ImageDraw.Draw(canvas)
        centre = SIZE + rng.uniform(-4, 4, 2)
        draw.text(tuple(centre), char, fill=int(rng.integers(180, 256)), font=font, anchor="mm")
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR)
        crop = canvas.crop((SIZE // 2, SIZE // 2, SIZE // 2 + SIZE, SIZE // 2 + SIZE))
        out[i] = np.asarray(crop, np.float32) / 255.0
    return OodSet("letters", out, description, notes)


def strokes(n: int, rng: np.random.Generator) -> OodSet:
    out = np.zeros((n, SIZE, SIZE), np.float32)
    scale = 4  # drawn at 112x112, then reduced: antialiased like MNIST's strokes
    big = SIZE * scale
    for i in range(n):
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        if i % 2 == 0:  # strokes
            for _ in range(int(rng.integers(1, 5))):
                points = [tuple(rng.uniform(0.1, 0.9, 2) * big) for _ in range(rng.integers(2, 5))]
                width = int(rng.integers(1, 5) * scale)
                draw.line(points, fill=int(rng.integers(150, 256)), width=width, joint="curve")
        else:  # blobs
            for _ in range(int(rng.integers(1, 4))):
                if rng.random() < 0.5:
                    x0, y0 = rng.uniform(0.05, 0.7, 2) * big
                    w, h = rng.uniform(0.1, 0.45, 2) * big
                    draw.ellipse((x0, y0, x0 + w, y0 + h), fill=int(rng.integers(150, 256)))
                else:
                    centre = rng.uniform(0.25, 0.75, 2) * big
                    corners = int(rng.integers(3, 8))
                    angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
                    radii = rng.uniform(0.08, 0.35, corners) * big
                    polygon = [
                        (centre[0] + r * math.cos(a), centre[1] + r * math.sin(a))
                        for a, r in zip(angles, radii, strict=True)
                    ]
                    draw.polygon(polygon, fill=int(rng.integers(150, 256)))
        small = canvas.filter(ImageFilter.GaussianBlur(scale * 0.5)).resize(
            (SIZE, SIZE), Image.Resampling.BOX
        )
        out[i] = np.asarray(small, np.float32) / 255.0
    return OodSet("strokes", out, "random pen strokes (1-4 polylines) and filled blobs")


def noise(n: int, rng: np.random.Generator) -> OodSet:
    return OodSet(
        "noise", rng.random((n, SIZE, SIZE), dtype=np.float32), "uniform noise, U(0, 1) pixels"
    )


def photo_files() -> list[Path]:
    """Photographs on this machine: the sample images of matplotlib and scikit-learn, and
    desktop backgrounds."""
    folders = [Path(p) for p in PHOTO_DIRS]
    for package, sub in (("matplotlib", "mpl-data/sample_data"), ("sklearn", "datasets/images")):
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            folders += [Path(p) / sub for p in spec.submodule_search_locations]
    found: list[Path] = []
    for folder in folders:
        for pattern in ("*.jpg", "*.jpeg", "**/*.jpg", "**/*.jpeg"):
            found += folder.glob(pattern)
    photos = []
    for path in sorted(set(found)):
        try:
            with Image.open(path) as image:
                if min(image.size) >= PHOTO_MIN_SIDE:
                    photos.append(path)
        except OSError:
            continue
    return photos


def _textures(n: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic 'photo-like' textures: 1/f noise (octaves of smoothed noise) over a random
    gradient, with an occasional edge."""
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        image = np.zeros((SIZE, SIZE))
        for octave in range(1, 6):
            cells = 2**octave
            coarse = rng.standard_normal((cells, cells))
            layer = Image.fromarray(coarse.astype(np.float32)).resize(
                (SIZE, SIZE), Image.Resampling.BICUBIC
            )
            image += np.asarray(layer) / octave
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        angle = rng.uniform(0, 2 * math.pi)
        image += rng.uniform(0, 2) * (math.cos(angle) * xx + math.sin(angle) * yy)
        if rng.random() < 0.5:
            image += rng.uniform(0.5, 1.5) * (xx * math.cos(angle) - yy * math.sin(angle) > 0.3)
        image = (image - image.min()) / max(image.max() - image.min(), 1e-6)
        out[i] = image
    return out


def photos(n: int, rng: np.random.Generator) -> OodSet:
    files = photo_files()
    if not files:
        return OodSet(
            "photos",
            _textures(n, rng),
            "synthetic photo-like textures (1/f noise, gradients, edges)",
            ["no photographs found on disk: the 'photos' set is synthetic textures, not photos"],
        )
    grays = [np.asarray(Image.open(p).convert("L"), np.float32) / 255.0 for p in files]
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        gray = grays[i % len(grays)]
        height, width = gray.shape
        side = int(rng.integers(SIZE, max(SIZE + 1, min(height, width) // 2)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        cut = Image.fromarray(gray[top : top + side, left : left + side])
        out[i] = np.clip(np.asarray(cut.resize((SIZE, SIZE), Image.Resampling.LANCZOS)), 0, 1)
    names = ", ".join(p.name for p in files)
    return OodSet("photos", out, f"28x28 grayscale cuts of {len(files)} photographs ({names})")


def fashion_file() -> Path | None:
    for pattern in FASHION_GLOBS:
        hits = sorted(glob.glob(pattern, recursive=True))
        if hits:
            return Path(hits[0])
    return None


def fashion(n: int, rng: np.random.Generator) -> OodSet | None:
    from training.data import read_idx

    path = fashion_file()
    if path is None:
        print(
            "ood: Fashion-MNIST not found (Debian: apt-get install dataset-fashion-mnist): "
            "skipping the 'fashion' set",
            file=sys.stderr,
        )
        return None
    images = read_idx(path)
    pick = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    return OodSet(
        "fashion",
        images[pick].astype(np.float32) / 255.0,
        f"Fashion-MNIST test images ({path})",
    )


def build_sets(n: int = 1000, seed: int = 0) -> dict[str, OodSet]:
    """Every set this machine can build, `n` images each, seeded."""
    rng = np.random.default_rng(seed)
    out: dict[str, OodSet] = {}
    for make in (letters, strokes, noise, photos, fashion):
        made = make(n, np.random.default_rng(rng.integers(2**63)))
        if made is not None:
            out[made.name] = made
    return out


# --------------------------------------------------------------------------- preparation


def as_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def prepared(images: np.ndarray) -> tuple[np.ndarray, int]:
    """Each 28x28 array as an upload would be: PNG bytes through the service's preparation
    (preprocess=auto) -> (the prepared images, how many it refused: 'no digit found')."""
    out, refused = [], 0
    for image in images:
        try:
            out.append(preprocess_bytes(as_png(image), "auto", SIZE))
        except ImageInputError:
            refused += 1
    return np.asarray(out, np.float32).reshape(-1, SIZE, SIZE), refused


# --------------------------------------------------------------------------- figures


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an in-distribution image > an OOD image's), ties counted half (the
    Mann-Whitney U statistic over the product of the counts)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inside, outside]))
    u = ranks[: len(inside)].sum() - len(inside) * (len(inside) + 1) / 2
    return float(u / (len(inside) * len(outside)))


@dataclass
class Scored:
    """One set's typicality scores under the reference, and the values they are made of."""

    scores: np.ndarray
    values: dict[str, np.ndarray]


def _scores(model, images: np.ndarray, reference, seed: int, prior=None) -> Scored:
    """The reference's typicality score of each image (higher = more typical)."""
    if len(images) == 0:
        return Scored(np.empty(0), {})
    x = model.to_model_pixels(images)
    values = scoring.typicality_values(
        model, x, reference.k or 1, np.random.default_rng(seed), OFFLINE_CHUNK, prior
    )
    return Scored(scoring.reference_scores(reference, values)[0], values)


class PriorSignal:
    """The fitted prior's density as a /score signal, measured: each image's score without
    the prior (the model's base score), with the prior's log density alone, and combined (the
    lowest of the parts' percentiles among held-out images). The held-out quantiles of each
    part come from the reference where it has them, the log density's otherwise from the
    held-out images' encodings."""

    def __init__(self, model, reference, prior, held_out: np.ndarray | None) -> None:
        base = scoring.score_name(model.kind, prior=False)
        self.base, self.combined = base, scoring.score_name(model.kind, prior=True)
        stored = dict(reference.components or {reference.score: reference.quantiles})
        if "log_prior" not in stored:
            if held_out is None:
                raise ValueError("the prior's density needs held-out images for its quantiles")
            images = np.asarray(held_out, np.float32).reshape(-1, *model.input_shape)
            codes = model.encode_batch(model.to_model_pixels(images))
            mean = codes["mu"] if model.kind == "vae" else codes["z"]
            stored["log_prior"] = scoring._rounded(prior.log_density(mean), scoring.QUANTILE_POINTS)
        self.quantiles = stored

    def scores(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        def lowest(parts: tuple[str, ...]) -> np.ndarray:
            return scoring.combine({p: self.quantiles[p] for p in parts}, values)[0]

        return {
            "without_prior": lowest(scoring.COMPONENTS.get(self.base, (self.base,))),
            "log_prior": values["log_prior"],
            "with_prior": lowest(scoring.COMPONENTS[self.combined]),
        }

    def aurocs(self, inside: Scored, outside: Scored) -> dict[str, float]:
        if not len(inside.scores) or not len(outside.scores):
            return {}
        a, b = self.scores(inside.values), self.scores(outside.values)
        return {name: auroc(a[name], b[name]) for name in a}


def mean_log_px(
    model, images: np.ndarray, k: int = LOG_PX_K, count: int = LOG_PX_IMAGES, seed: int = 0
) -> dict:
    """Mean k-sample importance-weighted log p(x) over `count` evenly spaced images (0 = all),
    with its standard error, the mean ELBO and bits per dimension."""
    pick = np.arange(len(images))
    if 0 < count < len(images):
        pick = np.linspace(0, len(images) - 1, count).round().astype(int)
    x = model.to_model_pixels(images[pick])
    result = scoring.score_images(model, x, k, np.random.default_rng(seed), OFFLINE_CHUNK)
    log_px, elbo = result.log_px, result.elbo
    assert log_px is not None and elbo is not None and result.likelihood is not None
    dims = result.likelihood.dims
    return {
        "k": k,
        "images": len(pick),
        "of": len(images),
        "subset": "all" if len(pick) == len(images) else f"{len(pick)} evenly spaced",
        "mean_log_px": float(log_px.mean()),
        "sem_log_px": float(log_px.std(ddof=1) / math.sqrt(len(log_px))),
        "mean_elbo": float(elbo.mean()),
        "bits_per_dim": float(-log_px.mean() / (dims * math.log(2))),
        "likelihood": result.likelihood.statement(),
    }


def likelihood_report(
    model_dir: Path,
    test_images: np.ndarray,
    sets: dict[str, OodSet],
    seed: int = 0,
    log_px_k: int = LOG_PX_K,
    log_px_images: int = LOG_PX_IMAGES,
    progress: bool = True,
    digits: bool = True,
    held_out: np.ndarray | None = None,
) -> dict:
    """The figures for evaluation.json: mean log p(x) (VAE), the share of test digits called
    typical, and the AUROC of the typicality score between the test digits and each OOD set,
    raw and after the upload preparation. The model's metadata must hold `typicality`.
    `digits` False (a model of other images): its test images, raw, under "test", no sets.
    A model with a fitted prior also gets "prior_signal": the AUROCs without the prior's
    density, with it alone and combined (PriorSignal; `held_out`: the validation images,
    for the density's quantiles when the reference has none)."""
    from service.inference.format import read_metadata
    from service.inference.registry import load_model
    from training.prior import fitted_prior

    def say(text: str) -> None:
        if progress:
            print(f"ood: {text}", file=sys.stderr, flush=True)

    model = load_model(Path(model_dir))
    reference = read_metadata(Path(model_dir)).typicality
    if reference is None:
        raise ValueError(
            f"{model_dir}: metadata.json has no typicality (python -m training.typicality)"
        )
    prior = fitted_prior(Path(model_dir), model.metadata)
    signal = None
    if prior is not None and digits:
        signal = PriorSignal(model, reference, prior, held_out)
    # Digits as (N, 28, 28), as the OOD sets are; other images in the model's (N, C, H, W).
    shape = (SIZE, SIZE) if digits else model.input_shape
    test = np.asarray(test_images, np.float32).reshape(-1, *shape)
    report: dict = {
        "score": reference.score,
        "k": reference.k,
        "threshold": reference.threshold,
        "threshold_quantile": reference.threshold_quantile,
        "threshold_from": reference.held_out,
        "notes": [],
    }
    if model.kind == "vae":
        say(f"mean log p(x), k={log_px_k}, {log_px_images or len(test)} test images")
        report["log_px"] = mean_log_px(model, test, log_px_k, log_px_images, seed)
    if not digits:
        say(f"scoring {len(test)} test images")
        inside = _scores(model, test, reference, seed, prior).scores
        report["test"] = {
            "count": len(test),
            "raw": {
                "typical_share": float((inside >= reference.threshold).mean()),
                "mean_score": float(inside.mean()),
            },
        }
        report["sets"] = {}
        report["notes"].append(
            "the OOD sets (letters, strokes, noise, photos, Fashion-MNIST) and the digit "
            "upload preparation are made for 1x28x28 MNIST digit models: skipped for this "
            f"model of {'x'.join(map(str, model.input_shape))} images that are not MNIST digits"
        )
        return report
    say(f"scoring {len(test)} test digits, raw and prepared")
    scored_raw = _scores(model, test, reference, seed, prior)
    test_prepared, test_refused = prepared(test)
    scored_prepared = _scores(model, test_prepared, reference, seed + 1, prior)
    inside_raw, inside_prepared = scored_raw.scores, scored_prepared.scores
    threshold = reference.threshold
    report["mnist_test"] = {
        "count": len(test),
        "raw": {
            "typical_share": float((inside_raw >= threshold).mean()),
            "mean_score": float(inside_raw.mean()),
        },
        "prepared": {"count": len(test_prepared), "refused": test_refused},
    }
    if len(inside_prepared):
        report["mnist_test"]["prepared"].update(
            typical_share=float((inside_prepared >= threshold).mean()),
            mean_score=float(inside_prepared.mean()),
        )
    report["sets"] = {}
    if signal is not None:
        report["prior_signal"] = {"without_prior": signal.base, "with_prior": signal.combined,
                                  "sets": {}}  # fmt: skip
    for name, ood in sets.items():
        say(f"scoring {name} ({len(ood.images)} images), raw and prepared")
        scored = _scores(model, ood.images, reference, seed + 2, prior)
        raw = scored.scores
        ready, refused = prepared(ood.images)
        entry: dict = {
            "description": ood.description,
            "count": len(ood.images),
            "raw": {
                "auroc": auroc(inside_raw, raw),
                "atypical_share": float((raw < threshold).mean()),
                "mean_score": float(raw.mean()),
            },
            "prepared": {"count": len(ready), "refused": refused},
        }
        scored_ready = _scores(model, ready, reference, seed + 3, prior)
        if signal is not None:
            report["prior_signal"]["sets"][name] = {
                "raw": signal.aurocs(scored_raw, scored),
                "prepared": signal.aurocs(scored_prepared, scored_ready),
            }
        if len(ready) and len(inside_prepared):
            scores = scored_ready.scores
            entry["prepared"].update(
                {
                    "auroc": auroc(inside_prepared, scores),
                    "atypical_share": float((scores < threshold).mean()),
                    # refused uploads never get a score: counted as caught
                    "caught_share": float(((scores < threshold).sum() + refused) / len(ood.images)),
                    "mean_score": float(scores.mean()),
                }
            )
        report["sets"][name] = entry
        report["notes"] += ood.notes
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(report: dict) -> str:
    """The report as Markdown: the in-distribution line, then one row per OOD set."""
    if "mnist_test" not in report:  # not a digit model: its own test images, no sets
        return _test_only_table(report)
    mnist = report["mnist_test"]
    prepared_typical = mnist["prepared"].get("typical_share")
    lines = [
        _score_line(report),
        "",
        "| set | n | AUROC, raw | flagged atypical, raw | AUROC, prepared | flagged atypical, "
        "prepared | refused by preparation |",
        "|---|---|---|---|---|---|---|",
        f"| MNIST test digits (typical: {_pct(mnist['raw']['typical_share'])} raw, "
        f"{_pct(prepared_typical)} prepared) | {mnist['count']} | - | "
        f"{_pct(1 - mnist['raw']['typical_share'])} | - | "
        f"{_pct(None if prepared_typical is None else 1 - prepared_typical)} | "
        f"{mnist['prepared']['refused']} |",
    ]
    for name, entry in report["sets"].items():
        raw, ready = entry["raw"], entry["prepared"]
        lines.append(
            f"| {name} | {entry['count']} | {_num(raw['auroc'])} | {_pct(raw['atypical_share'])} "
            f"| {_num(ready.get('auroc'))} | {_pct(ready.get('atypical_share'))} | "
            f"{ready['refused']} |"
        )
    lines += _log_px_line(report)
    for note in report.get("notes", []):
        lines.append(f"Note: {note}.")
    return "\n".join(lines)


def prior_signal_table(report: dict) -> str:
    """The prior_signal AUROCs as Markdown: per set, raw and prepared, without the prior's
    density, with it alone and combined."""
    signal = report.get("prior_signal")
    if not signal:
        return ""
    lines = [
        f"AUROC without the fitted prior ({signal['without_prior']}), its log density of the "
        f"encoding alone (log_prior), and both ({signal['with_prior']}):",
        "",
        "| set | raw: without | raw: log_prior | raw: with | prepared: without | "
        "prepared: log_prior | prepared: with |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("without_prior", "log_prior", "with_prior")
    for name, entry in signal["sets"].items():
        cells = [_num(entry[side].get(key)) for side in ("raw", "prepared") for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _score_line(report: dict) -> str:
    score = report["score"] + (f" (k = {report['k']})" if report.get("k") else "")
    return (
        f"Score: {score}; typical: score >= {report['threshold']:.4g} (the "
        f"{100 * report.get('threshold_quantile', 0.01):g}% quantile of the scores of "
        f"{report['threshold_from']})."
    )


def _log_px_line(report: dict) -> list[str]:
    if "log_px" not in report:
        return []
    lp = report["log_px"]
    return [
        "",
        f"Mean log p(x) (k = {lp['k']}, {lp['subset']} of {lp['of']} test images): "
        f"{lp['mean_log_px']:.2f} +- {lp['sem_log_px']:.2f} nats (ELBO {lp['mean_elbo']:.2f}; "
        f"{lp['bits_per_dim']:.4f} bits/dim of a continuous density).",
    ]


def _test_only_table(report: dict) -> str:
    """markdown_table of a report without OOD sets (a model of other images than digits)."""
    test = report["test"]
    lines = [
        _score_line(report),
        "",
        f"Test images called typical: {_pct(test['raw']['typical_share'])} of {test['count']}.",
        *_log_px_line(report),
    ]
    lines += [f"Note: {note}." for note in report.get("notes", [])]
    return "\n".join(lines)


# --------------------------------------------------------------------------- vae-evaluate


def evaluate_likelihood(
    model_dir: Path,
    test_images: np.ndarray,
    seed: int = 0,
    progress: bool = True,
    ood_count: int | None = None,
    log_px_k: int = LOG_PX_K,
    log_px_images: int = LOG_PX_IMAGES,
    digits: bool = True,
    held_out: np.ndarray | None = None,
) -> dict:
    """vae-evaluate's likelihood and typicality section. A folder without `typicality` in its
    metadata gets it first, from the run's validation split (as vae-export would have).
    `ood_count` None: as many images per OOD set as there are test images, at most 1000.
    `digits` False: no OOD sets (likelihood_report)."""
    from service.inference.format import read_metadata
    from training.typicality import add_typicality, validation_split

    metadata = read_metadata(Path(model_dir))
    added = None
    if metadata.typicality is None:
        val = validation_split(metadata.training)
        add_typicality(Path(model_dir), val.images, val.source)
        added = f"typicality added to metadata.json from {val.source} (it had none)"
        print(f"ood: {added}", file=sys.stderr)
    if ood_count is None:
        ood_count = min(OOD_COUNT, len(test_images))
    sets = build_sets(ood_count, seed) if digits else {}
    report = likelihood_report(
        model_dir, test_images, sets, seed, log_px_k, log_px_images, progress, digits=digits,
        held_out=held_out,
    )  # fmt: skip
    if added:
        report["notes"].append(added)
    report["table"] = markdown_table(report)
    if "prior_signal" in report:
        report["prior_signal"]["table"] = prior_signal_table(report)
    return report


def add_arguments(parser) -> None:
    """vae-evaluate's flags for this section."""
    parser.add_argument(
        "--no-ood", action="store_true", help="skip log p(x), typicality and the OOD sets"
    )
    parser.add_argument(
        "--ood-count",
        type=int,
        default=None,
        help=f"images per OOD set (default: as many as the test images, at most {OOD_COUNT})",
    )
    parser.add_argument("--log-px-k", type=int, default=LOG_PX_K, help="IWAE samples for log p(x)")
    parser.add_argument(
        "--log-px-images",
        type=int,
        default=LOG_PX_IMAGES,
        help="test images (evenly spaced) for the mean log p(x); 0 = all (10,000 x k decodes: "
        "about 80 minutes on one core at k = 1000)",
    )


def options(args) -> dict:
    return {
        "ood_count": args.ood_count,
        "log_px_k": args.log_px_k,
        "log_px_images": args.log_px_images,
    }
