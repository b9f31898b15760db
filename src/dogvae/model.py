"""The VAE: a config dataclass, named model presets, typed outputs, one base contract and the
convolutional models. A forward pass returns a `VAEOutput` (pixel logits and the
`DiagonalGaussian` posterior; an ssvae's adds classifier logits and its scored breed pairs);
the losses it feeds are in `dogvae.losses`, the presets' training settings in `dogvae.recipes`.

`BaseVAE` is the contract every variant obeys (encode, decode, loss, reconstruct, sample,
embed, `conditional`, `has_classifier`); the trainer and the latent tasks know nothing
model-specific beyond it. Three variants, chosen by `VAEConfig.model`:

* `vae` (`ConvVAE`): the plain VAE, p(x) through z.
* `cvae` (`ConditionalVAE`): encoder and decoder both see the breed through a learned
  embedding; an extra "unknown breed" embedding (trained by `breed_dropout`) serves photos
  whose breed nobody gave.
* `ssvae` (`SemiSupervisedVAE`): Kingma et al. 2014's M2, a classifier q(y|x) inside the model;
  unlabelled images marginalise over breeds with the estimator in `breed_candidates`.

A breed argument (`breed=`) is None (unknown), an int64 tensor of indices (-1: unknown, as the
data loader labels unlabelled images), or a float tensor (N, n_breeds) of mixing weights over
the breed embeddings (restyling and breed mixes).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dogvae.losses import LIKELIHOODS, LossOutput, bits_per_dim, kl_per_dim, m2_loss, vae_loss

MODELS = ("vae", "cvae", "ssvae")
TEST_TIME_VIEWS = (1, 2, 10)
NORMS = ("batch", "group", "none")
ACTIVATIONS = ("leaky_relu", "silu", "relu")


CLASSIFIER_MIXES = ("none", "cutmix", "mixup")


@dataclass
class VAEConfig:
    """The shape and objective of a convolutional VAE.

    The encoder halves the image `len(enc_widths)` times with stride-2 3x3 convolutions, each
    followed by `blocks_per_stage` residual blocks (one number for every stage, or one per
    encoder stage: blocks cost most at the large early maps); an optional dense layer (`dense`
    units) sits between the feature map and the latent heads. The decoder mirrors it with
    transposed convolutions, starting from a `dec_start_channels` x s x s map (s = image_size /
    2^depth); each of its stages mirrors an encoder stage (the reverse resize, the same
    number of blocks).

    Breed-aware models (`model` "cvae" or "ssvae") add a learned breed embedding of
    `breed_embed_dim` numbers to the latent heads' input and to the decoder's input; `n_breeds`
    is set by training from the data. `breed_dropout` is the share of labelled training images
    a cvae sees as "unknown breed". The ssvae's classifier is a residual CNN of
    `classifier_widths` (with `classifier_blocks` residual blocks per stage) whose
    cross-entropy (label smoothing `label_smoothing`) is added with weight
    `classifier_weight` (alpha of M2, in nats per labelled image); `classifier_top_k` breeds
    are summed exactly for an unlabelled image, one more is sampled from the rest;
    `classifier_augment` gives the classifier random shifts and flips; its weights decay by
    `classifier_weight_decay` (AdamW), more than the generative half's, and its pooled features
    are dropped out with probability `classifier_dropout` in training. It has its own
    `classifier_activation` (silu suits it better than the generative half's leaky_relu; see
    docs/results.md). Out of training it answers with its probabilities averaged over
    `classifier_views` views of the photo (1, 2 or 10: `photo_views`). `classifier_mix`
    "cutmix" or "mixup" trains it on labelled images mixed in pairs (`mix_images`, shares from
    Beta(`classifier_mix_alpha`, same)).
    """

    image_size: int = 64
    latent_dim: int = 128
    enc_widths: tuple[int, ...] = (32, 64, 128, 256)
    dec_widths: tuple[int, ...] = (128, 64, 32, 32)
    dec_start_channels: int = 256
    blocks_per_stage: int | tuple[int, ...] = 0
    dense: int = 0
    norm: str = "batch"
    activation: str = "leaky_relu"
    likelihood: str = "gaussian"
    beta: float = 1.0
    kl_warmup_epochs: float = 0.0
    free_bits: float = 0.0
    model: str = "vae"
    n_breeds: int = 0
    breed_embed_dim: int = 32
    breed_dropout: float = 0.1
    classifier_widths: tuple[int, ...] = (32, 64, 192, 384)
    classifier_blocks: int = 1
    classifier_weight: float = 50.0
    classifier_top_k: int = 4
    label_smoothing: float = 0.1
    classifier_augment: bool = True
    classifier_weight_decay: float = 0.05
    classifier_dropout: float = 0.3
    classifier_activation: str = "silu"
    classifier_views: int = 10
    classifier_mix: str = "none"
    classifier_mix_alpha: float = 1.0

    def __post_init__(self):
        self.enc_widths = tuple(int(w) for w in self.enc_widths)
        self.dec_widths = tuple(int(w) for w in self.dec_widths)
        self.classifier_widths = tuple(int(w) for w in self.classifier_widths)
        if not isinstance(self.blocks_per_stage, int):
            self.blocks_per_stage = tuple(int(b) for b in self.blocks_per_stage)
        self.validate()

    def validate(self) -> None:
        depth = len(self.enc_widths)
        problems = []
        if len(self.dec_widths) != depth:
            problems.append(
                f"dec_widths has {len(self.dec_widths)} stages but enc_widths has {depth}"
            )
        if len(self.stage_blocks) != depth or min(self.stage_blocks, default=0) < 0:
            problems.append(
                f"blocks_per_stage needs one non-negative count per stage ({depth}), "
                f"got {self.blocks_per_stage}"
            )
        if depth == 0 or self.image_size < 2**depth or self.image_size % (2**depth):
            problems.append(
                f"image_size {self.image_size} must be a positive multiple of 2^{depth} "
                "(one halving per stage)"
            )
        if self.latent_dim < 1:
            problems.append("latent_dim must be at least 1")
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {NORMS}")
        if {self.activation, self.classifier_activation} - set(ACTIVATIONS):
            problems.append(f"activation and classifier_activation must be one of {ACTIVATIONS}")
        if self.likelihood not in LIKELIHOODS:
            problems.append(f"likelihood must be one of {LIKELIHOODS}")
        if self.beta < 0 or self.free_bits < 0 or self.kl_warmup_epochs < 0:
            problems.append("beta, free_bits and kl_warmup_epochs must be non-negative")
        if self.model not in MODELS:
            problems.append(f"model must be one of {MODELS}")
        if self.n_breeds < 0 or self.breed_embed_dim < 1 or self.classifier_top_k < 1:
            problems.append("n_breeds >= 0, breed_embed_dim >= 1 and classifier_top_k >= 1")
        if not all(
            0.0 <= p < 1.0
            for p in (self.breed_dropout, self.label_smoothing, self.classifier_dropout)
        ):
            problems.append(
                "breed_dropout, label_smoothing and classifier_dropout must be in [0, 1)"
            )
        if (
            not self.classifier_widths
            or min(self.classifier_weight, self.classifier_weight_decay) < 0
        ):
            problems.append(
                "classifier_widths must not be empty, classifier_weight and "
                "classifier_weight_decay >= 0"
            )
        if self.classifier_mix not in CLASSIFIER_MIXES or self.classifier_mix_alpha <= 0:
            problems.append(
                f"classifier_mix must be one of {CLASSIFIER_MIXES}, classifier_mix_alpha > 0"
            )
        if self.classifier_views not in TEST_TIME_VIEWS:
            problems.append(f"classifier_views must be one of {TEST_TIME_VIEWS}")
        if problems:
            raise ValueError("invalid VAEConfig: " + "; ".join(problems))

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """Residual blocks in each encoder stage (`blocks_per_stage` spelled out)."""
        if isinstance(self.blocks_per_stage, int):
            return (self.blocks_per_stage,) * len(self.enc_widths)
        return self.blocks_per_stage

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
    """A named model shape; the settings it trains with are its `dogvae.recipes` entry."""

    model: VAEConfig
    description: str = ""


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
        description="faithful replica of the original Keras model (43,413,091 parameters)",
    ),
    "small64": Preset(
        model=VAEConfig(image_size=64, latent_dim=128, dec_widths=(128, 64, 32, 16)),
        description="CPU default: 64 px, 2.4 M parameters, Gaussian likelihood",
    ),
    "res64": Preset(
        model=VAEConfig(
            image_size=64,
            latent_dim=128,
            enc_widths=(32, 64, 128, 256),
            dec_widths=(128, 64, 32, 32),
            dec_start_channels=256,
            blocks_per_stage=(0, 1, 1, 1),
            norm="batch",
            activation="silu",
        ),
        description="residual blocks below 32 px, 64 px: better reconstructions for longer runs",
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


def _stage(
    conv: nn.Module, out_channels: int, cfg: VAEConfig, blocks: int, activation: str | None = None
) -> nn.Sequential:
    """A resolution change (conv) with its norm and activation (`cfg.activation` unless given),
    then `blocks` residual blocks."""
    activation = activation or cfg.activation
    layers = [conv, _norm2d(cfg.norm, out_channels), _activation(activation)]
    layers += [ResidualBlock(out_channels, cfg.norm, activation) for _ in range(blocks)]
    return nn.Sequential(*layers)


def _dense(in_features: int, out_features: int, cfg: VAEConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        _norm1d(cfg.norm, out_features),
        _activation(cfg.activation),
    )


class Encoder(nn.Module):
    """Image -> (mu, logvar); `conditions` extra numbers (a breed embedding) join the heads."""

    def __init__(self, cfg: VAEConfig, conditions: int = 0):
        super().__init__()
        stages, channels = [], 3
        for width, blocks in zip(cfg.enc_widths, cfg.stage_blocks, strict=True):
            down = nn.Conv2d(channels, width, 3, stride=2, padding=1)
            stages.append(_stage(down, width, cfg, blocks))
            channels = width
        self.features = nn.Sequential(*stages, nn.Flatten())
        flat = channels * cfg.bottom_size**2
        self.hidden = _dense(flat, cfg.dense, cfg) if cfg.dense else nn.Identity()
        head_in = (cfg.dense or flat) + conditions
        self.mu = nn.Linear(head_in, cfg.latent_dim)
        self.logvar = nn.Linear(head_in, cfg.latent_dim)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The image's features, before the latent heads (shared by every breed tried)."""
        return self.hidden(self.features(x))

    def heads(
        self, h: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if condition is not None:
            h = torch.cat([h, condition.to(h.dtype)], 1)
        return self.mu(h), self.logvar(h)

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.trunk(x), condition)


