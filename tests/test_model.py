"""The model contract: shapes per preset, the original's parameter count, the posterior and
the typed forward output, losses by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dogvae.losses import bits_per_dim, kl_per_dim, kl_with_free_bits, reconstruction_nll
from dogvae.model import (
    PRESETS,
    DiagonalGaussian,
    VAEConfig,
    VAEOutput,
    build_model,
    count_parameters,
    preset_config,
)

TINY = {"image_size": 16, "latent_dim": 4, "enc_widths": (4, 8), "dec_widths": (8, 4),
        "dec_start_channels": 8}  # fmt: skip


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_encodes_and_decodes_images_of_its_size(name):
    torch.manual_seed(0)
    model = build_model(preset_config(name)).eval()
    size, latent = model.config.image_size, model.config.latent_dim
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        recon = model.decode(mu)
    assert mu.shape == logvar.shape == (2, latent)
    assert recon.shape == x.shape
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    assert model.sample(3).shape == (3, 3, size, size)


def test_seed_preset_has_the_keras_models_parameter_count():
    model = build_model(preset_config("seed"))
    # Keras counts BatchNorm's moving mean and variance as (non-trainable) parameters.
    assert count_parameters(model, keras_style=True) == 43_413_091
    assert count_parameters(model) == 43_413_091 - 2 * 21_040  # 21,040 BatchNorm channels


def test_presets_are_not_mutated_through_preset_config():
    before = preset_config("small64")
    cfg = preset_config("small64")
    cfg.latent_dim = before.latent_dim + 1
    assert preset_config("small64") == before


def test_config_rejects_an_image_size_the_stages_cannot_halve():
    with pytest.raises(ValueError, match="a positive multiple of 2\\^4"):
        VAEConfig(image_size=60)
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="unknown VAEConfig fields: colour"):
        VAEConfig.from_dict({"colour": 1})


def test_blocks_per_stage_accepts_one_count_or_one_per_stage_and_the_decoder_mirrors_it():
    assert VAEConfig(blocks_per_stage=2).stage_blocks == (2, 2, 2, 2)
    two_stages = VAEConfig(blocks_per_stage=1, enc_widths=(8, 16), dec_widths=(8, 8))
    assert two_stages.stage_blocks == (1, 1)
    assert VAEConfig.from_dict({"blocks_per_stage": [0, 1, 1, 2]}).stage_blocks == (0, 1, 1, 2)
    with pytest.raises(ValueError, match="blocks_per_stage needs one non-negative count per stage"):
        VAEConfig(blocks_per_stage=(1, 1))
    model = build_model(VAEConfig(blocks_per_stage=(0, 1, 0, 2)))

    def residual_blocks(stages):
        return [sum(type(m).__name__ == "ResidualBlock" for m in stage) for stage in stages]

    encoder_stages = list(model.encoder.features)[:-1]  # the last is Flatten
    decoder_stages = [m for m in model.decoder.net if isinstance(m, torch.nn.Sequential)]
    decoder_stages = [s for s in decoder_stages if isinstance(s[0], torch.nn.ConvTranspose2d)]
    assert residual_blocks(encoder_stages) == [0, 1, 0, 2]
    assert residual_blocks(decoder_stages) == [2, 0, 1, 0]


def test_kl_matches_a_monte_carlo_estimate():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.7, -1.2, 0.0]]), torch.tensor([[-0.5, 0.3, -2.0]])
    posterior = DiagonalGaussian(mu, logvar)
    z = posterior.sample(torch.randn(400_000, 3))
    log_q = torch.distributions.Normal(mu, posterior.std).log_prob(z)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    monte_carlo = (log_q - log_p).mean(0)
    assert torch.allclose(posterior.kl(per_dim=True)[0], monte_carlo, atol=0.01)
    assert torch.equal(posterior.kl(per_dim=True), kl_per_dim(mu, logvar))


def test_the_posterior_kl_is_the_closed_form_summed_over_dimensions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    posterior = DiagonalGaussian(mu, logvar)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    closed_form = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0))
    assert posterior.kl().shape == (5,)
    assert torch.allclose(posterior.kl(), closed_form.sum(1), rtol=1e-5)
    assert torch.allclose(posterior.std, q.stddev)
    half = DiagonalGaussian(mu.half(), logvar.half())
    assert half.kl().dtype == torch.float32, "the KL is summed in float32 under autocast"


def test_the_posterior_mode_is_its_mean_and_a_sample_is_mean_plus_std_times_the_noise():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.log(torch.tensor([[4.0, 0.25]]))
    posterior = DiagonalGaussian(mu, logvar)
    assert torch.equal(posterior.mode(), mu)
    eps = torch.tensor([[0.5, -1.0]])
    assert torch.allclose(posterior.sample(eps), torch.tensor([[1.0 + 2 * 0.5, -2.0 - 0.5]]))
    draws = [posterior.sample(generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]), "the same generator seed, the same draw"
    many = DiagonalGaussian(mu.expand(100_000, 2), logvar.expand(100_000, 2)).sample()
    assert torch.allclose(many.mean(0), mu[0], atol=0.02)
    assert torch.allclose(many.std(0), torch.tensor([2.0, 0.5]), atol=0.02)


def test_the_forward_pass_decodes_the_posterior_sample_its_noise_gives():
    torch.manual_seed(0)
    model = build_model(VAEConfig(**TINY)).eval()
    x, eps = torch.rand(3, 3, 16, 16), torch.randn(3, 4)
    with torch.no_grad():
        out = model.noisy_forward(x, eps)
        mu, logvar = model.encode(x)
        expected = model.decode_logits(mu + eps * torch.exp(0.5 * logvar))
    assert isinstance(out, VAEOutput)
    assert torch.equal(out.posterior.mean, mu) and torch.equal(out.posterior.logvar, logvar)
    assert torch.allclose(out.logits, expected)
    assert torch.equal(model.embed(x), out.posterior.mode())


def test_reconstruction_nll_matches_hand_computation():
    x = torch.tensor([0.0, 1.0, 0.25]).view(1, 3, 1, 1)
    logits = torch.tensor([0.0, 2.0, -1.0]).view(1, 3, 1, 1)
    mean = [0.5, 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))]
    bce = -sum(
        xi * math.log(m) + (1 - xi) * math.log(1 - m)
        for xi, m in zip([0, 1, 0.25], mean, strict=True)
    )
    got = reconstruction_nll(x, logits, "bernoulli", torch.tensor(0.0))
    assert got.item() == pytest.approx(bce, rel=1e-5)

    sigma = 0.2
    gauss = sum(
        0.5 * ((xi - m) / sigma) ** 2 + math.log(sigma) + 0.5 * math.log(2 * math.pi)
        for xi, m in zip([0, 1, 0.25], mean, strict=True)
    )
    got = reconstruction_nll(x, logits, "gaussian", torch.tensor(math.log(sigma)))
    assert got.item() == pytest.approx(gauss, rel=1e-5)

    b = 0.1
    laplace = sum(
        abs(xi - m) / b + math.log(2 * b) for xi, m in zip([0, 1, 0.25], mean, strict=True)
    )
    got = reconstruction_nll(x, logits, "laplace", torch.tensor(math.log(b)))
    assert got.item() == pytest.approx(laplace, rel=1e-5)


def test_loss_is_reconstruction_plus_beta_times_kl_and_elbo_ignores_beta():
    torch.manual_seed(0)
    model = build_model(VAEConfig(**TINY))
    x = torch.rand(5, 3, 16, 16)
    forward = model(x)
    out = model.objective(x, forward, beta=0.25)
    recon = reconstruction_nll(x, forward.logits, "gaussian", model.log_scale).mean()
    kl = kl_per_dim(forward.posterior.mean, forward.posterior.logvar).sum(1).mean()
    assert out.reconstruction.item() == pytest.approx(recon.item(), rel=1e-6)
    assert out.kl.item() == pytest.approx(kl.item(), rel=1e-6)
    assert out.total.item() == pytest.approx((recon + 0.25 * kl).item(), rel=1e-6)
    assert out.elbo.item() == pytest.approx((recon + kl).item(), rel=1e-6)


def test_free_bits_floor_each_dimension_but_keep_larger_ones():
    kl_dims = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # batch means 0.2 and 3.0
    assert kl_with_free_bits(kl_dims, 0.0).item() == pytest.approx(3.2)
    assert kl_with_free_bits(kl_dims, 0.5).item() == pytest.approx(3.5)


def test_bits_per_dim_converts_nats_on_unit_pixels_to_8_bit_code_length():
    # A uniform density on [0, 1] (0 nats) is exactly 8 bits per 8-bit sub-pixel.
    assert bits_per_dim(0.0, 12) == pytest.approx(8.0)
    assert bits_per_dim(12 * math.log(2), 12) == pytest.approx(9.0)
