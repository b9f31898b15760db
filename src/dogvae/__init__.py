"""dogvae: train a VAE on dog photos and ask its latent space questions."""

__version__ = "0.1.0"


def load(run, device="cpu"):
    """A trained model from a run folder, ready for inference on `device` ("cpu", "cuda" or
    "auto"; see `dogvae.checkpoint.load`)."""
    from dogvae.checkpoint import load as load_run

    return load_run(run, device)
