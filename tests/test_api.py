"""videogen/api.py: `videogen.load(workdir).generate(...)`, against the tiny trained workdir."""

from __future__ import annotations

import contextlib
import os
import shutil

import jax
import numpy as np
import pytest

import videogen
from data_pipelines import video_io
from videogen import api
from videogen.generate import modes
from videogen.provenance import keys
from videogen.provenance import manifest
from videogen.provenance import watermark
from videogen.provenance import writer

# Two sampler steps and 5-frame clips (2 latent frames): every call takes well under a second
# once compiled.
STEPS = 2
FRAMES = 5
# The events jax records each time it traces a function for jit or builds an executable
# (compiled, or read from the persistent cache): a request that reuses the compiled programs
# records neither.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/backend_compile_duration")


@pytest.fixture(scope="module")
def workdir(tiny_workdir, tmp_path_factory) -> str:
  """A copy of the tiny workdir: `save` creates its provenance keys there."""
  copy = str(tmp_path_factory.mktemp("api") / "run")
  shutil.copytree(tiny_workdir, copy)  # the shared workdir is read-only
  return copy


@pytest.fixture(scope="module")
def model(workdir) -> api.Pipeline:
  return videogen.load(workdir, progress=False)


@pytest.fixture(scope="module")
def unmarked(model, workdir) -> api.Pipeline:
  """The same model, saving without the watermark."""
  return api.Pipeline(model.generator, writer.Stamp.for_workdir(workdir, watermark=False))


@contextlib.contextmanager
def count_compilations():
  """Yields a list that collects the name of every function jax traces or compiles inside."""
  compiled: list[str] = []

  def listener(event: str, duration: float, **kwargs) -> None:
    del duration
    if event in COMPILE_EVENTS:
      compiled.append(str(kwargs.get("fun_name", event)))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiled
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_load_is_the_package_entry_point():
  assert videogen.load is api.load
  assert videogen.Pipeline is api.Pipeline


def test_generate_returns_uint8_video_and_its_settings(model):
  result = model.generate("a red circle moving right", frames=FRAMES, steps=STEPS, seed=3)
  frames, height, width = model.default_shape
  assert result.video.dtype == np.uint8
  assert result.video.shape == (FRAMES, height, width, 3)
  assert (result.mode, result.seed, result.steps, result.new_frames) == ("t2v", 3, STEPS, FRAMES)
  assert result.fps == model.fps > 0
  assert result.seconds > 0 and result.real_time_factor > 0
  # Unset settings resolve to the experiment's sampler config, and the result says which.
  default = model.generate("a red circle", frames=FRAMES, steps=STEPS)
  assert default.seed == model.generator.sample_config.seed


def test_the_same_seed_gives_the_same_video(model):
  first = model.generate("a blue square moving down", frames=FRAMES, steps=STEPS, seed=7)
  again = model.generate("a blue square moving down", frames=FRAMES, steps=STEPS, seed=7)
  other = model.generate("a blue square moving down", frames=FRAMES, steps=STEPS, seed=8)
  np.testing.assert_array_equal(first.video, again.video)
  assert not np.array_equal(first.video, other.video)


def test_a_second_call_of_the_same_shape_compiles_nothing(model):
  model.generate("a red circle moving right", frames=FRAMES, steps=STEPS, seed=0)  # compiles
  with count_compilations() as compiled:
    model.generate("a large green triangle moving left", frames=FRAMES, steps=STEPS, seed=1,
                   guidance=3.0)
  assert compiled == [], f"a second request of the same shape compiled {compiled}"
  # The counter sees compilation: a function jax has not seen is traced and compiled.
  with count_compilations() as compiled:
    jax.jit(lambda x: x * 2 + 1)(np.arange(3.0))
  assert len(compiled) >= 2, f"the compilation counter is blind: {compiled}"


