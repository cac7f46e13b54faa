"""videogen/evaluate/suite.py: the generation suite is fixed and states what its prompts say."""

from __future__ import annotations

import pytest

from data_pipelines.shapes import world
from videogen.evaluate import suite as suite_lib

CONFIG = suite_lib.GenerationEvalConfig(scenes_per_group=2)


@pytest.fixture(scope="module")
def suite():
  return suite_lib.build_suite(CONFIG, default_shape=(9, 32, 32))


def test_suite_is_fixed_and_holds_both_groups_and_caption_kinds(suite):
  again = suite_lib.build_suite(CONFIG, default_shape=(9, 32, 32))
  assert [p.text for p in again.prompts] == [p.text for p in suite.prompts]
  assert len(suite.prompts) == 2 * 2 * 2  # groups x scenes x caption kinds
  assert len(suite.cases) == 2 * 2 * 2    # groups x scenes x (extend, i2v)
  held_out = world.WorldConfig().held_out
  for prompt in suite.prompts:
    has_held_out = any(world.is_held_out(o, held_out) for o in prompt.scene.objects)
    assert has_held_out == (prompt.group == "held_out"), prompt.text
    stated = set().union(*(set(e) for e in prompt.expected))
    if prompt.kind == "brief":
      # A brief caption names colour and shape (sizes only in some scenes), never motion.
      assert {"color", "shape"} <= stated and not stated & {"direction", "bounces"}
      assert ("size" in stated) == prompt.scene.brief_with_sizes
    else:
      assert {"color", "shape", "size", "direction", "bounces"} <= stated
      assert prompt.background == prompt.scene.background
  # Bouncing scenes were preferred, so bounce accuracy has objects to score.
  assert any(e.get("score_bounces") for p in suite.prompts for e in p.expected)


def test_suite_settings_are_checked():
  with pytest.raises(ValueError, match="unknown mode"):
    suite_lib.GenerationEvalConfig(modes=("t2i",))
  with pytest.raises(ValueError, match="scenes_per_group"):
    suite_lib.GenerationEvalConfig(scenes_per_group=0)
