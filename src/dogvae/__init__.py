"""dogvae: train a VAE on dog photos and ask its latent space questions."""

__version__ = "0.1.0"
