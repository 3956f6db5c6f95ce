"""The figures the book's notebooks show, as PNG files: reconstructions, latent scatter, samples,
and the 2-D manifold. Matplotlib runs headless (Agg)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from PIL import Image
from scipy.stats import norm

from training.model import Autoencoder, VariationalAutoencoder

# A decoder as a plain function, z (N, z_dim) -> images (N, C, H, W) in [0, 1], so figures can
# be drawn from the PyTorch model or from the exported ONNX graph alike.
Decode = Callable[[np.ndarray], np.ndarray]


def tile(images: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one uint8 grid image, row-major, `gap` px between tiles:
    (rows, columns) for C = 1, (rows, columns, 3) for C = 3."""
    n, channels, h, w = images.shape
    rows = -(-n // columns)
    shape: tuple[int, ...] = (rows * (h + gap) - gap, columns * (w + gap) - gap)
    grid = np.zeros(shape if channels == 1 else (*shape, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        pixels = np.round(np.clip(image, 0, 1) * 255)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = (
            pixels[0] if channels == 1 else pixels.transpose(1, 2, 0)
        )
    return grid


def _show(ax, image: np.ndarray, digits: bool) -> None:
    """One (C, H, W) image in [0, 1]: RGB as it is; grayscale dark ink on white for digits
    (the book's figures), else as it is (0 black, 1 white)."""
    if image.shape[0] == 3:
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
    else:
        ax.imshow(image[0], cmap="gray_r" if digits else "gray", vmin=0, vmax=1)


def save_grid(images: np.ndarray, path: Path, columns: int, scale: int = 2) -> None:
    grid = Image.fromarray(tile(images, columns))
    grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST).save(path)


def _mean_latent(model: Autoencoder | VariationalAutoencoder, x: torch.Tensor) -> torch.Tensor:
    return model.encode_mean(x)


@torch.no_grad()
def save_progress_figures(
    model: Autoencoder | VariationalAutoencoder,
    val_images,
    fixed_z: torch.Tensor,
    out_dir: Path,
    epoch: int,
) -> None:
    """The book's training callback: samples from fixed z and reconstructions, every few epochs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = model.decode(fixed_z.to(device)).cpu().numpy()
    save_grid(samples, out_dir / f"epoch_{epoch:04d}_samples.png", columns=8)
    x = torch.from_numpy(val_images.images[:16])
    recon = model.decode(_mean_latent(model, x.to(device))).cpu().numpy()
    save_grid(np.concatenate([x.numpy(), recon]), out_dir / f"epoch_{epoch:04d}_recon.png", 16)
    model.train(was_training)


def plot_reconstructions(
    originals: np.ndarray, recons: np.ndarray, path: Path, title: str, digits: bool = True
) -> None:
    n = len(originals)
    height, width = originals.shape[2:]
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9 * max(1.0, width / height), 2.2), squeeze=False)
    for i in range(n):
        for row, images in enumerate((originals, recons)):
            _show(axes[row, i], images[i], digits)
            axes[row, i].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latent_scatter(
    z: np.ndarray,
    labels: np.ndarray | None,
    path: Path,
    title: str,
    label_names: list[str] | None = None,
) -> None:
    """Held-out encodings coloured by label (digits: 0-9; `label_names` name them; None: one
    colour), on the first two latent dimensions (z[0] alone against 0 for z_dim 1)."""
    fig, ax = plt.subplots(figsize=(7, 6))
    y = z[:, 1] if z.shape[1] > 1 else np.zeros(len(z))
    if labels is None:
        ax.scatter(z[:, 0], y, s=4, alpha=0.7, color="#5b6670")
    else:
        count = len(label_names) if label_names else max(10, int(labels.max(initial=0)) + 1)
        cmap: str | ListedColormap = "tab10"  # digits: the ten colours they always had
        if label_names and count <= 20:  # one colour per named label
            palette = plt.get_cmap("tab10" if count <= 10 else "tab20")
            cmap = ListedColormap([palette(i) for i in range(count)])
        elif count > 10:
            cmap = "tab20" if count <= 20 else "viridis"
        points = ax.scatter(
            z[:, 0], y, c=labels, cmap=cmap, s=4, alpha=0.7, vmin=-0.5, vmax=count - 0.5
        )
        ticks = range(count) if count <= 20 else None
        bar = fig.colorbar(points, ax=ax, ticks=ticks, label="label" if label_names else "digit")
        if label_names and ticks is not None:
            bar.ax.set_yticklabels(label_names)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]" if z.shape[1] > 1 else "")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _show_grid(ax, grid: np.ndarray, digits: bool) -> None:
    if grid.ndim == 3:  # RGB
        ax.imshow(grid)
    else:
        ax.imshow(grid, cmap="gray_r" if digits else "gray", vmin=0, vmax=255)


def plot_samples(
    decode: Decode, z: np.ndarray, path: Path, title: str, digits: bool = True
) -> None:
    images = decode(z.astype(np.float32))
    columns = int(np.ceil(np.sqrt(len(images))))
    fig, ax = plt.subplots(figsize=(6, 6.4))
    _show_grid(ax, tile(images, columns), digits)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples_by_label(
    images: np.ndarray,
    read_as: np.ndarray,
    path: Path,
    title: str,
    label_names: list[str],
    digits: bool = True,
) -> None:
    """One row per label (the book's per-digit figure): `images` (labels x columns, C, H, W)
    row by row, each row sampled from its label's fitted prior. `read_as` (same count): the
    judge's reading; a sample read as another label gets a red frame."""
    rows = len(label_names)
    columns = len(images) // rows
    _, _, h, w = images.shape
    gap = 2
    fig, ax = plt.subplots(figsize=(columns * 0.55 + 1.2, rows * 0.55 + 0.6))
    _show_grid(ax, tile(images, columns, gap), digits)
    for i, reading in enumerate(read_as):
        r, c = divmod(i, columns)
        if reading != r:
            ax.add_patch(
                plt.Rectangle((c * (w + gap) - 0.5, r * (h + gap) - 0.5), w, h, fill=False,
                              edgecolor="red", linewidth=1.2)
            )  # fmt: skip
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(rows)], label_names, fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def manifold_grid(size: int = 20) -> np.ndarray:
    """z at normal quantiles: norm.ppf of evenly spaced probabilities, row-major, y decreasing."""
    quantiles = norm.ppf(np.linspace(0.05, 0.95, size))
    return np.array([[x, y] for y in quantiles[::-1] for x in quantiles], dtype=np.float32)


def plot_manifold(
    decode: Decode, path: Path, title: str, size: int = 20, digits: bool = True
) -> None:
    images = decode(manifold_grid(size))
    fig, ax = plt.subplots(figsize=(8, 8.3))
    _show_grid(ax, tile(images, size, gap=0), digits)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_judged(
    confusion: np.ndarray,
    sample_shares: list[float],
    path: Path,
    title: str,
    label_names: list[str] | None = None,
) -> None:
    """What the judge reads: left, its reading of the test reconstructions (rows: the image's
    label, each row normalised); right, the share of each label among decoded N(0, I) samples
    beside the share among the test images. A label its reconstructions lose (a pale diagonal
    cell) is the one the samples lack."""
    confusion = np.asarray(confusion, dtype=np.float64)
    per_label = confusion.sum(1)
    rows = confusion / np.maximum(per_label, 1)[:, None]
    count = len(rows)
    names = label_names or [str(i) for i in range(count)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.1, 1]})
    shown = left.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(count):
        for j in range(count):
            if rows[i, j] >= 0.005:
                left.text(j, i, f"{rows[i, j]:.0%}", ha="center", va="center", fontsize=7,
                          color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
    left.set_xticks(range(count), names, rotation=45 if label_names else 0, fontsize=8)
    left.set_yticks(range(count), names, fontsize=8)
    left.set_xlabel("the judge reads the reconstruction as")
    left.set_ylabel("label of the test image")
    left.set_title("reconstructions of test images")
    fig.colorbar(shown, ax=left, fraction=0.046)
    at = np.arange(count)
    right.bar(at - 0.2, per_label / max(per_label.sum(), 1), 0.4, label="test images",
              color="#9aa5b1")  # fmt: skip
    right.bar(at + 0.2, sample_shares, 0.4, label="N(0, I) samples, as the judge reads them",
              color="#1f77b4")  # fmt: skip
    right.set_xticks(at, names, rotation=45 if label_names else 0, fontsize=8)
    right.set_ylabel("share")
    right.set_title("labels of decoded samples")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training_curves(metrics: list[dict], path: Path, title: str) -> None:
    epochs = [m["epoch"] for m in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(epochs, [m["train_mse"] for m in metrics], label="train")
    axes[0].plot(epochs, [m["val_mse_mu"] for m in metrics], label="validation (decoding mu)")
    axes[0].set_ylabel("per-pixel MSE")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    axes[1].plot(epochs, [m["train_kl"] for m in metrics], label="train")
    axes[1].plot(epochs, [m["val_kl"] for m in metrics], label="validation")
    axes[1].set_ylabel("KL (nats per image)")
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
