"""videogen/generate/command.py: requests, prompts files, outputs and the command's errors."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import video_io
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from data_pipelines.shapes import world
from videogen.generate import command
from videogen.generate import modes
from videogen.generate import pipeline
from videogen.provenance import keys
from videogen.provenance import manifest
from videogen.provenance import watermark
from videogen.provenance import writer
from tests.helpers import provenance

CLAIM = {"mode": "t2v", "seed": 0, "prompt": "a red circle"}


@pytest.fixture
def tiny_experiment(tiny_workdir_config):
  """The experiment of the session's tiny workdir, without training it."""
  return experiment_lib.validate(tiny_workdir_config)


@pytest.fixture
def unmarked(tmp_path):
  """A stamp that writes the frames as they are (the watermark off; signed, into `run`)."""
  return writer.Stamp.for_workdir(tmp_path / "run", watermark=False)


@pytest.fixture
def no_load(monkeypatch):
  """Fails the test if the command loads the model (it must refuse before)."""
  def load(*args, **kwargs):
    pytest.fail("the model was loaded before the request was refused")
  monkeypatch.setattr(pipeline, "load", load)


def test_request_from_mapping_takes_defaults_and_checks_types():
  defaults = command.Request(prompt="", seed=7, steps=3)
  request = command.Request.from_mapping({"prompt": "a red circle", "frames": 9}, "f:1",
                                         defaults)
  assert (request.prompt, request.frames, request.seed, request.steps) == ("a red circle", 9, 7, 3)
  assert request.options() == {"seed": 7, "steps": 3}
  with pytest.raises(ValueError, match=r"f:2: unknown key\(s\) frame;"):
    command.Request.from_mapping({"prompt": "x", "frame": 9}, "f:2")
  with pytest.raises(ValueError, match="f:3: frames = '9' must be an integer"):
    command.Request.from_mapping({"prompt": "x", "frames": "9"}, "f:3")
  with pytest.raises(ValueError, match="f:4: frames = True must be an integer"):
    command.Request.from_mapping({"prompt": "x", "frames": True}, "f:4")
  with pytest.raises(ValueError, match="f:5: the prompt is empty"):
    command.Request.from_mapping({"prompt": " "}, "f:5")
  with pytest.raises(ValueError, match="f:6: mode = 'zoom'; choose one of: t2v"):
    command.Request.from_mapping({"prompt": "x", "mode": "zoom"}, "f:6")
  with pytest.raises(ValueError, match="f:7: mode 'connect' .* takes input and input2; got input$"):
    command.Request.from_mapping({"prompt": "x", "mode": "connect", "input": "a.mp4"}, "f:7")


def test_read_requests_names_the_bad_line(tmp_path):
  path = tmp_path / "prompts.jsonl"
  path.write_text('{"prompt": "a red circle"}\n\n{"prompt": "a blue square", "seed": 2}\n'
                  '{"prompt": "A Blue square!", "mode": "t2i"}\n{"prompt": "x", "out": "x.gif"}\n')
  requests = command.read_requests(str(path), command.Request(prompt="", seed=9))
  assert [(where, r.prompt, r.seed) for where, r in requests] == [
      (f"{path}:1", "a red circle", 9), (f"{path}:3", "a blue square", 2),
      (f"{path}:4", "A Blue square!", 9), (f"{path}:5", "x", 9)]
  # Outputs named after the line and the prompt (a PNG for t2i), or the line's own.
  assert [r.out for _, r in requests] == ["001-a-red-circle.mp4", "003-a-blue-square.mp4",
                                          "004-a-blue-square.png", "x.gif"]
  path.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square",}\n')
  with pytest.raises(ValueError, match="prompts.jsonl:2: not a JSON object"):
    command.read_requests(str(path), command.Request(prompt=""))
  path.write_text('{"prompt": "a red circle", "mode": "extend", "input": "gone.mp4"}\n')
  with pytest.raises(FileNotFoundError, match="prompts.jsonl:1: input = 'gone.mp4' does not exist"):
    command.read_requests(str(path), command.Request(prompt=""))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    command.read_requests(str(tmp_path / "missing.jsonl"), command.Request(prompt=""))


