"""`vae-evaluate`: judge an exported model folder the way the book's notebooks do.

Runs the exported ONNX graphs (what the service ships), not the PyTorch weights, on a held-out
set (the test split of the run's IDX files when there is one, else the run's validation split):
reconstruction MSE, KL, latent statistics; how well the latent space separates the labels
(`latent_knn5_accuracy`: a 5-nearest-neighbour classifier on the test encodings, fit on half
of the test set and scored on the other half); sample quality read by a classifier trained on
the model's own training images (digits, or whatever labels the data has; none without
labels); and the figures. Results go to `evaluation.json` and into `metadata.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.inference.prior import FittedPrior
from training.classifier import judge_epochs
from training.config import TrainConfig
from training.data import Digits, has_split, load_run_data, load_test_data, split_run_data
from training.export import read_metadata, write_metadata
from training.prior import fitted_prior

CONFIDENCE = 0.9
# Samples (and test reconstructions) whose nearest training image is looked for: 1,000 x
# 55,000 distances over 784 pixels, a few seconds.
MEMORISATION_IMAGES = 1000
KNN_NEIGHBOURS = 5
# The kNN score's split of the test encodings: a fixed permutation, whatever --seed says.
KNN_SPLIT_SEED = 0


def knn_accuracy(
    z: np.ndarray, labels: np.ndarray, k: int = KNN_NEIGHBOURS, seed: int = KNN_SPLIT_SEED
) -> float:
    """Accuracy of an exact k-nearest-neighbour classifier (Euclidean) on encodings `z`.

    The points are split by one fixed permutation (numpy default_rng(seed).permutation): its
    first n // 2 points are the reference set, the other n - n // 2 are classified by majority
    vote of their k nearest references and scored against `labels`. Deterministic throughout:
    distances in float64, neighbours at equal distance taken in reference order (stable sort),
    and a tied vote goes to the label of the nearest neighbour among the tied labels.
    """
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels)
    if z.ndim != 2 or len(z) != len(labels):
        raise ValueError(f"expected (N, d) encodings and N labels, got {z.shape}, {labels.shape}")
    n = len(z)
    if n // 2 < k:
        raise ValueError(f"{n} points: a {k}-NN score needs at least {2 * k}")
    order = np.random.default_rng(seed).permutation(n)
    reference, queries = z[order[: n // 2]], z[order[n // 2 :]]
    classes, codes = np.unique(labels[order[: n // 2]], return_inverse=True)
    truth = labels[order[n // 2 :]]
    # Query rows per chunk: the (rows, references, d) differences stay around 32 MB.
    rows = max(1, 2**22 // (len(reference) * z.shape[1] or 1))
    correct = 0
    for start in range(0, len(queries), rows):
        q = queries[start : start + rows]
        distances = ((q[:, None, :] - reference[None, :, :]) ** 2).sum(axis=2)
        nearest = codes[np.argsort(distances, axis=1, kind="stable")[:, :k]]  # (rows, k)
        index = np.arange(len(q))[:, None]
        votes = np.zeros((len(q), len(classes)), dtype=np.int64)
        np.add.at(votes, (index, nearest), 1)
        first = np.full((len(q), len(classes)), k)  # each label's nearest rank among the k
        for rank in range(k - 1, -1, -1):
            first[index[:, 0], nearest[:, rank]] = rank
        # Votes first; between equal votes the lower first rank (k + 1 > any rank gap).
        predicted = classes[np.argmax(votes * (k + 1) - first, axis=1)]
        correct += int((predicted == truth[start : start + rows]).sum())
    return correct / len(queries)


class OnnxModel:
    """The exported encoder and decoder of a model folder, loaded and checked against its
    metadata by the service's own loader, run in chunks to bound memory."""

    CHUNK = 1000

    def __init__(self, model_dir: Path):
        from service.inference.registry import load_model

        self._model = load_model(model_dir)
        self.metadata = self._model.metadata
        self.kind = self._model.kind
        self.z_dim = self._model.z_dim

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """{'mu', 'log_var'} (VAE) or {'z'} (AE)."""
        parts = [
            self._model.encode_batch(images[i : i + self.CHUNK])
            for i in range(0, len(images), self.CHUNK)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def decode(self, z: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self._model.decode_batch(z[i : i + self.CHUNK]) for i in range(0, len(z), self.CHUNK)]
        )


