"""videogen/generate/modes.py: every mode end to end on a tiny random model.

Shapes, the given frames kept verbatim, determinism for a seed. With F = 2 (the conftest
autoencoder) and a 5-latent window, every request below samples windows of 5 latent frames.
"""

import numpy as np
import pytest

from videogen.generate import modes

PROMPT = "a red square moving right"


def _run(generator, clip, mode, seed):
  """(result, the given frames and where the output must hold them verbatim)."""
  first, second = clip[:5], clip[4:][::-1].copy()
  if mode == "t2v":
    return modes.text_to_video(generator, PROMPT, frames=9, seed=seed), []
  if mode == "i2v":
    result = modes.image_to_video(generator, PROMPT, clip[3], frames=9, seed=seed)
    return result, [(slice(0, 1), clip[3:4])]
  if mode == "extend":
    result = modes.extend(generator, PROMPT, first, frames=6, seed=seed)
    return result, [(slice(0, 5), first)]
  if mode == "extend_backward":
    result = modes.extend(generator, PROMPT, first, frames=7, backward=True, seed=seed)
    return result, [(slice(7, 12), first)]
  if mode == "connect":
    result = modes.connect(generator, PROMPT, first, second, frames=4, seed=seed)
    return result, [(slice(0, 5), first), (slice(9, 14), second)]
  if mode == "loop":
    return modes.loop(generator, PROMPT, frames=9, bridge_frames=4, seed=seed), []
  if mode == "edit":
    return modes.edit(generator, PROMPT, clip, strength=0.7, seed=seed), []
  raise AssertionError(mode)


# mode -> (output frames, new frames).
EXPECTED = {
    "t2v": (9, 9), "i2v": (9, 8), "extend": (11, 6), "extend_backward": (12, 7),
    "connect": (14, 4), "loop": (13, 13), "edit": (9, 9),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_mode_end_to_end(generator, clip, mode):
  result, given = _run(generator, clip, mode, seed=5)
  frames, new_frames = EXPECTED[mode]
  assert result.video.shape == (frames, 16, 16, 3) and result.video.dtype == np.uint8
  assert result.new_frames == new_frames and result.mode == mode
  assert result.seconds > 0 and result.real_time_factor > 0
  for where, frames_given in given:
    np.testing.assert_array_equal(result.video[where], frames_given)
  again, _ = _run(generator, clip, mode, seed=5)
  np.testing.assert_array_equal(result.video, again.video)
  other, _ = _run(generator, clip, mode, seed=6)
  assert np.any(result.video != other.video)
  for where, frames_given in given:  # another seed changes only the new frames
    np.testing.assert_array_equal(other.video[where], frames_given)


def test_text_to_image_is_one_frame(generator):
  result = modes.text_to_image(generator, PROMPT, seed=0)
  assert result.video.shape == (1, 16, 16, 3) and result.new_frames == 1


def test_loop_ends_with_a_bridge_back_to_its_start(generator, monkeypatch):
  calls = []
  original = generator.generate

  def recording(prompt, **kwargs):
    calls.append(kwargs)
    return original(prompt, **kwargs)

  monkeypatch.setattr(generator, "generate", recording)
  result = modes.loop(generator, PROMPT, frames=9, bridge_frames=4, seed=1)
  clip = result.video[:9]
  assert len(calls) == 2
  np.testing.assert_array_equal(calls[1]["before"], clip)
  np.testing.assert_array_equal(calls[1]["after"], clip)
  assert calls[1]["stream"] != calls[0].get("stream", 0)  # the bridge draws its own noise


def test_inputs_are_fitted_to_the_requested_size(generator, clip):
  # A 16x16 clip extended at 16x24: the input is scaled and centre-cropped, then kept verbatim.
  result = modes.extend(generator, PROMPT, clip[:5], frames=6, height=16, width=24, seed=0)
  assert result.video.shape == (11, 16, 24, 3)
  from videogen.generate import pipeline  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(result.video[:5], pipeline.fit_frames(clip[:5], 16, 24))


def test_long_videos_come_in_windows(generator):
  result = modes.text_to_video(generator, PROMPT, frames=15, seed=0)
  assert result.video.shape == (15, 16, 16, 3)


def test_run_dispatches_and_checks_inputs(generator, clip):
  result = modes.run(generator, "extend", PROMPT, inputs=(clip[:5],), frames=6, seed=5)
  expected, _ = _run(generator, clip, "extend", seed=5)
  np.testing.assert_array_equal(result.video, expected.video)
  with pytest.raises(ValueError, match="takes 2 input"):
    modes.run(generator, "connect", PROMPT, inputs=(clip,))
  with pytest.raises(ValueError, match="unknown mode 'zoom'"):
    modes.run(generator, "zoom", PROMPT)


def test_bad_inputs_are_clear_errors(generator, clip):
  with pytest.raises(ValueError, match="uint8 frames"):
    modes.extend(generator, PROMPT, clip.astype(np.float32), frames=6)
  with pytest.raises(ValueError, match="prompt is empty"):
    modes.image_to_video(generator, "", clip[0], frames=9)
  with pytest.raises(ValueError, match="bridge_frames = 0 must be at least 1"):
    modes.loop(generator, PROMPT, frames=9, bridge_frames=0)
