"""`vae-prior`: fit a Gaussian mixture to a model's aggregate posterior (ex-post density
estimation) and store it in the model folder as its fitted prior.

    vae-prior models/vae --data-dir path/to/mnist        # refit an exported folder

The mixture is fitted to the encodings of the run's TRAINING split (never the test set): the
VAE's means `mu`, or `mu` plus one posterior sample per image (`--fit-on sample`: the
aggregate posterior q(z) = mean_x q(z|x) itself), the AE's codes `z`. The number of
components is chosen on the VALIDATION split's mean log-likelihood: each candidate K is fitted
on the training encodings and scored on the validation encodings, and the smallest K within
`margin` nats of the best is kept. Where the data has labels, each label gets its own mixture,
chosen the same way on that label's encodings, and its share of the training split.

The encodings go through the exported ONNX graphs (what the service serves); the file is
written by `service.inference.prior.save_prior` and described by metadata.json's `prior`
(format.PriorSpec). `vae-export` calls `fit_and_store` on the run's own split.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.inference.format import PriorSpec, read_metadata, write_metadata
from service.inference.prior import PRIOR_FILE, FittedPrior, Mixture, load_prior, save_prior

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
# Nats per image: a larger K must beat the smaller one by more than this on the validation
# split to be kept (the validation log-likelihood's standard error over 5,000 images is
# about 0.02 nats for these models, so smaller gains are noise).
MARGIN = 0.02
SEED = 0
# A mixture component needs a few points per free parameter; a label's candidates stop where
# K full covariances would have fewer than this many training points per parameter.
POINTS_PER_PARAMETER = 5
FIT_ON = ("mu", "sample")


@dataclass(frozen=True)
class Choice:
    """One mixture fit and how its K was chosen: each candidate's mean validation
    log-likelihood (nats per image)."""

    mixture: Mixture
    components: int
    validation: dict[int, float]
    best: int

    def describe(self, margin: float) -> str:
        scores = ", ".join(f"{k}: {v:.3f}" for k, v in self.validation.items())
        return (
            f"K = {self.components} (mean validation log-likelihood per image, by K: {scores}; "
            f"the best K = {self.best}, kept the smallest within {margin:g} nats of it)"
        )


def _as_mixture(gmm) -> Mixture:
    """sklearn's GaussianMixture (full covariances) -> Mixture with Cholesky factors L of
    each covariance (sklearn keeps those of the precision)."""
    cholesky = np.linalg.cholesky(gmm.covariances_)
    weights = np.asarray(gmm.weights_, np.float64)
    return Mixture(weights / weights.sum(), np.asarray(gmm.means_, np.float64), cholesky)


def fit_mixture(z: np.ndarray, components: int, seed: int = SEED) -> Mixture:
    """A full-covariance Gaussian mixture of `components` fitted to z (N, D) by EM."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(
        components, covariance_type="full", max_iter=300, n_init=1, random_state=seed,
        reg_covar=1e-6,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(np.asarray(z, np.float64))
    return _as_mixture(gmm)


def candidates_for(count: int, z_dim: int, candidates: tuple[int, ...] = CANDIDATES) -> list[int]:
    """The candidate K that `count` training points can support (always K = 1)."""
    parameters = 1 + z_dim + z_dim * (z_dim + 1) // 2  # per component
    usable = [k for k in candidates if k * parameters * POINTS_PER_PARAMETER <= count]
    return usable or [1]


def choose_mixture(
    train: np.ndarray,
    val: np.ndarray,
    candidates: tuple[int, ...] = CANDIDATES,
    margin: float = MARGIN,
    seed: int = SEED,
    progress: bool = True,
    desc: str = "prior",
) -> Choice:
    """Fit each candidate K on `train`, score it on `val` (mean log-likelihood per point) and
    keep the smallest K within `margin` nats of the best."""
    if len(val) == 0:
        raise ValueError("no validation encodings to choose the number of components on")
    ks = candidates_for(len(train), train.shape[1], candidates)
    fits: dict[int, Mixture] = {}
    scores: dict[int, float] = {}
    bar = tqdm(ks, desc=desc, disable=not progress, file=sys.stderr, leave=False)
    for k in bar:
        bar.set_postfix_str(f"K={k}")
        fits[k] = fit_mixture(train, k, seed)
        scores[k] = float(fits[k].log_density(val).mean())
    best = max(scores, key=lambda k: scores[k])
    chosen = min(k for k in scores if scores[k] >= scores[best] - margin)
    return Choice(fits[chosen], chosen, scores, best)


def encodings(
    model_dir: Path, images: np.ndarray, fit_on: str = "mu", seed: int = SEED
) -> np.ndarray:
    """The encodings the prior is fitted to, through the exported encoder: the AE's `z`; the
    VAE's `mu`, or (`fit_on` 'sample') one draw mu + sigma eps per image."""
    from training.evaluate import OnnxModel

    model = OnnxModel(Path(model_dir))
    codes = model.encode(images)
    if model.kind == "ae":
        return codes["z"].astype(np.float64)
    mu = codes["mu"].astype(np.float64)
    if fit_on == "mu":
        return mu
    if fit_on != "sample":
        raise ValueError(f"fit_on must be one of {FIT_ON}, not {fit_on!r}")
    sigma = np.exp(0.5 * codes["log_var"].astype(np.float64))
    return mu + sigma * np.random.default_rng(seed).standard_normal(mu.shape)