def evaluation_sets(config: TrainConfig, data_dir: str | None) -> tuple[Digits, Digits, Digits]:
    """(the run's training split, its validation split, the images to evaluate on): the test
    split (t10k-* IDX files) of `data_dir` if given, else of the run's own IDX folder if it has
    one, else the run's own validation split (the default subset, image folders, .npz files),
    in the model's shape. The run's data is read once. A run trained on IDX files reads its
    training and validation splits from `data_dir` too when that holds the train-* files (the
    recorded data_dir may be relative to where the run trained)."""
    if data_dir is not None and config.data_dir is not None and has_split(data_dir, "train"):
        config = dataclasses.replace(config, data_dir=data_dir)
    train, val = split_run_data(config, load_run_data(config))
    test = load_test_data(config, data_dir)
    return train, val, (val if test is None else test)


def nearest_distances(queries: np.ndarray, reference: np.ndarray, chunk: int = 5000) -> np.ndarray:
    """Euclidean distance (over all pixel values) from each query image to its nearest
    reference image: (n,) float64."""
    q = queries.reshape(len(queries), -1).astype(np.float32)
    q_norms = (q.astype(np.float64) ** 2).sum(1)
    best = np.full(len(q), np.inf)
    for start in range(0, len(reference), chunk):
        r = reference[start : start + chunk].reshape(-1, q.shape[1]).astype(np.float32)
        r_norms = (r.astype(np.float64) ** 2).sum(1)
        squared = q_norms[:, None] + r_norms[None, :] - 2.0 * (q @ r.T).astype(np.float64)
        best = np.minimum(best, squared.min(1))
    result: np.ndarray = np.sqrt(np.maximum(best, 0.0))
    return result


def _previous_evaluation(model_dir: Path) -> dict:
    path = Path(model_dir) / "evaluation.json"
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def judge_skipped(train: Digits, test: Digits) -> str | None:
    """Why the data gets no judge of sample quality, or None when it gets one."""
    if train.labels is None or test.labels is None:
        return f"no judge of sample quality: {train.source} has no labels"
    if train.label_count < 2:
        return f"no judge of sample quality: {train.source} has a single label"
    return None