def test_write_outputs_writes_a_gif_beside_the_mp4(tmp_path, clip, unmarked):
  paths = command.write_outputs(clip, str(tmp_path / "out.mp4"), fps=8, stamp=unmarked,
                                claim=CLAIM).paths
  assert paths == [str(tmp_path / "out.mp4"), str(tmp_path / "out.gif")]
  assert all(os.path.getsize(p) > 0 for p in paths)
  np.testing.assert_array_equal(video_io.read_video(paths[1])[0], clip)
  with pytest.raises(ValueError, match="name the output .mp4"):
    command.write_outputs(clip, str(tmp_path / "out.avi"), fps=8, stamp=unmarked, claim=CLAIM)
  assert command.write_outputs(clip[:1], str(tmp_path / "one.png"), fps=8, stamp=unmarked,
                               claim=CLAIM).paths == [str(tmp_path / "one.png")]
  np.testing.assert_array_equal(video_io.read_image(tmp_path / "one.png"), clip[0])
  with pytest.raises(ValueError, match="a .png holds one image, the video has 9 frames"):
    command.write_outputs(clip, str(tmp_path / "nine.png"), fps=8, stamp=unmarked, claim=CLAIM)


@pytest.mark.parametrize("prompt, number, mode, name", [
    ("a red circle moving right", 3, "t2v", "003-a-red-circle-moving-right.mp4"),
    ("A Red circle, moving up-left!", 12, "edit", "012-a-red-circle-moving-up-left.mp4"),
    ("a blue square", 1, "t2i", "001-a-blue-square.png"),
    ("???", 7, "t2v", "007-video.mp4"),
    ("a " * 40, 2, "t2v", "002-" + "-".join(["a"] * 24) + ".mp4"),
])
def test_output_name_comes_from_the_line_and_the_prompt(prompt, number, mode, name):
  assert command.output_name(command.Request(prompt=prompt, mode=mode), number) == name
  assert command.output_name(command.Request(prompt=prompt, mode=mode, out="mine.gif"),
                             number) == "mine.gif"


def test_generate_many_writes_videos_a_manifest_and_a_gallery(generator, clip, tmp_path,
                                                              unmarked):
  video_io.write_video(tmp_path / "input.gif", clip[:5], fps=8)
  (tmp_path / "broken.gif").write_bytes(b"not a gif")
  requests = [command.Request(prompt="a red circle", frames=9, seed=1),
              command.Request(prompt="a red circle", mode="edit",
                              input=str(tmp_path / "broken.gif")),
              command.Request(prompt="a red circle", mode="extend", frames=6,
                              input=str(tmp_path / "input.gif"), out="extended.mp4")]
  manifest, failed = command.generate_many(generator, requests, str(tmp_path / "out"), unmarked)
  entries = [json.loads(line) for line in open(manifest)]
  assert failed == 1 and "broken.gif" in entries[1]["error"]  # the others still ran
  del entries[1]
  assert [e["shape"] for e in entries] == [[9, 16, 16, 3], [11, 16, 16, 3]]
  # The settings actually used, so that a manifest line makes the same video again.
  used = generator.sample_config
  assert [(e["request"]["seed"], e["request"]["steps"], e["request"]["sampler"],
           e["request"]["guidance"]) for e in entries] == [
               (1, used.num_steps, used.method, used.guidance_scale),
               (used.seed, used.num_steps, used.method, used.guidance_scale)]
  assert entries[0]["files"][0] == str(tmp_path / "out" / "001-a-red-circle.mp4")
  assert entries[1]["files"] == [str(tmp_path / "out" / "extended.mp4"),
                                 str(tmp_path / "out" / "extended.gif")]
  assert all(e["real_time_factor"] > 0 for e in entries)
  assert [e["watermark"] for e in entries] == [None, None]  # the stamp's watermark is off
  frames, _ = video_io.read_video(entries[1]["files"][1])
  np.testing.assert_array_equal(frames[:5], clip[:5])  # the input, verbatim (a lossless gif)
  assert os.path.exists(tmp_path / "out" / "index.html")


