"""The VAE: a config dataclass, named presets, one base contract and the convolutional model.

`BaseVAE` is the contract every variant obeys (encode, decode, loss, reconstruct, sample,
embed); the trainer and the latent tasks know nothing model-specific beyond it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from dogvae.losses import (
    LIKELIHOODS,
    bits_per_dim,
    kl_per_dim,
    kl_with_free_bits,
    reconstruction_nll,
)

NORMS = ("batch", "group", "none")
ACTIVATIONS = ("leaky_relu", "silu", "relu")


@dataclass
class VAEConfig:
    """The shape and objective of a convolutional VAE.

    The encoder halves the image `len(enc_widths)` times with stride-2 3x3 convolutions, each
    followed by `blocks_per_stage` residual blocks; an optional dense layer (`dense` units) sits
    between the feature map and the latent heads. The decoder mirrors it with transposed
    convolutions, starting from a `dec_start_channels` x s x s map (s = image_size / 2^depth).
    """

    image_size: int = 64
    latent_dim: int = 128
    enc_widths: tuple[int, ...] = (32, 64, 128, 256)
    dec_widths: tuple[int, ...] = (128, 64, 32, 32)
    dec_start_channels: int = 256
    blocks_per_stage: int = 0
    dense: int = 0
    norm: str = "batch"
    activation: str = "leaky_relu"
    likelihood: str = "gaussian"
    beta: float = 1.0
    kl_warmup_epochs: float = 0.0
    free_bits: float = 0.0

    def __post_init__(self):
        self.enc_widths = tuple(int(w) for w in self.enc_widths)
        self.dec_widths = tuple(int(w) for w in self.dec_widths)
        self.validate()

    def validate(self) -> None:
        depth = len(self.enc_widths)
        problems = []
        if len(self.dec_widths) != depth:
            problems.append(
                f"dec_widths has {len(self.dec_widths)} stages but enc_widths has {depth}"
            )
        if depth == 0 or self.image_size % (2**depth):
            problems.append(
                f"image_size {self.image_size} must be divisible by 2^{depth} (one halving per stage)"
            )
        if self.latent_dim < 1:
            problems.append("latent_dim must be at least 1")
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {NORMS}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS}")
        if self.likelihood not in LIKELIHOODS:
            problems.append(f"likelihood must be one of {LIKELIHOODS}")
        if self.beta < 0 or self.free_bits < 0 or self.kl_warmup_epochs < 0:
            problems.append("beta, free_bits and kl_warmup_epochs must be non-negative")
        if problems:
            raise ValueError("invalid VAEConfig: " + "; ".join(problems))

    @property
    def bottom_size(self) -> int:
        """Side of the smallest feature map."""
        return self.image_size // (2 ** len(self.enc_widths))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VAEConfig fields: {', '.join(unknown)}")
        return cls(**data)


@dataclass
class Preset:
    """A named model shape with the training settings it was designed for."""

    model: VAEConfig
    batch_size: int = 64
    lr: float = 2e-3
    epochs: int = 30
    description: str = ""
    train_overrides: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "seed": Preset(
        model=VAEConfig(
            image_size=128,
            latent_dim=128,
            enc_widths=(64, 128, 64, 64),
            dec_widths=(128, 64, 32, 16),
            dec_start_channels=256,
            dense=2048,
            norm="batch",
            activation="leaky_relu",
            likelihood="bernoulli",
        ),
        batch_size=32,
        lr=1e-4,
        epochs=30,
        description="faithful replica of the original Keras model (43,413,091 parameters)",
        train_overrides={"weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 0.0},
    ),
    "small64": Preset(
        model=VAEConfig(image_size=64, latent_dim=128),
        batch_size=64,
        lr=2e-3,
        epochs=40,
        description="CPU default: 64 px, 2.4 M parameters, Gaussian likelihood",
    ),
    "res64": Preset(
        model=VAEConfig(
            image_size=64,
            latent_dim=128,
            enc_widths=(64, 128, 192, 256),
            dec_widths=(192, 128, 64, 64),
            dec_start_channels=256,
            blocks_per_stage=1,
            norm="group",
            activation="silu",
        ),
        batch_size=64,
        lr=1e-3,
        epochs=60,
        description="residual blocks, 64 px: better reconstructions for longer runs",
    ),
    "res128": Preset(
        model=VAEConfig(
            image_size=128,
            latent_dim=256,
            enc_widths=(32, 64, 128, 192, 256),
            dec_widths=(192, 128, 64, 32, 32),
            dec_start_channels=256,
            blocks_per_stage=1,
            norm="group",
            activation="silu",
        ),
        batch_size=32,
        lr=1e-3,
        epochs=60,
        description="residual blocks, 128 px, latent 256: for a GPU",
    ),
}


def preset_config(name: str) -> VAEConfig:
    """A fresh copy of a preset's model config (presets themselves are never mutated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name].model)


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    return nn.Identity()