class Decoder(nn.Module):
    """z (joined by `conditions` extra numbers, a breed embedding) -> pixel logits."""

    def __init__(self, cfg: VAEConfig, conditions: int = 0):
        super().__init__()
        start = cfg.dec_start_channels * cfg.bottom_size**2
        z_in = cfg.latent_dim + conditions
        layers = [_dense(z_in, cfg.dense, cfg)] if cfg.dense else []
        layers.append(_dense(cfg.dense or z_in, start, cfg))
        layers.append(nn.Unflatten(1, (cfg.dec_start_channels, cfg.bottom_size, cfg.bottom_size)))
        channels = cfg.dec_start_channels
        for width, blocks in zip(cfg.dec_widths, reversed(cfg.stage_blocks), strict=True):
            up = nn.ConvTranspose2d(channels, width, 3, stride=2, padding=1, output_padding=1)
            layers.append(_stage(up, width, cfg, blocks))
            channels = width
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            z = torch.cat([z, condition.to(z.dtype)], 1)
        return self.net(z)


class BreedClassifier(nn.Module):
    """q(y|x): a residual CNN (stride-2 stages of `classifier_widths`), global average pooling,
    dropout, a linear layer to one logit per breed."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        stages, channels = [], 3
        for width in cfg.classifier_widths:
            conv = nn.Conv2d(channels, width, 3, stride=2, padding=1)
            stages.append(
                _stage(conv, width, cfg, cfg.classifier_blocks, cfg.classifier_activation)
            )
            channels = width
        self.features = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(cfg.classifier_dropout)
        self.logits = nn.Linear(channels, cfg.n_breeds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.dropout(self.features(x)))


def augment_for_classifier(x: torch.Tensor, max_shift: float = 1 / 16) -> torch.Tensor:
    """Per image, a random shift by whole pixels, up to `max_shift` of the side each way
    (reflected at the edges), and a left-right flip: the light augmentation a short CPU run
    learns best from (docs/results.md compares it with crops and colour jitter). The random
    numbers come from the CPU generator, so a resumed run draws the same ones.
    """
    n, side = len(x), x.shape[-1]
    most = int(max_shift * side)
    pixels = torch.randint(-most, most + 1, (n, 2)).float()
    mirror = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    # affine_grid spans [-1, 1]: a shift of 2k/side moves the image k whole pixels
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = mirror, 1.0, 2 * pixels / side
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


@dataclass
class MixedImages:
    """A batch mixed in pairs: image i is `share` of itself and the rest of image `partner[i]`,
    and its target the same mix of the two labels."""

    images: torch.Tensor
    partner: torch.Tensor
    share: float


def mix_images(
    x: torch.Tensor, kind: str, alpha: float = 1.0, among: torch.Tensor | None = None
) -> MixedImages:
    """CutMix (Yun et al. 2019: a box of the partner pasted in, `share` the area kept) or mixup
    (Zhang et al. 2018: the two blended), with share ~ Beta(alpha, alpha) and partners a random
    permutation of the images marked in `among` (default all; the others are their own partner,
    so they stay as they were). Random numbers come from the CPU generator, as a resumed run
    needs."""
    if kind not in CLASSIFIER_MIXES[1:]:
        raise ValueError(f"mix must be one of {', '.join(CLASSIFIER_MIXES[1:])}, not {kind!r}")
    partner = torch.arange(len(x))
    chosen = partner.clone() if among is None else torch.nonzero(among.cpu()).flatten()
    partner[chosen] = chosen[torch.randperm(len(chosen))]
    partner = partner.to(x.device)
    share = float(torch.distributions.Beta(alpha, alpha).sample())
    if kind == "mixup":
        return MixedImages(share * x + (1 - share) * x[partner], partner, share)
    side = x.shape[-1]
    cut = round(side * math.sqrt(1 - share))
    top, left = (int(v) for v in torch.randint(0, side - cut + 1, (2,)))
    images = x.clone()
    images[..., top : top + cut, left : left + cut] = x[
        partner, :, top : top + cut, left : left + cut
    ]
    return MixedImages(images, partner, 1 - cut * cut / (side * side))


def photo_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The photo (n = 1); and its mirror image (2); and, each mirrored too, four copies shifted
    diagonally by 3/64 of the side, reflected at the edges (10). Dogs face either way and sit
    anywhere in the frame, so the classifier's answer averaged over these is steadier (by how
    much: docs/results.md); the cost is one classifier pass per view.
    """
    views = [x]
    if n == 10:
        side, s = x.shape[-1], max(1, round(3 * x.shape[-1] / 64))
        padded = F.pad(x, (s, s, s, s), mode="reflect")
        for dy, dx in ((s, s), (-s, s), (s, -s), (-s, -s)):
            views.append(padded[:, :, s + dy : s + dy + side, s + dx : s + dx + side])
    if n >= 2:
        views += [v.flip(3) for v in views]
    return views


