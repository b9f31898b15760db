"""How each preset trains: the training settings a `dogvae.model.PRESETS` shape was designed for.

A model preset says what the network is; its recipe here says how `dogvae train` trains it
when a setting is not given (`TrainConfig.resolved` fills every `None` field from it). The
`seed` recipe is the original Keras script's: Adam at a constant 1e-4, batches of 32, no weight
decay, warm-up or gradient clipping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainRecipe:
    """The defaults of the `TrainConfig` fields of the same names."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 5.0
    lr_schedule: str = "cosine"  # after the warm-up; or "constant"
    compile: bool = False


TRAINING_RECIPES: dict[str, TrainRecipe] = {
    "seed": TrainRecipe(
        epochs=30,
        batch_size=32,
        lr=1e-4,
        weight_decay=0.0,
        warmup_steps=0,
        grad_clip=0.0,
        lr_schedule="constant",
    ),  # fmt: skip
    "small64": TrainRecipe(epochs=40, batch_size=64, lr=2e-3),
    "res64": TrainRecipe(epochs=40, batch_size=64, lr=1e-3),
    "res128": TrainRecipe(epochs=60, batch_size=32, lr=1e-3),
}
