"""videogen/generate/command.py: requests, prompts files, outputs and the command's errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import video_io
from videogen.generate import command


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
  path.write_text('{"prompt": "a red circle"}\n\n{"prompt": "a blue square", "seed": 2}\n')
  requests = command.read_requests(str(path), command.Request(prompt="", seed=9))
  assert [(r.prompt, r.seed) for r in requests] == [("a red circle", 9), ("a blue square", 2)]
  path.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square",}\n')
  with pytest.raises(ValueError, match="prompts.jsonl:2: not a JSON object"):
    command.read_requests(str(path), command.Request(prompt=""))
  path.write_text('{"prompt": "a red circle", "mode": "extend", "input": "gone.mp4"}\n')
  with pytest.raises(FileNotFoundError, match="prompts.jsonl:1: input gone.mp4 does not exist"):
    command.read_requests(str(path), command.Request(prompt=""))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    command.read_requests(str(tmp_path / "missing.jsonl"), command.Request(prompt=""))


def test_read_input_reads_videos_and_images_and_names_bad_files(tmp_path, clip):
  video_io.write_video(tmp_path / "clip.gif", clip, fps=8)
  np.testing.assert_array_equal(command.read_input(str(tmp_path / "clip.gif")), clip)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(clip[0]).save(tmp_path / "frame.png")
  np.testing.assert_array_equal(command.read_input(str(tmp_path / "frame.png")), clip[:1])
  with pytest.raises(FileNotFoundError, match="nothing.mp4 does not exist"):
    command.read_input(str(tmp_path / "nothing.mp4"))
  (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
  with pytest.raises(video_io.VideoDecodeError):
    command.read_input(str(tmp_path / "broken.mp4"))


def test_write_outputs_writes_a_gif_beside_the_mp4(tmp_path, clip):
  paths = command.write_outputs(clip, str(tmp_path / "out.mp4"), fps=8)
  assert paths == [str(tmp_path / "out.mp4"), str(tmp_path / "out.gif")]
  assert all(os.path.getsize(p) > 0 for p in paths)
  np.testing.assert_array_equal(video_io.read_video(paths[1])[0], clip)
  with pytest.raises(ValueError, match="name the output .mp4"):
    command.write_outputs(clip, str(tmp_path / "out.avi"), fps=8)


def test_generate_many_writes_videos_a_manifest_and_a_gallery(generator, clip, tmp_path):
  video_io.write_video(tmp_path / "input.gif", clip[:5], fps=8)
  (tmp_path / "broken.gif").write_bytes(b"not a gif")
  requests = [command.Request(prompt="a red circle", frames=9, seed=1),
              command.Request(prompt="a red circle", mode="edit",
                              input=str(tmp_path / "broken.gif")),
              command.Request(prompt="a red circle", mode="extend", frames=6,
                              input=str(tmp_path / "input.gif"), out="extended.mp4")]
  manifest, failed = command.generate_many(generator, requests, str(tmp_path / "out"))
  entries = [json.loads(line) for line in open(manifest)]
  assert failed == 1 and "broken.gif" in entries[1]["error"]  # the others still ran
  del entries[1]
  assert [e["shape"] for e in entries] == [[9, 16, 16, 3], [11, 16, 16, 3]]
  assert entries[1]["files"] == [str(tmp_path / "out" / "extended.mp4"),
                                 str(tmp_path / "out" / "extended.gif")]
  assert all(e["real_time_factor"] > 0 for e in entries)
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
                         input=str(tmp_path / "missing.mp4"), mode="extend") == 1
  assert "missing.mp4 does not exist" in capsys.readouterr().err


def test_generate_without_a_checkpoint_names_the_path_and_the_command(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "generate", f"--workdir={tmp_path}",
       "--prompt=a red circle", f"--out={tmp_path / 'x.mp4'}"],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert f"no checkpoint of stage 'dit' in {tmp_path}" in result.stderr
  assert "python -m videogen.main train" in result.stderr
