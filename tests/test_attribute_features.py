"""The representation-alignment study's per-token attribute maps match the rendered clips."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world

SCRIPT = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "studies"
          / "attribute_features.py")


@pytest.fixture(scope="module")
def features_lib():
  spec = importlib.util.spec_from_file_location("attribute_features", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_latent_frames_group_pixel_frames_as_the_causal_autoencoder_does(features_lib):
  assert features_lib.latent_frame_groups(9, 2) == [[0], [1, 2], [3, 4], [5, 6], [7, 8]]
  assert features_lib.latent_frame_groups(1, 2) == [[0]]


@pytest.mark.parametrize("index", [0, 3, 11])
def test_maps_cover_the_objects_where_the_clip_shows_them(features_lib, index):
  config = world.WorldConfig()
  clip = world.generate(index, seed=0, frames=9, height=32, width=32, config=config)
  maps = features_lib.scene_features(index, seed=0, world=config, frames=9, height=32, width=32,
                                     temporal_factor=2, token_pixels=8)
  names = features_lib.feature_names()
  assert maps.shape == (5, 4, 4, len(names) + 1)

  # Where the first frame differs from its background, per 8x8 token, against the maps' cover.
  background = np.asarray(vocabulary.BACKGROUNDS[clip["background"]], np.float32)
  shown = (np.abs(clip["video"][0].astype(np.float32) - background).sum(-1) > 30)
  shown = shown.reshape(4, 8, 4, 8).mean(axis=(1, 3))
  background_channels = [i for i, n in enumerate(names) if n.startswith("background:")]
  cover = 1.0 - maps[0][..., background_channels].sum(-1)
  assert np.corrcoef(shown.ravel(), cover.ravel())[0, 1] > 0.9
  np.testing.assert_allclose(maps[..., -1], 0.1 + np.clip(1.0 - maps[..., background_channels]
                                                           .sum(-1), 0.0, 1.0), atol=1e-5)

  # Every object adds its cover once to each attribute: the four groups carry equal mass.
  groups = {kind: [i for i, n in enumerate(names) if n.startswith(kind + ":")]
            for kind in ("shape", "colour", "size", "motion")}
  masses = {kind: maps[..., channels].sum() for kind, channels in groups.items()}
  assert masses["shape"] > 0
  for kind in ("colour", "size", "motion"):
    np.testing.assert_allclose(masses[kind], masses["shape"], rtol=1e-5)
  for obj in clip["objects"]:  # colours are distinct in the default world
    assert maps[..., names.index(f"colour:{obj['color']}")].sum() > 0
