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
from PIL import Image
from scipy.stats import norm

from training.model import Autoencoder, VariationalAutoencoder

# A decoder as a plain function, z (N, z_dim) -> images (N, 1, H, W) in [0, 1], so figures can
# be drawn from the PyTorch model or from the exported ONNX graph alike.
Decode = Callable[[np.ndarray], np.ndarray]


def tile(images: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """(N, 1, H, W) in [0, 1] -> one uint8 grid image, row-major, `gap` px between tiles."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * (h + gap) - gap, columns * (w + gap) - gap), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = np.round(
            np.clip(image[0], 0, 1) * 255
        )
    return grid


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


def plot_reconstructions(originals: np.ndarray, recons: np.ndarray, path: Path, title: str) -> None:
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.2))
    for i in range(n):
        for row, images in enumerate((originals, recons)):
            axes[row, i].imshow(images[i, 0], cmap="gray_r", vmin=0, vmax=1)
            axes[row, i].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latent_scatter(z: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    """Held-out encodings coloured by digit (the first two latent dimensions)."""
    fig, ax = plt.subplots(figsize=(7, 6))
    points = ax.scatter(
        z[:, 0], z[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7, vmin=-0.5, vmax=9.5
    )
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(decode: Decode, z: np.ndarray, path: Path, title: str) -> None:
    images = decode(z.astype(np.float32))
    columns = int(np.ceil(np.sqrt(len(images))))
    fig, ax = plt.subplots(figsize=(6, 6.4))
    ax.imshow(tile(images, columns), cmap="gray_r", vmin=0, vmax=255)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def manifold_grid(size: int = 20) -> np.ndarray:
    """z at normal quantiles: norm.ppf of evenly spaced probabilities, row-major, y decreasing."""
    quantiles = norm.ppf(np.linspace(0.05, 0.95, size))
    return np.array([[x, y] for y in quantiles[::-1] for x in quantiles], dtype=np.float32)


def plot_manifold(decode: Decode, path: Path, title: str, size: int = 20) -> None:
    images = decode(manifold_grid(size))
    fig, ax = plt.subplots(figsize=(8, 8.3))
    ax.imshow(tile(images, size, gap=0), cmap="gray_r", vmin=0, vmax=255)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
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