@dataclass
class PriorFit:
    prior: FittedPrior
    overall: Choice
    classes: dict[int, Choice]


def fit_prior(
    z_train: np.ndarray,
    z_val: np.ndarray,
    labels_train: np.ndarray | None = None,
    labels_val: np.ndarray | None = None,
    candidates: tuple[int, ...] = CANDIDATES,
    margin: float = MARGIN,
    seed: int = SEED,
    progress: bool = True,
) -> PriorFit:
    """The mixture over all training encodings and, with labels, one per label (each label's
    K chosen on that label's validation encodings; labels without validation encodings keep
    the overall K's smallest candidate that fits, K = 1)."""
    overall = choose_mixture(z_train, z_val, candidates, margin, seed, progress, "prior: all")
    if labels_train is None or labels_val is None:
        return PriorFit(FittedPrior(overall.mixture), overall, {})
    classes: dict[int, Choice] = {}
    for label in tqdm(np.unique(labels_train), desc="prior: per label", disable=not progress,
                      file=sys.stderr):  # fmt: skip
        own = z_train[labels_train == label]
        own_val = z_val[labels_val == label]
        if len(own_val) == 0:
            own_val = own  # no held-out encodings of this label: the training ones decide
        classes[int(label)] = choose_mixture(own, own_val, candidates, margin, seed, False)
    shares = tuple(float((labels_train == label).mean()) for label in classes)
    prior = FittedPrior(
        overall.mixture,
        tuple(classes),
        shares,
        tuple(choice.mixture for choice in classes.values()),
    )
    return PriorFit(prior, overall, classes)


def fitted_prior(model_dir: Path, metadata=None) -> FittedPrior | None:
    """The folder's fitted prior (metadata `prior`), checked by sha256; None without one."""
    metadata = metadata if metadata is not None else read_metadata(Path(model_dir))
    spec = metadata.prior
    if spec is None:
        return None
    return load_prior(Path(model_dir) / spec.file, metadata.z_dim, spec.sha256)


def default_for(kind: str) -> str:
    """The prior GET /sample uses unless told: the AE has no prior of its own (the fitted
    one); the VAE keeps N(0, I), the prior it was trained towards."""
    return "fitted" if kind == "ae" else "normal"


def fit_and_store(
    model_dir: Path,
    train,
    val,
    fit_on: str = "sample",
    default: str | None = None,
    candidates: tuple[int, ...] = CANDIDATES,
    margin: float = MARGIN,
    seed: int = SEED,
    progress: bool = True,
    default_reason: str | None = None,
) -> PriorSpec:
    """Fit the prior to a model folder's encodings of `train` (choosing K on `val`; both
    training.data.Digits of the run's split), write prior.npz and metadata.json's `prior`.
    `default` None: the folder's current default if it has a prior, else default_for(kind).
    A typicality reference that uses the prior is recomputed (its quantiles were of the old
    one)."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    if metadata.kind == "ae":
        fit_on = "z"
    started = time.perf_counter()
    z_train = encodings(model_dir, train.images, fit_on, seed)
    z_val = encodings(model_dir, val.images, fit_on, seed + 1)
    fit = fit_prior(z_train, z_val, train.labels, val.labels, candidates, margin, seed, progress)
    sha = save_prior(model_dir, fit.prior)
    if default is None:
        kept = metadata.prior.default if metadata.prior is not None else None
        default = kept or default_for(metadata.kind)
        reason = default_reason or (
            "kept from the previous fit" if kept else
            ("the AE has no prior of its own" if metadata.kind == "ae"
             else "the VAE was trained towards N(0, I)")
        )  # fmt: skip
    else:
        reason = default_reason or "set by --default"
    how = (
        f"fitted by EM (scikit-learn GaussianMixture, full covariances, seed {seed}) to the "
        f"{'codes z' if fit_on == 'z' else 'means mu' if fit_on == 'mu' else 'posterior draws mu + sigma eps (one per image)'} "  # noqa: E501
        f"of the {len(z_train)} images of {train.source}; the number of components chosen on "
        f"the {len(z_val)} images of {val.source}: {fit.overall.describe(margin)}"
    )
    if fit.classes:
        per = ", ".join(f"{label}: {c.components}" for label, c in fit.classes.items())
        how += f"; one mixture per label, K chosen the same way on each label's images ({per})"
    how += f"{DEFAULT_NOTE}{default!r}: {reason}"
    spec = PriorSpec.model_validate(
        {
            "file": PRIOR_FILE,
            "sha256": sha,
            "kind": "gaussian_mixture",
            "fitted_on": {"mu": "mu", "sample": "posterior_sample", "z": "z"}[fit_on],
            "components": fit.overall.components,
            "per_label": fit.prior.per_label,
            "default": default,
            "how_chosen": how,
            "validation_log_likelihood": {
                str(k): round(v, 4) for k, v in fit.overall.validation.items()
            },
            "label_components": {str(k): c.components for k, c in fit.classes.items()} or None,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    metadata = read_metadata(model_dir)
    metadata.prior = spec
    write_metadata(model_dir, metadata)
    _refresh_typicality(model_dir, val)
    return spec


DEFAULT_NOTE = "; default prior "


def set_default(model_dir: Path, default: str, reason: str) -> PriorSpec:
    """Change a fitted folder's GET /sample default without refitting (metadata only)."""
    metadata = read_metadata(Path(model_dir))
    if metadata.prior is None:
        raise ValueError(f"{model_dir}: no fitted prior to make the default (run vae-prior)")
    how = metadata.prior.how_chosen.split(DEFAULT_NOTE)[0]
    metadata.prior = metadata.prior.model_copy(
        update={"default": default, "how_chosen": f"{how}{DEFAULT_NOTE}{default!r}: {reason}"}
    )
    write_metadata(Path(model_dir), metadata)
    return metadata.prior