def test_command_usage_errors(tmp_path, capsys):
  assert command.command(None, str(tmp_path), prompt=None, out="x.mp4") == 2
  assert "generate needs --prompt" in capsys.readouterr().err
  assert command.command(None, str(tmp_path), prompt="a red circle", out=None) == 2
  assert "generate needs --out" in capsys.readouterr().err
  assert command.command(None, None) == 2
  assert "generate needs --workdir" in capsys.readouterr().err
  assert command.command(None, str(tmp_path), prompt="a red circle", out=str(tmp_path / "x.mp4"),
                         input=str(tmp_path / "missing.mp4"), mode="extend") == 2
  assert "missing.mp4 does not exist" in capsys.readouterr().err


def test_generate_without_a_checkpoint_names_the_path_and_the_command(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "generate", f"--workdir={tmp_path}",
       "--prompt=a red circle", f"--out={tmp_path / 'x.mp4'}"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert f"no checkpoint of stage 'dit' in {tmp_path}" in result.stderr
  assert "python -m videogen.main train" in result.stderr


# ------------------------------------------------------------------------------------------------
# Every refusal: one line on stderr that says what to do, exit code 1, before the model is loaded.
# `{tmp}` stands for the test's folder, which holds a file `file.txt` and a folder `folder.mp4`.

_REFUSALS = [
    # Outputs that cannot be written.
    (dict(out="/proc/red.mp4"),
     r"--out=/proc/red.mp4: cannot create a file in /proc \(No such file or directory\): "
     r"choose a folder you can write to"),
    (dict(out="{tmp}/file.txt/red.mp4"),
     r"--out={tmp}/file.txt/red.mp4: {tmp}/file.txt is a file, not a folder: choose another path"),
    (dict(out="{tmp}/folder.mp4"),
     r"--out={tmp}/folder.mp4: is a folder: name a file inside it, e.g. "
     r"{tmp}/folder.mp4/video.mp4"),
    (dict(out="{tmp}/red.avi"),
     r"--out={tmp}/red.avi: name the output .mp4 \(a .gif is written beside it\) or .gif"),
    (dict(out="{tmp}/red.png"),
     r"--out={tmp}/red.png: a .png holds one image: use --mode=t2i for an image, or name the "
     r"output .mp4 \(a .gif is written beside it\) or .gif"),
    # Values out of range.
    (dict(frames=0), r"--frames=0 must be at least 1: the frames to make \(e.g. 17\)"),
    (dict(frames=-3), r"--frames=-3 must be at least 1: the frames to make \(e.g. 17\)"),
    (dict(guidance=-1.0),
     r"--guidance=-1.0 must be >= 0: 1 turns guidance off, larger follows the prompt more "
     r"closely \(e.g. 4\)"),
    (dict(steps=0), r"--steps=0 must be at least 1 \(e.g. 30\)"),
    (dict(height=0), r"--height=0 must be a positive number of pixels \(e.g. 32\)"),
    (dict(width=-8), r"--width=-8 must be a positive number of pixels \(e.g. 32\)"),
    (dict(strength=0.0, mode="edit", input="{tmp}/file.txt"),
     r"--strength=0.0 must be in \(0, 1\]: small keeps more of the input, 1 ignores it"),
    (dict(strength=1.5), r"--strength=1.5 must be in \(0, 1\]: .*"),
    (dict(bridge_frames=-1, mode="loop"),
     r"--bridge_frames=-1 must be at least 1 \(or leave it unset: about a third of the clip\)"),
    (dict(sampler="ddim"), r"--sampler=ddim must be 'euler' or 'heun'"),
    (dict(prompt="   "), r"flags: the prompt is empty: give one, e.g. "
                         r"--prompt='a red circle moving right'"),
    # Inputs.
    (dict(mode="extend", input="{tmp}/missing.mp4"),
     r"--input={tmp}/missing.mp4 does not exist: pass an existing video \(.mp4, .gif, .webm, "
     r".mov\) or image \(.png, .jpg\)"),
    (dict(mode="extend", input="{tmp}/file.txt"),
     r"--input={tmp}/file.txt: FFmpeg cannot open it \(.*\): convert it with .*"),
    (dict(mode="i2v", input="{tmp}/broken.png"),
     r"--input={tmp}/broken.png: not a readable image \(.*\): pass a PNG or JPEG file"),
    (dict(mode="connect", input="{tmp}/file.txt"),
     r"flags: mode 'connect' \(.*\) takes --input and --input2; got --input"),
    # Sizes that cannot fit in memory.
    (dict(width=100000),
     r"--width=100000: a 9x32x100000 video needs at least [\d.]+ TiB \(attention over its "
     r"1,000,000 tokens holds [\d.]+ TiB per layer; the video alone is 82.4 MiB\); this machine "
     r"has [\d.]+ [GMT]iB: ask for fewer frames or a smaller size"),
    (dict(frames=10**9),
     r"--frames=1000000000: a 1000000001x32x32 video needs at least 2.8 TiB \(attention over "
     r"its 320 tokens holds 1.6 MiB per layer; the video alone is 2.8 TiB\); this machine has "
     r"[\d.]+ [GMT]iB: ask for fewer frames or a smaller size"),
]


def _one_error_line(err: str) -> str:
  assert "Traceback" not in err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0][len("error: "):]


