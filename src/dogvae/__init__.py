"""dogvae: train a VAE on dog photos and ask its latent space questions."""

__version__ = "0.1.0"


def load(run, device="cpu"):
    """A trained model from a run folder, ready for inference on `device` ("cpu", "cuda" or
    "auto"; see `dogvae.checkpoint.load`)."""
    from dogvae.checkpoint import load as load_run

    return load_run(run, device)


def from_pretrained(source, device="cpu", **hub):
    """A model from a `save_pretrained` folder, a run folder or a Hugging Face Hub id (see
    `dogvae.pretrained.from_pretrained`)."""
    from dogvae.pretrained import from_pretrained as load_pretrained

    return load_pretrained(source, device, **hub)