def _refresh_typicality(model_dir: Path, val) -> None:
    """Recompute the typicality reference when its score uses the prior's density."""
    from service.inference import scoring
    from training.typicality import add_typicality

    reference = read_metadata(model_dir).typicality
    if reference is not None and "log_prior" in scoring.COMPONENTS.get(reference.score, ()):
        add_typicality(model_dir, val.images, val.source, score=reference.score)


def run_split(metadata_training: dict | None, data_dir=None, images=None, npz=None):
    """The run's (training, validation) split from metadata `training.config`, its data source
    replaced by `data_dir`, `images` or `npz` when one is given."""
    from training.config import TrainConfig
    from training.data import load_run_data, split_run_data

    config_dict = (metadata_training or {}).get("config")
    if not isinstance(config_dict, dict):
        raise ValueError("metadata.json has no training.config: cannot rebuild the split")
    config = TrainConfig.from_dict(config_dict)
    if data_dir is not None or images is not None or npz is not None:
        config = dataclasses.replace(config, data_dir=data_dir, images_dir=images, npz=npz)
    return split_run_data(config, load_run_data(config))


def parse_candidates(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("component counts must be positive integers")
    return values


def add_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The fit's flags (vae-prior's; vae-export's with `prefix` 'prior-')."""
    p.add_argument(
        f"--{prefix}fit-on",
        choices=FIT_ON,
        default="sample",
        help="VAE: fit one posterior draw mu + sigma eps per image (the aggregate posterior; "
        "its samples judged a little better on the shipped vae: models/README.md) or the means "
        "mu (the AE always fits its codes z)",
    )
    p.add_argument(
        f"--{prefix}components",
        type=parse_candidates,
        default=CANDIDATES,
        metavar="K,K,...",
        help="candidate component counts, chosen on the validation split",
    )
    p.add_argument(
        f"--{prefix}margin",
        type=float,
        default=MARGIN,
        help="keep the smallest K whose validation log-likelihood is within this many nats "
        "per image of the best",
    )
    p.add_argument(
        f"--{prefix}default",
        choices=["normal", "fitted"],
        default=None,
        help="the prior GET /sample uses when the request names none (default: the folder's "
        "current one, else 'fitted' for an AE and 'normal' for a VAE)",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vae-prior",
        description="Fit a Gaussian-mixture prior to an exported model's training encodings "
        "(number of components chosen on the validation split; one mixture per label where "
        "the data has labels) and store it in the folder, without re-exporting.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", type=Path, help="an exported model folder (models/NAME)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir", default=None, help="the run's IDX folder (train-* files)")
    source.add_argument("--images", default=None, help="the run's image folder")
    source.add_argument("--npz", default=None, help="the run's .npz file")
    add_arguments(p)
    p.add_argument(
        "--only-default",
        action="store_true",
        help="with --default: change the folder's default prior without refitting",
    )
    p.add_argument("--reason", default=None, help="why the default is what it is (into how_chosen)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of EM and the posterior draws")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from service.inference.format import ModelLoadError
    from training.data import DataError

    started = time.perf_counter()
    if args.only_default:
        if args.default is None:
            p.error("--only-default needs --default normal|fitted")
        try:
            spec = set_default(args.model_dir, args.default, args.reason or "set by --default")
        except (ModelLoadError, ValueError) as exc:
            print(f"vae-prior: {exc}", file=sys.stderr)
            return 2
        print(f"{args.model_dir}: default prior {spec.default!r} (not refitted)")
        return 0
    try:
        metadata = read_metadata(args.model_dir)
        train, val = run_split(metadata.training, args.data_dir, args.images, args.npz)
        spec = fit_and_store(
            args.model_dir, train, val, args.fit_on, args.default, args.components,
            args.margin, args.seed, not args.no_progress, args.reason,
        )  # fmt: skip
    except (DataError, FileNotFoundError, ModelLoadError, ValueError) as exc:
        print(f"vae-prior: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.model_dir}: prior fitted on {spec.fitted_on}, K = {spec.components}"
        + (" (and one mixture per label)" if spec.per_label else "")
        + f", default {spec.default!r}; {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