@pytest.mark.parametrize("flags, message", _REFUSALS,
                         ids=[re.sub(r"\W+", "_", str(f)) for f, _ in _REFUSALS])
def test_refusals_are_one_line_before_loading(flags, message, tmp_path, tiny_experiment, no_load,
                                              capsys):
  (tmp_path / "file.txt").write_text("not a video")
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
  (tmp_path / "folder.mp4").mkdir()
  values = dict(prompt="a red circle", out=str(tmp_path / "out" / "red.mp4"))
  values.update({k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v
                 for k, v in flags.items()})
  assert command.command(tiny_experiment, str(tmp_path), **values) == 2
  captured = capsys.readouterr()
  assert re.fullmatch(message.replace("{tmp}", re.escape(str(tmp_path))),
                      _one_error_line(captured.err))
  assert captured.out == ""
  assert not os.path.exists(tmp_path / "out" / "red.mp4")


_FILE_REFUSALS = [
    (b'{"prompt": "a red circle"}\n{"prompt": "caf\xe9"}\n',
     r"{file}:2: not UTF-8 text \(byte 0xe9 at column 16\): save the file as UTF-8"),
    (b'{"prompt": "a red circle"}\n\n{"prompt": "a red circle", "frames": 0}\n',
     r"{file}:3: frames = 0 must be at least 1: the frames to make \(e.g. 17\)"),
    (b'{"prompt": "a red circle", "guidance": -1}\n',
     r"{file}:1: guidance = -1 must be >= 0: .*"),
    (b'{"prompt": "a red circle", "out": "x.png"}\n',
     r"{file}:1: out = 'x.png': a .png holds one image: use --mode=t2i for an image, .*"),
    (b'{"prompt": "a red circle", "out": "a.mp4"}\n{"prompt": "a blue square", "out": "a.gif"}\n',
     r"{file}:2: out = 'a.gif' writes a.gif, as {file}:1 does: give each line its own \"out\""),
    (b'{"prompt": "a red circle", "out": "../file.txt/a.mp4"}\n',
     r"{file}:1: out = '../file.txt/a.mp4': {tmp}/file.txt is a file, not a folder: "
     r"choose another path"),
    (b'{"prompt": "a red circle", "height": 640000}\n',
     r"{file}:1: height = 640000: a 9x640000x32 video needs at least .*; this machine has .*"),
]


@pytest.mark.parametrize("content, message", _FILE_REFUSALS)
def test_prompts_file_refusals_name_the_file_and_line(content, message, tmp_path,
                                                      tiny_experiment, no_load, capsys):
  (tmp_path / "file.txt").write_text("not a folder")
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_bytes(content)
  assert command.command(tiny_experiment, str(tmp_path), prompts_file=str(prompts),
                         out=str(tmp_path / "out")) == 2
  pattern = message.replace("{file}", re.escape(str(prompts))).replace(
      "{tmp}", re.escape(str(tmp_path)))
  assert re.fullmatch(pattern, _one_error_line(capsys.readouterr().err))