def _norm1d(kind: str, features: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "group":
        return nn.LayerNorm(features)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if kind == "silu":
        return nn.SiLU()
    return nn.ReLU()


class ResidualBlock(nn.Module):
    """norm-act-conv twice, added back to the input (pre-activation ResNet block)."""

    def __init__(self, channels: int, norm: str, activation: str):
        super().__init__()
        self.body = nn.Sequential(
            _norm2d(norm, channels),
            _activation(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm2d(norm, channels),
            _activation(activation),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage(conv: nn.Module, out_channels: int, cfg: VAEConfig) -> nn.Sequential:
    """A resolution change (conv) with its norm and activation, then the stage's residual blocks."""
    layers = [conv, _norm2d(cfg.norm, out_channels), _activation(cfg.activation)]
    layers += [
        ResidualBlock(out_channels, cfg.norm, cfg.activation) for _ in range(cfg.blocks_per_stage)
    ]
    return nn.Sequential(*layers)


def _dense(in_features: int, out_features: int, cfg: VAEConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        _norm1d(cfg.norm, out_features),
        _activation(cfg.activation),
    )


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        stages, channels = [], 3
        for width in cfg.enc_widths:
            stages.append(_stage(nn.Conv2d(channels, width, 3, stride=2, padding=1), width, cfg))
            channels = width
        self.features = nn.Sequential(*stages, nn.Flatten())
        flat = channels * cfg.bottom_size**2
        self.hidden = _dense(flat, cfg.dense, cfg) if cfg.dense else nn.Identity()
        head_in = cfg.dense or flat
        self.mu = nn.Linear(head_in, cfg.latent_dim)
        self.logvar = nn.Linear(head_in, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(self.features(x))
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        start = cfg.dec_start_channels * cfg.bottom_size**2
        layers = [_dense(cfg.latent_dim, cfg.dense, cfg)] if cfg.dense else []
        layers.append(_dense(cfg.dense or cfg.latent_dim, start, cfg))
        layers.append(nn.Unflatten(1, (cfg.dec_start_channels, cfg.bottom_size, cfg.bottom_size)))
        channels = cfg.dec_start_channels
        for width in cfg.dec_widths:
            up = nn.ConvTranspose2d(channels, width, 3, stride=2, padding=1, output_padding=1)
            layers.append(_stage(up, width, cfg))
            channels = width
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class LossOutput:
    """One batch's objective and its parts; every figure is a batch mean in nats per image."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor
    elbo: torch.Tensor
    beta: float

    def scalars(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "recon": float(self.reconstruction.detach()),
            "kl": float(self.kl.detach()),
            "elbo": float(self.elbo),
        }


class BaseVAE(nn.Module):
    """The contract shared by every dogvae model.

    Subclasses provide `encode(x) -> (mu, logvar)` and `decode_logits(z)`; images are float
    tensors (B, 3, H, W) with pixels in [0, 1]. Mixing and other latent tasks use the posterior
    mean (`embed`), never a sampled z, so they are deterministic.
    """

    config: VAEConfig

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes -> images in [0, 1] (the likelihood's mean)."""
        return torch.sigmoid(self.decode_logits(z).float())

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode_logits(z), mu, logvar

    def loss(self, x: torch.Tensor, beta: float | None = None) -> LossOutput:
        """Training objective and its parts for a batch; `beta` overrides the config's weight."""
        return self.objective(x, *self(x), beta=beta)

    def objective(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        beta: float | None = None,
    ) -> LossOutput:
        """The loss from `forward`'s outputs (kept apart so DDP can wrap `forward` alone)."""
        cfg = self.config
        beta = cfg.beta if beta is None else beta
        recon = reconstruction_nll(x, logits, cfg.likelihood, self.log_scale).mean()
        kl_dims = kl_per_dim(mu.float(), logvar.float())
        kl = kl_dims.sum(1).mean()
        kl_term = kl_with_free_bits(kl_dims, cfg.free_bits) if cfg.free_bits else kl
        return LossOutput(
            total=recon + beta * kl_term,
            reconstruction=recon,
            kl=kl,
            kl_per_dim=kl_dims.mean(0).detach(),
            elbo=(recon + kl).detach(),
            beta=beta,
        )

    def bits_per_dim(self, elbo_nats: float) -> float:
        return bits_per_dim(elbo_nats, 3 * self.config.image_size**2)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means: the deterministic latent code of each image."""
        return self.encode(x)[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed(x))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator=None) -> torch.Tensor:
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z * temperature)


class ConvVAE(BaseVAE):
    """Convolutional VAE with a configurable encoder/decoder (see `VAEConfig`)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.breeds: list[str] = []  # index -> breed name, filled by training or `load`
        self.info: dict = {}  # the run's config.json once loaded
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # One learned global scale for Gaussian/Laplace likelihoods (unused by Bernoulli).
        # Starting at 0.1 of the pixel range keeps early training from ignoring the image.
        self.log_scale = nn.Parameter(
            torch.tensor(-2.3), requires_grad=config.likelihood != "bernoulli"
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def count_parameters(model: nn.Module, *, keras_style: bool = False) -> int:
    """Trainable parameters; `keras_style` adds BatchNorm running statistics, as Keras counts them.

    The learned likelihood scale is a dogvae addition and is left out of the count.
    """
    total = sum(p.numel() for n, p in model.named_parameters() if n != "log_scale")
    if keras_style:
        total += sum(
            b.numel()
            for n, b in model.named_buffers()
            if n.endswith(("running_mean", "running_var"))
        )
    return total


def build_model(config: VAEConfig) -> BaseVAE:
    return ConvVAE(config)