@dataclass
class DiagonalGaussian:
    """The posterior q(z | x): independent normals N(mean, exp(logvar)) per latent dimension."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, eps: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """mean + std * eps: a draw by the reparameterisation trick, with the standard-normal
        noise `eps` given (so a run can choose where it comes from) or drawn from `generator`."""
        if eps is None:
            eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + eps.to(self.mean.dtype) * self.std

    def mode(self) -> torch.Tensor:
        """The likeliest code, the mean: what the latent tasks use, so they are deterministic."""
        return self.mean

    def kl(self, per_dim: bool = False) -> torch.Tensor:
        """KL(q || N(0, I)) in nats, in float32: per image (B,), or (B, D) with `per_dim`."""
        dims = kl_per_dim(self.mean.float(), self.logvar.float())
        return dims if per_dim else dims.sum(1)


@dataclass
class VAEOutput:
    """A forward pass, what `objective` scores: the decoder's pixel logits and the posterior
    whose sample they were decoded from, one row per image."""

    logits: torch.Tensor
    posterior: DiagonalGaussian


@dataclass
class BreedCandidates:
    """The (image, breed) pairs M2 scores (`breed_candidates`): image `rows[i]` decoded as
    `breeds[i]`, its cost counted with weight `weights[i]` (which carries q(y|x)'s gradient)."""

    rows: torch.Tensor
    breeds: torch.Tensor
    weights: torch.Tensor


@dataclass
class SemiSupervisedOutput(VAEOutput):
    """An ssvae's forward pass: logits and posterior have one row per scored pair (`candidates`),
    `class_logits` one row per image (the classifier's, before the softmax)."""

    class_logits: torch.Tensor
    candidates: BreedCandidates
    class_mix: MixedImages | None = None  # what the classifier saw, when trained on mixes


class BaseVAE(nn.Module):
    """The contract shared by every dogvae model.

    Subclasses provide `encode(x, breed) -> (mu, logvar)` and `decode_logits(z, breed)`;
    images are float tensors (B, 3, H, W) with pixels in [0, 1]. Mixing and other latent tasks
    use the posterior mean (`embed`), never a sampled z, so they are deterministic.

    `conditional` says whether the breed argument changes anything (a plain VAE ignores it);
    `has_classifier` whether `classify(x)` gives breed logits (N, n_breeds). Training calls
    `noisy_forward(x, eps, breed)` and hands its `VAEOutput` to `objective`, labels included.
    """

    config: VAEConfig
    conditional: bool = False
    has_classifier: bool = False

    def encode(
        self, x: torch.Tensor, breed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor, breed: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor, breed: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes -> images in [0, 1] (the likelihood's mean)."""
        return torch.sigmoid(self.decode_logits(z, breed).float())

    def classify(self, x: torch.Tensor, views: int | None = None) -> torch.Tensor:
        raise NotImplementedError(f"a {self.config.model} model has no breed classifier")

    def resolve_breed(
        self, x: torch.Tensor, breed: torch.Tensor | None, scores: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The breed an image is encoded and decoded with when the caller gives `breed`;
        `scores`, if the caller has them, are `classify(x)`'s, not computed again."""
        return breed

    def validation_breed(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The labels the validation ELBO conditions on: none for models of p(x)."""
        return None

    def noisy_forward(
        self, x: torch.Tensor, eps: torch.Tensor, breed: torch.Tensor | None = None
    ) -> VAEOutput:
        """The forward pass with the reparameterisation noise `eps` (B, latent_dim) given."""
        posterior = DiagonalGaussian(*self.encode(x, breed))
        return VAEOutput(self.decode_logits(posterior.sample(eps), breed), posterior)

    def forward(self, x: torch.Tensor, breed: torch.Tensor | None = None) -> VAEOutput:
        eps = torch.randn(len(x), self.config.latent_dim, device=x.device)
        return self.noisy_forward(x, eps, breed)

    def loss(
        self, x: torch.Tensor, beta: float | None = None, breed: torch.Tensor | None = None
    ) -> LossOutput:
        """Training objective and its parts for a batch; `beta` overrides the config's weight."""
        return self.objective(x, self(x, breed), beta=beta, breed=breed)

    def objective(
        self,
        x: torch.Tensor,
        out: VAEOutput,
        beta: float | None = None,
        breed: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss of `noisy_forward`'s output (kept apart so DDP can wrap the forward alone).
        `breed` is unused here: the forward pass already conditioned on it."""
        beta = self.config.beta if beta is None else beta
        return vae_loss(x, out, self.config, self.log_scale, beta)

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """The optimiser's parameter groups (each clipped on its own): here one, decayed by
        the trainer's `weight_decay`."""
        return [{"params": [p for p in self.parameters() if p.requires_grad],
                 "weight_decay": weight_decay}]  # fmt: skip

    def save_pretrained(self, folder):
        """This model as one folder of weights and config (`dogvae.pretrained`)."""
        from dogvae.pretrained import save_pretrained

        return save_pretrained(self, folder)

    def bits_per_dim(self, elbo_nats: float) -> float:
        return bits_per_dim(elbo_nats, 3 * self.config.image_size**2)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, breed: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior means: the deterministic latent code of each image."""
        return self.encode(x, self.resolve_breed(x, breed))[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, breed: torch.Tensor | None = None) -> torch.Tensor:
        breed = self.resolve_breed(x, breed)
        return self.decode(self.encode(x, breed)[0], breed)

    def prior_breeds(self, n: int, breed, generator=None) -> torch.Tensor | None:
        """The breeds `sample` decodes with: `breed` (an index, or a tensor of n of them), else
        the model's own choice for an unknown breed."""
        device = next(self.parameters()).device
        if breed is None or torch.is_tensor(breed):
            return None if breed is None else breed.to(device)
        return torch.full((n,), int(breed), dtype=torch.long, device=device)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        breed: int | torch.Tensor | None = None,
        temperature: float = 1.0,
        generator=None,
    ) -> torch.Tensor:
        """n new dogs: z from the prior N(0, temperature^2 I), decoded as `breed` where the
        model is conditional (an index into `breeds`, or a tensor of n indices or weights)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z * temperature, self.prior_breeds(n, breed, generator))


class ConvVAE(BaseVAE):
    """Convolutional VAE with a configurable encoder/decoder (see `VAEConfig`)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        # what the weights mean and how their photos are cut (set when loaded); the
        # run's settings are its `dogvae.run.Run`'s
        self.breeds: list[str] = []  # index -> breed name
        self.crop: str = "center"  # "center" or "squash", as its training images were
        conditions = config.breed_embed_dim if self.conditional else 0
        self.encoder = Encoder(config, conditions)
        self.decoder = Decoder(config, conditions)
        # One learned global scale for Gaussian/Laplace likelihoods (unused by Bernoulli).
        # Starting at 0.1 of the pixel range keeps early training from ignoring the image.
        self.log_scale = nn.Parameter(
            torch.tensor(-2.3), requires_grad=config.likelihood != "bernoulli"
        )

    def encode(
        self, x: torch.Tensor, breed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor, breed: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z)


class BreedAwareVAE(ConvVAE):
    """A ConvVAE whose encoder heads and decoder also read a learned breed embedding.

    The table has a row per breed and one more for "unknown breed" (`breed_vector`).
    """

    conditional = True

    def __init__(self, config: VAEConfig):
        if config.n_breeds < 2:
            raise ValueError(f"a {config.model} model needs n_breeds >= 2, not {config.n_breeds}")
        super().__init__(config)
        self.breed_embedding = nn.Embedding(config.n_breeds + 1, config.breed_embed_dim)

    def unknown_breed_vector(self, n: int) -> torch.Tensor:
        """The embedding used for an image of unknown breed: the extra row."""
        return self.breed_embedding.weight[-1].expand(n, -1)

    def breed_vector(self, breed: torch.Tensor | None, n: int) -> torch.Tensor:
        """(n, breed_embed_dim): None or -1 is unknown; float (n, n_breeds) rows are mixing
        weights over the breeds' embeddings ((n, n_breeds + 1): the last weighs "unknown")."""
        if breed is None:
            return self.unknown_breed_vector(n)
        if breed.is_floating_point():  # weights over the breeds (and maybe "unknown" last)
            table = self.breed_embedding.weight[: breed.shape[1]]
            return breed.to(table.dtype) @ table
        known = breed >= 0
        vectors = self.breed_embedding(breed.clamp(min=0))
        return torch.where(known[:, None], vectors, self.unknown_breed_vector(n))

    def encode(
        self, x: torch.Tensor, breed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, self.breed_vector(breed, len(x)))

    def decode_logits(self, z: torch.Tensor, breed: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z, self.breed_vector(breed, len(z)))


class ConditionalVAE(BreedAwareVAE):
    """p(x | y) through z: a breed is drawn by decoding prior codes with its embedding, a dog
    restyled by encoding with its own breed and decoding with another, two breeds mixed by
    interpolating their embeddings with the same z."""

    def validation_breed(self, labels: torch.Tensor) -> torch.Tensor | None:
        return labels  # the cvae's ELBO bounds -log p(x | y): it is given the breed

    def noisy_forward(
        self, x: torch.Tensor, eps: torch.Tensor, breed: torch.Tensor | None = None
    ) -> VAEOutput:
        if self.training and breed is not None and self.config.breed_dropout > 0:
            # some labelled images train the "unknown breed" row, for photos without a label
            dropped = (torch.rand(len(breed)) < self.config.breed_dropout).to(breed.device)
            breed = torch.where(dropped, -1, breed)
        return super().noisy_forward(x, eps, breed)


def breed_candidates(
    probs: torch.Tensor, labels: torch.Tensor | None, top_k: int, u: torch.Tensor
) -> BreedCandidates:
    """Which (image, breed) pairs the M2 objective scores, and the weight of each.

    A labelled image is scored with its label, weight 1. An unlabelled image is scored with
    its `top_k` likeliest breeds under q(y|x), each weighted by its probability, plus one breed
    drawn from the rest in proportion to q (by inverse CDF at `u`, one uniform per image),
    weighted by the rest's whole mass. So sum_y q(y|x) f(y) is estimated without bias (exact
    when at most top_k + 1 breeds exist), with top_k + 1 decoder passes instead of n_breeds.
    """
    n, k_all = probs.shape
    unlabelled = torch.ones(n, dtype=torch.bool, device=probs.device)
    if labels is not None:
        unlabelled = labels < 0
    rows_l = (~unlabelled).nonzero().flatten()
    rows_u = unlabelled.nonzero().flatten()
    k = min(top_k, k_all)
    top_p, top_y = probs[rows_u].topk(k, dim=1)
    rows = [rows_l, rows_u.repeat_interleave(k)]
    breeds = [labels[rows_l] if labels is not None else rows_l, top_y.flatten()]
    weights = [probs.new_ones(len(rows_l)), top_p.flatten()]
    if k < k_all:
        rest = probs[rows_u].scatter(1, top_y, 0.0)
        rest_mass = rest.sum(1)
        cdf = rest.detach().cumsum(1)
        target = (u[rows_u].to(cdf) * rest_mass.detach())[:, None]
        drawn = torch.searchsorted(cdf, target).squeeze(1).clamp(max=k_all - 1)
        rows.append(rows_u)
        breeds.append(drawn)
        weights.append(rest_mass)
    return BreedCandidates(torch.cat(rows), torch.cat(breeds), torch.cat(weights))


class SemiSupervisedVAE(BreedAwareVAE):
    """Kingma et al. 2014's M2: p(y) p(z) p(x | y, z), inferred by q(y | x) q(z | x, y).

    Per image, in nats: a labelled image costs -ELBO(x, y) + alpha * CE(q(y|x), y); an
    unlabelled one costs sum_y q(y|x) (-ELBO(x, y)) - H(q(y|x)), the bound on -log p(x),
    estimated over `classifier_top_k` + 1 breeds (`breed_candidates`). -ELBO(x, y) includes
    -log p(y) = log n_breeds (a uniform prior). With no breed given, a photo is encoded and
    decoded as the classifier's likeliest breed; a code alone decodes with the average breed
    embedding, and prior samples draw their breed from p(y).
    """

    has_classifier = True

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.classifier = BreedClassifier(config)

    def classify(self, x: torch.Tensor, views: int | None = None) -> torch.Tensor:
        """log q(y|x) up to a constant. Out of training it averages the probabilities over
        `views` (by default `classifier_views`) views of the photo (`photo_views`)."""
        if self.training:
            return self.classifier(x)
        views = photo_views(x, views or self.config.classifier_views)
        log_probs = [torch.log_softmax(self.classifier(v).float(), 1) for v in views]
        return torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """The generative half, then the classifier with `classifier_weight_decay`, marked
        "classifier": the trainer gives it a schedule of its own (`group_schedules`) and does
        not clip its gradients with the generative half's (`clip_gradients`)."""
        own = {id(p) for p in self.classifier.parameters()}
        generative = [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        classifier = [p for p in self.classifier.parameters() if p.requires_grad]
        return [
            {"params": generative, "weight_decay": weight_decay},
            {"params": classifier, "weight_decay": self.config.classifier_weight_decay,
             "classifier": True},
        ]  # fmt: skip

    def unknown_breed_vector(self, n: int) -> torch.Tensor:
        return self.breed_embedding.weight[:-1].mean(0).expand(n, -1)

    def resolve_breed(
        self, x: torch.Tensor, breed: torch.Tensor | None, scores: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        if breed is not None:
            return breed
        return (self.classify(x) if scores is None else scores).argmax(1)

    def prior_breeds(self, n: int, breed, generator=None) -> torch.Tensor | None:
        if breed is not None:
            return super().prior_breeds(n, breed)
        device = next(self.parameters()).device
        return torch.randint(
            self.config.n_breeds, (n,), generator=generator, device=device, dtype=torch.long
        )

    def noisy_forward(
        self, x: torch.Tensor, eps: torch.Tensor, breed: torch.Tensor | None = None
    ) -> SemiSupervisedOutput:
        """The classifier's logits, and the decoder's for each (image, breed) pair that
        `breed_candidates` picks, image i's pairs all with noise `eps[i]`."""
        seen = augment_for_classifier(x) if self.training and self.config.classifier_augment else x
        mix = None
        if self.training and self.config.classifier_mix != "none" and breed is not None:
            mix = mix_images(seen, self.config.classifier_mix, self.config.classifier_mix_alpha,
                             among=breed >= 0)  # fmt: skip
            seen = mix.images
        class_logits = self.classifier(seen)
        # validation draws the same "rest" breed every time, so its figures are repeatable
        u = torch.rand(len(x)) if self.training else torch.full((len(x),), 0.5)
        probs = torch.softmax(class_logits.float(), 1)
        pairs = breed_candidates(probs, breed, self.config.classifier_top_k, u.to(x.device))
        condition = self.breed_vector(pairs.breeds, len(pairs.breeds))
        posterior = DiagonalGaussian(
            *self.encoder.heads(self.encoder.trunk(x)[pairs.rows], condition)
        )
        logits = self.decoder(posterior.sample(eps[pairs.rows]), condition)
        return SemiSupervisedOutput(logits, posterior, class_logits, pairs, mix)

    def objective(
        self,
        x: torch.Tensor,
        out: SemiSupervisedOutput,
        beta: float | None = None,
        breed: torch.Tensor | None = None,
    ) -> LossOutput:
        """M2's loss (`dogvae.losses.m2_loss`) of images `x` labelled `breed` (-1: unlabelled)."""
        beta = self.config.beta if beta is None else beta
        return m2_loss(x, out, breed, self.config, self.log_scale, beta)


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


MODEL_CLASSES = {"vae": ConvVAE, "cvae": ConditionalVAE, "ssvae": SemiSupervisedVAE}


def build_model(config: VAEConfig) -> BaseVAE:
    """The model `config.model` names."""
    return MODEL_CLASSES[config.model](config)