def test_an_output_folder_that_is_a_file_is_refused(tmp_path, tiny_experiment, no_load, capsys):
  (tmp_path / "file.txt").write_text("not a folder")
  (tmp_path / "prompts.jsonl").write_text('{"prompt": "a red circle"}\n')
  assert command.command(tiny_experiment, str(tmp_path),
                         prompts_file=str(tmp_path / "prompts.jsonl"),
                         out=str(tmp_path / "file.txt")) == 2
  assert _one_error_line(capsys.readouterr().err) == (
      f"--out={tmp_path}/file.txt (the output folder): {tmp_path}/file.txt is a file, not a "
      f"folder: choose another path")


@pytest.mark.parametrize("args, message", [
    (["--out=/proc/red.mp4"], r"error: --out=/proc/red.mp4: cannot create a file in /proc .*"),
    (["--out={tmp}/red.mp4", "--frames=0"], r"error: --frames=0 must be at least 1: .*"),
    (["--out={tmp}/red.mp4", "--width=100000", "--config=experiments/shapes.py:tiny"],
     r"error: --width=100000: a 9x32x100000 video needs at least .*; this machine has .*"),
])
def test_the_command_line_refuses_with_one_line(args, message, tmp_path):
  # The workdir has no checkpoint: each refusal comes before the model would be looked for.
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "generate", f"--workdir={tmp_path}",
       "--prompt=a red circle", *[a.replace("{tmp}", str(tmp_path)) for a in args]],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr and "Error opening" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and re.fullmatch(message, errors[0]), result.stderr
  assert "real-time factor" not in result.stdout
  assert sorted(os.listdir(tmp_path)) == []


def test_a_failed_write_is_an_error_not_a_success(generator, tiny_experiment, monkeypatch,
                                                  tmp_path, capsys):
  monkeypatch.setattr(pipeline, "load", lambda workdir, experiment: generator)

  def write_video(path, frames, fps):
    raise video_io.VideoWriteError(path, "ffmpeg could not write it (No space left on device)")

  monkeypatch.setattr(video_io, "write_video", write_video)
  assert command.command(tiny_experiment, str(tmp_path), prompt="a red circle", frames=9,
                         out=str(tmp_path / "red.mp4")) == 2
  captured = capsys.readouterr()
  assert _one_error_line(captured.err) == (
      f"{tmp_path}/red.mp4: ffmpeg could not write it (No space left on device)")
  assert "real-time factor" not in captured.out


