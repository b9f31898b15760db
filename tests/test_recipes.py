"""Training recipes: every preset has one, and `TrainConfig.resolved` takes what is not given."""

from __future__ import annotations

import dataclasses

import pytest

from dogvae.model import PRESETS
from dogvae.recipes import TRAINING_RECIPES
from dogvae.train import TrainConfig


def test_every_model_preset_has_a_training_recipe_and_no_recipe_lacks_a_preset():
    assert set(TRAINING_RECIPES) == set(PRESETS)


def test_every_recipe_field_is_a_train_config_field_left_open_by_default():
    open_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.default is None}
    recipe_fields = {f.name for f in dataclasses.fields(next(iter(TRAINING_RECIPES.values())))}
    assert recipe_fields <= open_fields


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_trains_by_its_recipe_unless_a_setting_is_given(preset):
    recipe = dataclasses.asdict(TRAINING_RECIPES[preset])
    resolved = TrainConfig(data="d", out="o", preset=preset).resolved()
    assert {name: getattr(resolved, name) for name in recipe} == recipe
    given = TrainConfig(data="d", out="o", preset=preset, lr=recipe["lr"] * 3, grad_clip=0.5)
    mine = given.resolved()
    assert (mine.lr, mine.grad_clip) == (recipe["lr"] * 3, 0.5)
    assert mine.batch_size == recipe["batch_size"], "the settings not given keep the recipe's"