@pytest.mark.parametrize("mode", list(api.MODE_INPUTS))
def test_every_mode_keeps_its_given_frames(model, mode):
  _, height, width = model.default_shape
  clip = model.generate("a red circle moving right", frames=FRAMES, steps=STEPS, seed=0).video
  other = clip[::-1].copy()
  inputs = {"image": clip[0], "video": clip, "video2": other}
  result = model.generate("a red circle moving right", mode=mode, frames=FRAMES, steps=STEPS,
                          seed=1, strength=0.5,
                          **{name: inputs[name] for name in api.MODE_INPUTS[mode]})
  video = result.video
  assert result.mode == mode and video.dtype == np.uint8 and video.shape[1:] == (height, width, 3)
  factor = model.generator.temporal_factor
  if mode == "t2i":
    assert len(video) == 1
  elif mode == "i2v":
    assert len(video) == FRAMES
    np.testing.assert_array_equal(video[0], clip[0])
  elif mode == "extend":
    np.testing.assert_array_equal(video[:FRAMES], clip)
    assert len(video) == FRAMES + result.new_frames and result.new_frames % factor == 0
  elif mode == "extend_backward":
    np.testing.assert_array_equal(video[-FRAMES:], clip)
  elif mode == "connect":
    np.testing.assert_array_equal(video[:FRAMES], clip)
    np.testing.assert_array_equal(video[-FRAMES:], other)
  elif mode == "loop":
    assert len(video) == result.new_frames > FRAMES
  else:  # t2v, edit: a clip of the requested length
    assert len(video) == FRAMES


def test_save_writes_mp4_gif_and_an_exact_png(model, unmarked, tmp_path):
  clip = model.generate("a red circle moving right", frames=FRAMES, steps=STEPS)
  for suffix in (".mp4", ".gif"):
    path = model.save(clip, tmp_path / f"clip{suffix}")
    frames, fps = video_io.read_video(path)
    assert frames.shape == clip.video.shape and fps == pytest.approx(clip.fps, rel=0.1)
  image = model.generate("a yellow triangle", mode="t2i", steps=STEPS)
  path = unmarked.save(image, tmp_path / "sub" / "image.png")
  np.testing.assert_array_equal(video_io.read_image(path), image.video[0])
  # A file is an input too: image-to-video from the saved PNG opens with that image.
  marked = model.save(image, tmp_path / "sub" / "marked.png")
  animated = model.generate("a yellow triangle", mode="i2v", image=marked, frames=FRAMES,
                            steps=STEPS)
  np.testing.assert_array_equal(animated.video[0], video_io.read_image(marked))
  sheet = model.save(clip.video, tmp_path / "sheet.png")  # a longer video: a contact sheet
  assert video_io.read_image(sheet).shape[1] > clip.video.shape[2]
  assert manifest.verify(sheet).status == manifest.VALID


def _marks(found: np.ndarray, plain: np.ndarray, key: bytes, payload: bytes) -> float:
  """The correlation of a file's change from the generator's frames with the watermark pattern
  of `key` and `payload` (informed detection: the tiny model draws pixel noise, which hides a 40
  dB watermark from the blind detector, not from this)."""
  change = found.astype(np.float64).mean(-1) - plain.astype(np.float64).mean(-1)  # [T, H, W]
  pattern = watermark.pattern(key, payload, *plain.shape[1:3])
  return float(np.corrcoef(change.ravel(), np.broadcast_to(pattern, change.shape).ravel())[0, 1])