def test_t2i_writes_a_png(generator, tiny_experiment, monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(pipeline, "load", lambda workdir, experiment: generator)
  out = tmp_path / "new" / "red.png"  # its folder is created
  assert command.command(tiny_experiment, str(tmp_path), prompt="a red circle", mode="t2i",
                         seed=3, out=str(out), watermark=False) == 0
  assert f"{out}: t2i: 1 new frames" in capsys.readouterr().out
  np.testing.assert_array_equal(video_io.read_image(out),
                                generator.generate("a red circle", frames=1, seed=3)[0])
  assert sorted(os.listdir(out.parent)) == ["red.png"]


# ------------------------------------------------------------------------------------------------
# Words the model never saw in training.


def test_the_tiny_workdir_records_its_training_words(tiny_workdir):
  known = workdir_lib.read_tokenizer_words(tiny_workdir)
  assert {"a", "red", "circle", "moving", "left", "bounces"} <= known
  assert not {"purple", "dragon"} & known


@pytest.mark.parametrize("prompt, warning", [
    ("a purple dragon",
     "warning: --prompt='a purple dragon': no training caption says 'purple' or 'dragon', so the "
     "model cannot follow those words (the words it knows: {words})"),
    ("A Red circle, moving up-left", None),
])
def test_unknown_words_are_warned_about_and_generated_anyway(prompt, warning, tiny_workdir,
                                                             generator, monkeypatch, tmp_path,
                                                             capsys):
  monkeypatch.setattr(pipeline, "load", lambda workdir, experiment: generator)
  out = tmp_path / "video.gif"
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only: keys go into it
  assert command.command(None, workdir, prompt=prompt, frames=9, out=str(out)) == 0
  words = workdir_lib.tokenizer_words_path(workdir_lib.tokenizer_path(workdir))
  assert capsys.readouterr().err.splitlines() == (
      [warning.format(words=words)] if warning else [])
  assert os.path.getsize(out) > 0


def test_without_recorded_words_the_tokenizer_names_the_words_it_cannot_spell(tokenizer, capsys):
  # The session tokenizer's captions hold no "z", "x" or "y": "zebra" and "xylophone" are spelled
  # with byte pieces. "dragon" is made of letters it knows: it cannot tell, and says nothing.
  requests = [("p:1", command.Request(prompt="a zebra and a xylophone")),
              ("p:2", command.Request(prompt="a purple dragon"))]
  command.warn_unknown_words(requests, None, "unused", tokenizer)
  assert capsys.readouterr().err.splitlines() == [
      "warning: p:1: prompt = 'a zebra and a xylophone': the tokenizer never saw the characters "
      "of 'zebra' or 'xylophone' in training, so the model cannot follow those words"]


# ------------------------------------------------------------------------------------------------
# Provenance: every file the command writes is watermarked and signed by default.


@pytest.fixture(scope="module")
def trained_workdir(tiny_workdir, tmp_path_factory) -> str:
  """A copy of the tiny workdir: its checkpoint hash is real, and keys get created in it."""
  workdir = str(tmp_path_factory.mktemp("provenance") / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  provenance.pin_watermark_key(workdir, "run")
  return workdir


def _world_video(mode: str, seed: int) -> np.ndarray:
  """uint8 [T, 64, 64, 3]: a procedural world clip (one frame for t2i), chosen by `seed`.

  64x64, where the payload comes back from every saved video (at 32x32 from about 0.96 of them:
  `benchmark --what=watermark`), so that exact payload checks hold for every key.
  """
  return world.generate(seed, seed=0, frames=1 if mode == "t2i" else 9, height=64,
                        width=64)["video"]


@pytest.fixture
def world_videos(monkeypatch, generator):
  """The command generates procedural world clips (`_world_video`) instead of sampling.

  A trained model's videos look like the world (flat backgrounds, a few shapes); the tiny
  workdir's barely trained model draws pixel noise, in which no 40 dB watermark is detectable.
  """
  def run(generator, mode, prompt, *, seed=0, **unused):
    video = _world_video(mode, seed)
    return modes.Generated(video=video, new_frames=len(video), seconds=0.01, fps=generator.fps,
                           mode=mode)

  monkeypatch.setattr(pipeline, "load", lambda workdir, experiment: generator)
  monkeypatch.setattr(modes, "run", run)


def _found(path, key) -> watermark.Detection:
  frames = (video_io.read_image(path)[None] if str(path).endswith(".png")
            else video_io.read_video(path)[0])
  return watermark.detect(frames, key)


def test_mp4_gif_and_png_are_watermarked_and_signed_by_default(trained_workdir, world_videos,
                                                                tmp_path):
  workdir = trained_workdir
  prompt = "a large red circle moving right"
  assert command.command(None, workdir, prompt=prompt, seed=3, out=str(tmp_path / "red.mp4")) == 0
  assert command.command(None, workdir, prompt=prompt, mode="t2i", seed=3,
                         out=str(tmp_path / "red.png")) == 0
  key = keys.watermark_key(workdir, create=False)
  checkpoint = writer.checkpoint_hash(workdir)
  found = {suffix: _found(tmp_path / f"red{suffix}", key) for suffix in (".mp4", ".gif", ".png")}
  assert all(f.watermarked and f.p_value < 1e-6 for f in found.values()), found
  # One generation, one payload: the checkpoint's hash prefix and the workdir's counter.
  assert found[".mp4"].payload == found[".gif"].payload
  assert found[".mp4"].payload[:2].hex() == checkpoint.removeprefix("sha256:")[:4]
  counter = int.from_bytes(found[".mp4"].payload[2:], "big")
  assert found[".png"].payload == found[".mp4"].payload[:2] + (counter + 1).to_bytes(2, "big")
  for suffix in (".mp4", ".gif", ".png"):
    verification = manifest.verify(tmp_path / f"red{suffix}",
                                   trust_anchor=keys.trust_anchor_file(workdir))
    assert (verification.status, verification.trusted) == (manifest.VALID, True)
    claim = verification.claim
    assert (claim["prompt"], claim["seed"], claim["checkpoint"]) == (prompt, 3, checkpoint)
    assert claim["mode"] == ("t2i" if suffix == ".png" else "t2v")
    assert claim["watermark"] == found[suffix].payload.hex()
  # The png is lossless: the watermark changed the pixels, invisibly.
  marked = video_io.read_image(tmp_path / "red.png")
  assert 40.0 <= watermark.psnr(_world_video("t2i", 3)[0], marked) < 60.0


def test_watermark_false_writes_unmarked_files_and_says_so(trained_workdir, world_videos,
                                                            tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    assert command.command(None, trained_workdir, prompt="a red circle", seed=4,
                           watermark=False, out=str(tmp_path / "plain.mp4")) == 0
    assert command.command(None, trained_workdir, prompt="a red circle", mode="t2i", seed=4,
                           watermark=False, out=str(tmp_path / "plain.png")) == 0
  assert sum("watermark is off" in r.getMessage() for r in caplog.records) == 2  # once per run
  key = keys.watermark_key(trained_workdir)
  for suffix in (".mp4", ".gif", ".png"):
    found = _found(tmp_path / f"plain{suffix}", key)
    assert not found.watermarked and found.payload is None and found.p_value > 1e-3
    assert manifest.verify(tmp_path / f"plain{suffix}").claim["watermark"] is None
  np.testing.assert_array_equal(video_io.read_image(tmp_path / "plain.png"),
                                _world_video("t2i", 4)[0])


def test_manifest_prompt_false_and_a_key_elsewhere(trained_workdir, world_videos, tmp_path):
  key_file = tmp_path / "mine.key"
  fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
  os.write(fd, (b"c3" * 32) + b"\n")
  os.close(fd)
  prompt = "a small green square moving up"
  out = tmp_path / "green.mp4"
  assert command.command(None, trained_workdir, prompt=prompt, seed=5, out=str(out),
                         key=str(key_file), manifest_prompt=False) == 0
  assert _found(out, b"\xc3" * 32).watermarked
  assert not _found(out, keys.watermark_key(trained_workdir)).watermarked
  claim = manifest.verify(out).claim
  assert "prompt" not in claim and claim["seed"] == 5
  assert prompt.encode() not in out.read_bytes()


def test_a_prompts_file_records_each_videos_payload(trained_workdir, world_videos, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "a red circle", "seed": 1}\n{"prompt": "a blue square", '
                     '"seed": 2, "mode": "t2i"}\n')
  assert command.command(None, trained_workdir, prompts_file=str(prompts),
                         out=str(tmp_path / "out")) == 0
  entries = [json.loads(line) for line in open(tmp_path / "out" / "manifest.jsonl")]
  key = keys.watermark_key(trained_workdir)
  for entry in entries:
    for path in entry["files"]:
      assert _found(path, key).payload.hex() == entry["watermark"]
  assert len({entry["watermark"] for entry in entries}) == 2


def test_a_bug_keeps_its_traceback(tiny_experiment, monkeypatch, tmp_path, capsys):
  """Only mistakes the user fixes are one line (`videogen.exit_codes`): a TypeError raised
  while generating is the code's, and is not reported as a refusal."""
  def load(*args, **kwargs):
    raise TypeError("a bug")

  monkeypatch.setattr(pipeline, "load", load)
  with pytest.raises(TypeError, match="a bug"):
    command.command(tiny_experiment, str(tmp_path), prompt="a red circle",
                    out=str(tmp_path / "red.mp4"))
  assert "error:" not in capsys.readouterr().err


def test_a_bad_key_file_is_refused_before_loading(tiny_experiment, no_load, tmp_path, capsys):
  assert command.command(tiny_experiment, str(tmp_path), prompt="a red circle",
                         out=str(tmp_path / "red.mp4"), key=str(tmp_path / "missing.key")) == 2
  assert "missing.key does not exist" in _one_error_line(capsys.readouterr().err)
  assert not (tmp_path / "provenance").exists()