def evaluate(
    model_dir: Path,
    data_dir: str | None,
    classifier_epochs: int | None = None,
    samples: int = 10_000,
    seed: int = 0,
    figures: bool = True,
    progress: bool = True,
    judge_cache: Path | None = None,
    likelihood: bool = True,
    likelihood_options: dict | None = None,
) -> dict:
    """Evaluate `model_dir`; returns the evaluation dict (also written to the folder).

    `classifier_epochs` None: judge_epochs() of the training set (40 on the default 4,500
    images, proportionally fewer on more)."""
    started = time.perf_counter()
    model = OnnxModel(model_dir)
    config = TrainConfig.from_dict((model.metadata.training or {})["config"])
    train, val, test = evaluation_sets(config, data_dir)
    prior = fitted_prior(model_dir, model.metadata)

    encoded = model.encode(test.images)
    z_mean = encoded["mu"] if model.kind == "vae" else encoded["z"]
    recon = model.decode(z_mean)
    mse = float(((recon - test.images) ** 2).mean())
    result: dict = {
        "data": test.source,
        "images": len(test),
        "reconstruction_mse_per_pixel": mse,
        "latent_mean": z_mean.mean(0).round(4).tolist(),
        "latent_std": z_mean.std(0).round(4).tolist(),
    }
    notes: list[str] = []
    if test.labels is not None and len(test) >= 2 * KNN_NEIGHBOURS:
        result[f"latent_knn{KNN_NEIGHBOURS}_accuracy"] = knn_accuracy(z_mean, test.labels)
    else:
        notes.append(
            f"no latent {KNN_NEIGHBOURS}-NN accuracy: "
            + ("the images have no labels" if test.labels is None else f"{len(test)} images")
        )
    if model.kind == "vae":
        mu, log_var = encoded["mu"], encoded["log_var"]
        kl = -0.5 * np.sum(1 + log_var - mu**2 - np.exp(log_var), axis=1)
        result["kl_per_image"] = float(kl.mean())
    rng = np.random.default_rng(seed)
    normal_z = rng.standard_normal((samples, model.z_dim)).astype(np.float32)
    skipped = judge_skipped(train, test)
    judged: Judged | None = None
    if skipped is None:
        judged = _judge(result, model, train, test, z_mean, recon, normal_z, rng,
                        classifier_epochs, seed, judge_cache, progress)  # fmt: skip
        _judge_priors(result, judged, model, train, val, test, recon, prior, samples, seed)
    else:
        print(f"judge: {skipped}", file=sys.stderr)
        result["classifier"] = None
        notes.append(skipped)
    # The OOD sets and the upload preparation they go through are 28x28 digits' own.
    digits = test.digits and test.shape == (1, 28, 28)
    if likelihood:  # log p(x), typicality, OOD sets: training/ood.py
        from training.ood import evaluate_likelihood

        result["likelihood"] = evaluate_likelihood(
            model_dir, test.images, seed, progress, **(likelihood_options or {}), digits=digits,
            held_out=val.images,
        )  # fmt: skip
    else:  # keep the last run's section rather than drop it (--no-ood saves its time)
        previous = _previous_evaluation(model_dir).get("likelihood")
        if previous is not None:
            result["likelihood"] = previous
            notes.append("likelihood: carried over from the previous evaluation (--no-ood)")
    if notes:
        result["notes"] = notes
    result["seconds"] = round(time.perf_counter() - started, 1)

    if figures:
        result["figures"] = draw_figures(
            model,
            model_dir,
            test,
            z_mean,
            recon,
            normal_z,
            test.label_names,
            result,
            prior,
            seed,
            judged,
        )
    (model_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    metadata = read_metadata(model_dir)
    metadata.evaluation = result
    metadata.figures = sorted(set(metadata.figures) | set(result.get("figures", [])))
    write_metadata(model_dir, metadata)
    return result


def _judge(
    result: dict,
    model: OnnxModel,
    train: Digits,
    test: Digits,
    z_mean: np.ndarray,
    recon: np.ndarray,
    normal_z: np.ndarray,
    rng: np.random.Generator,
    classifier_epochs: int | None,
    seed: int,
    judge_cache: Path | None,
    progress: bool,
) -> Judged:
    """Sample quality read by a classifier trained on the run's training split: into
    `result` as "classifier", "reconstructions_judged" (how it reads `recon`, the decoded
    test means), "samples_normal" (and "samples_box" for the AE). Returns the judge, the test
    images' features and the decoded N(0, I) samples."""
    from training.classifier import (
        load_or_train_classifier,
        predict,
        reconstruction_quality,
        sample_quality,
    )

    assert test.labels is not None
    epochs_given = classifier_epochs is not None
    if classifier_epochs is None:
        classifier_epochs = judge_epochs(len(train))
    print(
        f"judge: {classifier_epochs} epochs on {len(train):,} images"
        + ("" if epochs_given else " (scaled to the training set)"),
        file=sys.stderr,
    )
    classifier = load_or_train_classifier(
        train, classifier_epochs, seed, judge_cache, progress=progress
    )
    test_probs, test_features = predict(classifier, test.images)
    result["classifier"] = {
        "trained_on": train.source,
        "train_images": len(train),
        "epochs": classifier_epochs,
        "test_accuracy": float((test_probs.argmax(1) == test.labels).mean()),
        # The same confidence bar applied to real test digits: the ceiling for samples.
        "test_confident_share": float((test_probs.max(1) >= CONFIDENCE).mean()),
    }
    if not train.digits:  # the digits' judge has the ten it always had
        result["classifier"]["classes"] = train.label_count
    result["reconstructions_judged"] = reconstruction_quality(classifier, recon, test.labels)
    normal_images = model.decode(normal_z)
    result["samples_normal"] = sample_quality(classifier, normal_images, test_features)
    if model.kind == "ae":
        # The book samples the AE uniformly over the box its encodings occupy.
        low, high = z_mean.min(0), z_mean.max(0)
        box_z = rng.uniform(low, high, (len(normal_z), model.z_dim)).astype(np.float32)
        result["samples_box"] = sample_quality(classifier, model.decode(box_z), test_features)
        result["samples_box"]["box"] = [low.round(3).tolist(), high.round(3).tolist()]
    return Judged(classifier, test_features, normal_images)


@dataclass
class Judged:
    """What the judge gave for later sections: itself, the test images' features, the
    decoded N(0, I) samples; and (once _judge_priors ran) a few per-label samples for the
    figure with the judge's reading of each."""

    classifier: Any
    test_features: np.ndarray
    normal_images: np.ndarray
    by_label_images: np.ndarray | None = None
    by_label_read: np.ndarray | None = None


def _judge_priors(
    result: dict,
    judged: Judged,
    model: OnnxModel,
    train: Digits,
    val: Digits,
    test: Digits,
    recon: np.ndarray,
    prior: FittedPrior | None,
    samples: int,
    seed: int,
) -> None:
    """The fitted prior's samples read by the judge ("samples_fitted", and
    "samples_by_label" with per-label fits), the floor of the Frechet distance (real
    held-out images against the test set) and the memorisation check."""
    from training.classifier import frechet_distance, label_quality, predict, sample_quality

    _, val_features = predict(judged.classifier, val.images)
    result["heldout_frechet_distance"] = {
        "frechet_distance": frechet_distance(val_features, judged.test_features),
        "images": len(val),
        "source": val.source,
    }
    compared = {"samples_normal": judged.normal_images}
    if prior is not None:
        fitted = model.decode(prior.sample(samples, np.random.default_rng([seed, 1])))
        result["samples_fitted"] = sample_quality(judged.classifier, fitted, judged.test_features)
        compared["samples_fitted"] = fitted
    if prior is not None and prior.per_label:
        each = max(1, samples // len(prior.labels))
        asked = np.repeat(np.asarray(prior.labels), each)
        rng = np.random.default_rng([seed, 2])
        z = np.concatenate([prior.sample(each, rng, label=label) for label in prior.labels])
        images = model.decode(z)
        result["samples_by_label"] = label_quality(
            judged.classifier, images, asked, judged.test_features
        )
        # The figure: the first 10 of each label, with the judge's reading.
        pick = np.concatenate([np.arange(i * each, i * each + min(each, 10))
                               for i in range(len(prior.labels))])  # fmt: skip
        probs, _ = predict(judged.classifier, images[pick])
        judged.by_label_images, judged.by_label_read = images[pick], probs.argmax(1)
    result["memorisation"] = memorisation(train, recon, compared)


def memorisation(
    train: Digits,
    recon: np.ndarray,
    compared: dict[str, np.ndarray],
    count: int = MEMORISATION_IMAGES,
) -> dict:
    """Distance from each of `count` samples to its nearest training image, against the same
    for the model's reconstructions of `count` test images (equally smooth: blur alone brings
    an image closer to its nearest neighbour, so raw test images would be an unfair control).
    Samples closer than the reconstructions would mean the prior copies training images."""
    print(f"memorisation: {count} images of each kind against {len(train):,} training images",
          file=sys.stderr)  # fmt: skip

    def summary(images: np.ndarray) -> dict:
        d = nearest_distances(images[:count], train.images)
        return {"median": float(np.median(d)), "p05": float(np.quantile(d, 0.05)),
                "images": len(d)}  # fmt: skip

    control = summary(recon)
    out: dict = {
        "metric": "Euclidean distance over the pixel values ([0, 1]) to the nearest image of "
        f"{train.source} ({len(train)} images)",
        "test_reconstructions": control,
    }
    for name, images in compared.items():
        entry = summary(images)
        entry["median_over_reconstructions"] = entry["median"] / control["median"]
        out[name] = entry
    return out


def draw_figures(
    model: OnnxModel,
    out_dir: Path,
    test: Digits,
    z_mean: np.ndarray,
    recon: np.ndarray,
    normal_z: np.ndarray,
    label_names: list[str] | None = None,
    result: dict | None = None,
    prior: FittedPrior | None = None,
    seed: int = 0,
    judged: Judged | None = None,
) -> list[str]:
    from training import figures

    name = model.kind.upper()
    decode: Callable[[np.ndarray], np.ndarray] = model.decode
    digits = test.digits  # digits drawn dark on white, as the book draws them
    figures.plot_reconstructions(
        test.images[:10],
        recon[:10],
        out_dir / "reconstructions.png",
        f"{name}: originals (top) and reconstructions (bottom), {test.source}",
        digits=digits,
    )
    figures.plot_latent_scatter(
        z_mean[:5000],
        None if test.labels is None else test.labels[:5000],
        out_dir / "latent_scatter.png",
        f"{name} latent space of held-out {'digits' if digits else 'images'}",
        label_names=label_names,
    )
    figures.plot_samples(
        decode,
        normal_z[:100],
        out_dir / "samples.png",
        f"{name}: decoded z ~ N(0, I)",
        digits=digits,
    )
    names = ["reconstructions.png", "latent_scatter.png", "samples.png"]
    if prior is not None:
        figures.plot_samples(
            decode,
            prior.sample(100, np.random.default_rng([seed, 3])),
            out_dir / "samples_fitted.png",
            f"{name}: decoded z ~ the fitted prior ({len(prior.overall.weights)} components)",
            digits=digits,
        )
        names.append("samples_fitted.png")
    if (
        judged is not None
        and judged.by_label_images is not None
        and judged.by_label_read is not None
        and prior is not None
    ):
        shown = label_names or [str(label) for label in prior.labels]
        figures.plot_samples_by_label(
            judged.by_label_images,
            judged.by_label_read,
            out_dir / "samples_by_label.png",
            f"{name}: samples of each label's fitted prior (red: the judge reads another label)",
            [shown[label] if label < len(shown) else str(label) for label in prior.labels],
            digits=digits,
        )
        names.append("samples_by_label.png")
    if result and "reconstructions_judged" in result:  # only with a judge: labelled data
        figures.plot_judged(
            np.array(result["reconstructions_judged"]["confusion"]),
            result["samples_normal"]["class_shares"],
            out_dir / "judged.png",
            f"{name}: what the judge reads, {test.source}",
            label_names=label_names,
        )
        names.append("judged.png")
    if model.z_dim == 2:
        figures.plot_manifold(
            decode,
            out_dir / "manifold.png",
            f"{name}: z on a grid of normal quantiles",
            digits=digits,
        )
        names.append("manifold.png")
    return names


def summary_line(name: str, result: dict) -> str:
    samples = result.get("samples_normal")  # None: no judge (the data has no labels)
    knn = result.get(f"latent_knn{KNN_NEIGHBOURS}_accuracy")  # None in evaluations before it
    line = (
        f"{name}: MSE/pixel {result['reconstruction_mse_per_pixel']:.4f}"
        + (f", KL {result['kl_per_image']:.2f}" if "kl_per_image" in result else "")
        + (f"; latent {KNN_NEIGHBOURS}-NN accuracy {knn:.1%}" if knn is not None else "")
    )
    if samples is None:
        return line + "".join(f"; {note}" for note in result.get("notes", []))
    line += (
        f"; N(0,I) samples: {samples['confident_share']:.1%} confident, "
        f"class entropy {samples['class_entropy']:.3f}, "
        f"smallest class {samples['min_class_share']:.1%}, FD {samples['frechet_distance']:.1f}"
    )
    if "reconstructions_judged" in result:  # absent in evaluations before it
        judged = result["reconstructions_judged"]
        recalls = [r for r in judged["recall"] if r is not None]  # labels the test set has
        line += (
            f"; reconstructions (the samples' ceiling): {judged['accuracy']:.1%} read as their "
            f"own label, {judged['confident_share']:.1%} confident, lowest recall "
            f"{min(recalls):.1%}"
        )
    if "samples_box" in result:
        box = result["samples_box"]
        line += (
            f"; box samples: {box['confident_share']:.1%} confident, "
            f"entropy {box['class_entropy']:.3f}, smallest {box['min_class_share']:.1%}"
        )
    if "samples_fitted" in result:
        fitted = result["samples_fitted"]
        line += (
            f"; fitted-prior samples: {fitted['confident_share']:.1%} confident, "
            f"entropy {fitted['class_entropy']:.3f}, smallest {fitted['min_class_share']:.1%}, "
            f"FD {fitted['frechet_distance']:.1f}"
        )
    if "samples_by_label" in result:
        by_label = result["samples_by_label"]
        line += (
            f"; per-label samples read as the label asked for: {by_label['read_as_asked']:.1%} "
            f"(lowest {by_label['lowest_read_as_asked']:.1%})"
        )
    if "heldout_frechet_distance" in result:
        line += (
            f"; FD of real held-out images (the floor) "
            f"{result['heldout_frechet_distance']['frechet_distance']:.1f}"
        )
    judge = result["classifier"]
    return line + (
        f" (judge: test accuracy {judge['test_accuracy']:.2%}, "
        f"{judge['test_confident_share']:.1%} of real test "
        f"{'images' if 'classes' in judge else 'digits'} confident)"
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def prior_table(result: dict, label_names: list[str] | None = None) -> str:
    """Markdown: the judge's figures for each prior (N(0, I), the fitted one, per label), the
    floor set by real images, and the memorisation check (model card, issue #24)."""
    if result.get("classifier") is None:
        return ""
    memo = result.get("memorisation", {})

    def names(i: int) -> str:
        return label_names[i] if label_names and i < len(label_names) else str(i)

    def distance(key: str) -> str:
        entry = memo.get(key)
        if entry is None:
            return "-"
        return f"{entry['median']:.2f} ({entry['median_over_reconstructions']:.2f}x)"

    lines = [
        "| prior | confident (p >= 0.9) | class entropy / log C | rarest class | FD vs test | "
        "read as the label asked for (lowest) | median distance to nearest training image "
        "(x reconstructions') |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, title in (("samples_normal", "N(0, I)"), ("samples_fitted", "fitted")):
        q = result.get(key)
        if q is None:
            continue
        shares = q["class_shares"]
        rarest = int(np.argmin(shares))
        lines.append(
            f"| {title} | {_share(q['confident_share'])} | {q['class_entropy']:.3f} | "
            f"{_share(q['min_class_share'])} ({names(rarest)}) | {q['frechet_distance']:.1f} | "
            f"- | {distance(key)} |"
        )
    by_label = result.get("samples_by_label")
    if by_label is not None:
        read = by_label["read_as_asked_by_label"]
        worst = by_label["labels"][int(np.argmin(read))]
        lines.append(
            f"| fitted, per label ({by_label['per_label_count']} each) | "
            f"{_share(by_label['confident_share'])} | - | - | "
            f"{by_label['frechet_distance']:.1f} | {_share(by_label['read_as_asked'])} "
            f"({_share(by_label['lowest_read_as_asked'])}, {names(worst)}) | - |"
        )
    judge, judged = result["classifier"], result.get("reconstructions_judged")
    floor = result.get("heldout_frechet_distance")
    control = memo.get("test_reconstructions")
    lines.append(
        f"| *real test images / held-out images* | {_share(judge['test_confident_share'])} | - "
        f"| - | {'-' if floor is None else format(floor['frechet_distance'], '.1f')} | "
        f"{'-' if judged is None else _share(judged['accuracy'])} (reconstructions read as "
        f"their own label) | {'-' if control is None else format(control['median'], '.2f')} "
        "(reconstructions of test images) |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vae-evaluate",
        description="Evaluate an exported model folder: reconstruction, KL, latent statistics, "
        "sample quality read by a classifier of the model's own data (digits by default), "
        "and the book's figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", type=Path, help="an exported model folder (models/NAME)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the test IDX files (t10k-*, MNIST's names; for a run trained on IDX "
        "files also its train-* files, for the training and validation splits); default: those "
        "of the run's own --data-dir if it has them, else the run's validation split",
    )
    p.add_argument(
        "--classifier-epochs",
        type=int,
        default=None,
        help="epochs of the judge (default: 40 on up to 4,500 training images, proportionally "
        "fewer on more, at least 4: 4 on MNIST's 55,000)",
    )
    p.add_argument("--samples", type=int, default=10_000, help="random latent points to judge")
    p.add_argument("--seed", type=int, default=0, help="seed for the judge and the samples")
    p.add_argument(
        "--judge-cache",
        type=Path,
        default=Path.home() / ".cache" / "vae-service",
        help="folder that keeps trained judges for reuse",
    )
    p.add_argument("--no-judge-cache", action="store_true", help="always train the judge anew")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the judge (1 beside other CPU work: oversubscribed "
        "threads made training the judge ~7x slower here)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from training import ood

    ood.add_arguments(p)
    args = p.parse_args(argv)
    from training.data import DataError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    try:
        result = evaluate(
            args.model_dir,
            args.data_dir,
            classifier_epochs=args.classifier_epochs,
            samples=args.samples,
            seed=args.seed,
            figures=not args.no_figures,
            progress=not args.no_progress,
            judge_cache=None if args.no_judge_cache else args.judge_cache,
            likelihood=not args.no_ood,
            likelihood_options=ood.options(args),
        )
    except (DataError, FileNotFoundError) as exc:
        print(f"vae-evaluate: {exc}", file=sys.stderr)
        return 2
    print(summary_line(args.model_dir.name, result))
    table = prior_table(result, read_metadata(args.model_dir).label_names)
    if table:
        print(table)
    if "likelihood" in result:
        print(result["likelihood"]["table"])
        signal = result["likelihood"].get("prior_signal")
        if signal and signal.get("table"):
            print(signal["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
