"""Loss terms. Every function returns a mean over the batch, as the book's Keras losses do."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per image, summed over latent dimensions.

    Closed form from Kingma & Welling, "Auto-Encoding Variational Bayes", Appendix B:
    -0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2).
    """
    return -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=1)


def per_image_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over each image's pixels, shape (N,)."""
    return (recon - x).pow(2).flatten(1).mean(dim=1)


def per_image_bce(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood summed over each image's pixels, shape (N,)."""
    recon = recon.clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(dim=1)


def reconstruction_term(
    recon: torch.Tensor, x: torch.Tensor, likelihood: str, r_loss_factor: float
) -> torch.Tensor:
    """The weighted reconstruction part of the VAE loss, per image."""
    if likelihood == "bce":
        return per_image_bce(recon, x)
    return r_loss_factor * per_image_mse(recon, x)
