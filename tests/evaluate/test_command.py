"""videogen/evaluate/command.py: the `evaluate` command's errors, and each --what end to end on the
tiny trained workdir."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen import experiment as experiment_lib
from videogen.evaluate import caption_use
from videogen.evaluate import command
from videogen.evaluate import noise_levels
from videogen.provenance import manifest
from videogen.provenance import watermark
from videogen.provenance import writer
from tests.helpers import provenance


def test_evaluate_command_errors_say_what_to_do(tmp_path, capsys):
  assert command.evaluate(None, str(tmp_path), what="speling") == 2
  assert "choose one of: generation" in capsys.readouterr().err
  assert command.evaluate(None, None, what="generation") == 2
  assert "--workdir" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="generation") == 2
  error = capsys.readouterr().err
  assert "checkpoints/dit" in error and "videogen.main train" in error


def test_options_a_what_does_not_take_are_refused(tmp_path, capsys):
  assert command.evaluate(None, str(tmp_path), what="noise_levels", scenes_per_group=1) == 2
  assert "--scenes_per_group applies to --what=generation" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="caption_use", watermark=False) == 2
  assert "--watermark applies to --what=generation" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="generation", scenes_per_group=0) == 2
  assert "give at least 1" in capsys.readouterr().err



def test_long_video_takes_frames_and_the_others_refuse_it(tmp_path, capsys):
  assert command.evaluate(None, str(tmp_path), what="generation", frames=480) == 2
  assert "--frames applies to --what=long_video" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="long_video", frames=1) == 2
  assert "--frames=1: a long video needs at least 2 frames" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="long_video", frames=480) == 2
  assert "checkpoints/dit" in capsys.readouterr().err


def test_main_wires_the_evaluate_command_and_its_what_flag(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "evaluate", f"--workdir={tmp_path}",
       "--what=generation"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert "no checkpoint of stage 'dit'" in result.stderr


@pytest.mark.slow  # ~10-20 s: the shrunk autoencoder reconstructs 16 held-out clips
def test_autoencoder_evaluation_reports_its_scores_and_what_they_are_about(
    tiny_workdir, tmp_path, capsys):
  """`evaluate --what=autoencoder`: the last printed line is the JSON of the issue's contract."""
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  assert command.evaluate(None, workdir, what="autoencoder") == 0
  last_line = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last_line)
  assert result["compression"] == "2x4x4" and result["latent_channels"] == 8
  assert result["num_videos"] == 16 and result["step"] == 2
  assert 0.0 < result["psnr"] < 60.0 and -1.0 <= result["ssim"] <= 1.0  # barely trained
  with open(f"{workdir}/eval_autoencoder.json") as f:
    assert json.load(f) == result


@pytest.mark.slow  # ~10 s: 4 text-to-video prompts sampled in 2 steps by the tiny workdir
def test_evaluate_writes_into_out_and_sizes_the_suite(tiny_workdir, tiny_workdir_config,
                                                      tmp_path, capsys):
  """`evaluate --out=DIR --scenes_per_group=1`: the reports and videos go to DIR, none to the
  workdir; one scene per group gives 4 prompts."""
  workdir, out = str(tmp_path / "run"), tmp_path / "reports"
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  before = sorted(os.listdir(workdir))
  tiny_workdir_config.sample.num_steps = 2
  tiny_workdir_config.eval_generation.modes = ()  # text-to-video only
  experiment = experiment_lib.validate(tiny_workdir_config)
  assert experiment.eval_generation.scenes_per_group == 2  # what the flag replaces
  assert command.evaluate(experiment, workdir, what="generation", out=str(out),
                          scenes_per_group=1) == 0
  metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert metrics["prompts"] == 4 and metrics["videos"] == 4
  with open(out / command.GENERATION_FILE) as f:
    assert json.load(f) == metrics
  with open(out / command.GENERATION_VIDEOS_FILE) as f:
    assert len(json.load(f)) == 4
  videos = sorted(n for n in os.listdir(out / command.GENERATION_VIDEOS_DIR) if n.endswith(".mp4"))
  assert len(videos) == 4
  # Only the provenance keys go to the workdir (created on first use); nothing else.
  assert sorted(os.listdir(workdir)) == sorted(before + ["provenance"])
  with open(out / command.GENERATION_VIDEOS_FILE) as f:
    rows = json.load(f)
  for name, row in zip(videos, rows):  # signed, naming the payload its row records
    verification = manifest.verify(out / command.GENERATION_VIDEOS_DIR / name)
    assert verification.status == manifest.VALID and verification.claim["prompt"] == row["prompt"]
    assert verification.claim["watermark"] == row["watermark"] is not None