def test_save_watermarks_and_signs_by_default(model, workdir, tmp_path):
  result = model.generate("a blue square moving down", mode="t2i", steps=STEPS, seed=5)
  path = model.save(result, tmp_path / "blue.png")
  claim = manifest.verify(path, trust_anchor=keys.trust_anchor_file(workdir)).claim
  assert (claim["prompt"], claim["seed"], claim["mode"]) == (result.prompt, 5, "t2i")
  assert claim["checkpoint"] == model.stamp.checkpoint == writer.checkpoint_hash(workdir)
  payload = bytes.fromhex(claim["watermark"])
  assert payload[:2].hex() == claim["checkpoint"].removeprefix("sha256:")[:4]
  saved = video_io.read_image(path)[None]
  assert 40.0 <= watermark.psnr(result.video, saved) < 60.0  # changed, invisibly
  key = keys.watermark_key(workdir, create=False)
  assert _marks(saved, result.video, key, payload) > 0.9
  assert abs(_marks(saved, result.video, b"k" * 32, payload)) < 0.3  # the control: another key
  # On frames with a flat background, as a trained model draws, the blind detector reads it.
  flat = np.full((FRAMES, *result.video.shape[1:]), 40, np.uint8)
  flat[:, 8:20, 8:20] = (200, 30, 30)
  found = watermark.detect(video_io.read_video(model.save(flat, tmp_path / "flat.mp4"))[0], key)
  assert found.watermarked and found.payload[:2] == payload[:2]
  assert manifest.verify(tmp_path / "flat.mp4").claim["mode"] is None  # bare frames: unknown


def test_load_takes_a_key_file_and_turns_the_watermark_off(model, workdir, tmp_path):
  key_file = tmp_path / "mine.key"
  fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
  os.write(fd, (b"7e" * 32) + b"\n")
  os.close(fd)
  flat = np.full((FRAMES, 32, 32, 3), 90, np.uint8)
  mine = videogen.load(workdir, progress=False, key_file=key_file, include_prompt=False)
  found = watermark.detect(video_io.read_video(mine.save(flat, tmp_path / "mine.mp4"))[0],
                           b"\x7e" * 32)
  assert found.watermarked and not mine.stamp.include_prompt
  off = videogen.load(workdir, progress=False, watermark=False)
  np.testing.assert_array_equal(video_io.read_image(off.save(flat[:1], tmp_path / "off.png")),
                                flat[0])
  with pytest.raises(keys.KeyFileError, match="missing.key does not exist"):
    videogen.load(workdir, progress=False, key_file=tmp_path / "missing.key")


def test_the_shared_workdir_gets_no_keys(tiny_workdir):
  assert not os.path.exists(os.path.join(tiny_workdir, "provenance"))


def test_mode_inputs_cover_every_mode():
  assert list(api.MODE_INPUTS) == list(modes.MODES)
  for mode, names in api.MODE_INPUTS.items():
    assert len(names) == modes.MODES[mode][0], mode


def test_user_errors_say_what_to_do(model, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*videogen.main run"):
    videogen.load(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"no checkpoint .*train it first"):
    videogen.load(tmp_path)
  with pytest.raises(ValueError, match=r"prompt is empty.*model.generate\('a red circle"):
    model.generate("  ")
  with pytest.raises(ValueError, match=r"unknown mode 'video'.*t2v, t2i, i2v"):
    model.generate("a red circle", mode="video")
  with pytest.raises(ValueError, match=r"mode 'i2v' .* takes image=; pass image="):
    model.generate("a red circle", mode="i2v")
  clip = np.zeros((FRAMES, 32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match=r"mode 't2v' .* takes no input frames; drop video="):
    model.generate("a red circle", video=clip)
  with pytest.raises(ValueError, match=r"video must be uint8 frames"):
    model.generate("a red circle", mode="extend", video=clip.astype(np.float32))
  with pytest.raises(FileNotFoundError, match=r"missing.mp4 does not exist"):
    model.generate("a red circle", mode="extend", video=os.path.join(tmp_path, "missing.mp4"))
  with pytest.raises(ValueError, match=r"choose 'euler' or 'heun'"):
    model.generate("a red circle", sampler="ddim")
  with pytest.raises(ValueError, match=r"cannot save .*\.webp: name the file \.mp4, \.gif, \.png"):
    model.save(clip, tmp_path / "clip.webp")
