"""The convolutional AE and VAE of "Generative Deep Learning", chapter 3, in PyTorch."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import ModelConfig


def _conv_block(
    layer: nn.Module, channels: int, config: ModelConfig, last: bool
) -> list[nn.Module]:
    """A conv layer, then (unless it is the decoder's output layer) BN, LeakyReLU, Dropout."""
    if last:
        return [layer, nn.Sigmoid()]
    block: list[nn.Module] = [layer]
    if config.use_batch_norm:
        block.append(nn.BatchNorm2d(channels, momentum=config.batch_norm_momentum))
    block.append(nn.LeakyReLU(config.leaky_relu_slope))
    if config.use_dropout:
        block.append(nn.Dropout(config.dropout_rate))
    return block


def feature_shape(config: ModelConfig) -> tuple[int, int, int]:
    """Shape of the encoder's last feature map ('same' padding: each stride divides H and W)."""
    _, height, width = config.input_shape
    for stride in config.encoder_conv_strides:
        height, width = math.ceil(height / stride), math.ceil(width / stride)
    return config.encoder_conv_filters[-1], height, width


class Encoder(nn.Module):
    """Image (N, C, H, W) -> features; `heads` linear layers each map them to (N, z_dim)."""

    def __init__(self, config: ModelConfig, heads: tuple[str, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.input_shape[0]
        for filters, kernel, stride in zip(
            config.encoder_conv_filters,
            config.encoder_conv_kernel_size,
            config.encoder_conv_strides,
            strict=True,
        ):
            conv = nn.Conv2d(channels, filters, kernel, stride=stride, padding=kernel // 2)
            layers += _conv_block(conv, filters, config, last=False)
            channels = filters
        self.conv = nn.Sequential(*layers, nn.Flatten())
        flat = math.prod(feature_shape(config))
        self.heads = nn.ModuleDict({name: nn.Linear(flat, config.z_dim) for name in heads})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.conv(x)
        return tuple(head(features) for head in self.heads.values())


class Decoder(nn.Module):
    """z (N, z_dim) -> image (N, C, H, W) in [0, 1]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.start_shape = feature_shape(config)
        self.dense = nn.Linear(config.z_dim, math.prod(self.start_shape))
        layers: list[nn.Module] = []
        channels = self.start_shape[0]
        count = len(config.decoder_conv_t_filters)
        for i, (filters, kernel, stride) in enumerate(
            zip(
                config.decoder_conv_t_filters,
                config.decoder_conv_t_kernel_size,
                config.decoder_conv_t_strides,
                strict=True,
            )
        ):
            # Keras 'same' for transposed convs: output = input * stride.
            conv = nn.ConvTranspose2d(
                channels,
                filters,
                kernel,
                stride=stride,
                padding=kernel // 2,
                output_padding=stride - 1,
            )
            layers += _conv_block(conv, filters, config, last=i == count - 1)
            channels = filters
        self.conv = nn.Sequential(*layers)
        self.output_shape = config.input_shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.dense(z).view(-1, *self.start_shape)
        x = self.conv(x)
        # Crop in case the strides overshoot an input size they do not divide.
        _, height, width = self.output_shape
        return x[:, :, :height, :width]


class Autoencoder(nn.Module):
    """The plain AE: a deterministic encoder to z and a decoder back."""

    kind = "ae"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, heads=("z",))
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The point `x` encodes to (for the AE, its code)."""
        return self.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


class VariationalAutoencoder(nn.Module):
    """The VAE: the encoder gives q(z|x) = N(mu, diag(exp(log_var))); z is reparameterized."""

    kind = "vae"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, heads=("mu", "log_var"))
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x)
        return mu, log_var

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The point `x` encodes to: the posterior mean mu."""
        return self.encode(x)[0]

    def reparameterize(self, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * log_var)
        return mu + std * torch.randn_like(std)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var)
        return self.decode(z), mu, log_var


def build_model(config: ModelConfig) -> Autoencoder | VariationalAutoencoder:
    return VariationalAutoencoder(config) if config.kind == "vae" else Autoencoder(config)