def test_saved_suite_videos_are_watermarked_and_signed(tmp_path):
  provenance.pin_watermark_key(tmp_path / "run", "run")
  stamp = writer.Stamp.for_workdir(tmp_path / "run")
  entries = []
  save = command._save_videos_callback(str(tmp_path / "videos"), 8.0, entries, stamp)
  video = world.generate(0, seed=0, frames=9, height=64, width=64)["video"]  # payload always read
  row = {"mode": "t2v", "group": "seen", "kind": "brief", "prompt": "a red circle", "seed": 4}
  save(row, video)
  path = tmp_path / "videos" / entries[0].video
  found = watermark.detect(video_io.read_video(path)[0], stamp.key)
  assert found.watermarked and found.payload.hex() == row["watermark"]
  claim = manifest.verify(path).claim
  assert (claim["mode"], claim["seed"], claim["prompt"]) == ("t2v", 4, "a red circle")
  plain = writer.Stamp.for_workdir(tmp_path / "run", watermark=False)
  command._save_videos_callback(str(tmp_path / "videos"), 8.0, entries, plain)(dict(row), video)
  unmarked = watermark.detect(video_io.read_video(tmp_path / "videos" / entries[1].video)[0],
                              stamp.key)
  assert not unmarked.watermarked


def test_noise_levels_command_errors_say_what_to_do(tmp_path, capsys):
  assert command.evaluate(None, None, what="noise_levels") == 2
  assert "--workdir" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="noise_levels") == 2
  assert "videogen.main train" in capsys.readouterr().err


@pytest.mark.slow  # ~10-20 s: 2 clips edited from 2 levels by the tiny workdir's models
def test_noise_levels_of_a_trained_workdir_gets_its_json(tiny_workdir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  report = command.run_noise_levels(None, workdir, levels=(0.5, 1.0), clips=2,
                                         progress=False)
  with open(f"{workdir}/{command.NOISE_LEVELS_FILE}") as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert list(report["levels"]) == ["0.5", "1"] and report["clips"] == 2
  for figures in [report["reconstruction"], *report["levels"].values()]:
    assert set(figures) == set(noise_levels.FIGURES)
    assert all(v is None or 0.0 <= v <= 1.0 for v in figures.values())


def test_caption_use_command_errors_say_what_to_do(tmp_path, capsys):
  assert command.evaluate(None, None, what="caption_use") == 2
  assert "--workdir" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="caption_use") == 2
  assert "videogen.main train" in capsys.readouterr().err


@pytest.mark.slow  # ~10-20 s: 3 clips, 2 levels, both settings, by the tiny workdir's models
def test_caption_use_of_a_trained_workdir_gets_its_json(tiny_workdir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  report = command.run_caption_use(None, workdir, levels=(0.5, 1.0), clips=3,
                                        progress=False)
  with open(f"{workdir}/{command.CAPTION_USE_FILE}") as f:
    assert json.load(f) == json.loads(json.dumps(report))
  for setting in caption_use.GIVEN:
    for row in report["given"][setting].values():
      assert np.isfinite(row["loss"]) and row["loss"] > 0
      for attribute in caption_use.ATTRIBUTES:
        gap, win = row["gap"][attribute], row["win_rate"][attribute]
        assert (gap is None) == (win is None) == (report["pairs"][attribute] == 0)
        assert gap is None or (np.isfinite(gap) and 0.0 <= win <= 1.0)
