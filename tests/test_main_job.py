"""videogen/main_job.py: the gallery the main job writes after training."""

import json
import os
import pathlib
import shutil

import pytest

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen import api
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import main_job
from videogen.evaluate import suite as suite_lib
from videogen.generate import pipeline
from videogen.provenance import keys
from videogen.provenance import manifest
from videogen.provenance import watermark
from videogen.provenance import writer
from videogen.train import trainer

from tests.helpers import command_line


def test_gallery_shows_every_prompt_of_the_suite(tiny_workdir, tiny_workdir_config, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  tiny_workdir_config.sample.num_steps = 2
  experiment = experiment_lib.validate(tiny_workdir_config)
  generator = pipeline.load(workdir, experiment, progress=False)

  index = main_job.write_gallery(experiment, workdir, generator=generator)

  suite = suite_lib.build_suite(suite_lib.GenerationEvalConfig(modes=()),
                                      world_config=experiment.data.world,
                                      default_shape=generator.default_shape)
  gallery_dir = os.path.dirname(index)
  rows = [json.loads(line) for line in open(os.path.join(gallery_dir, "manifest.jsonl"))]
  assert [row["prompt"] for row in rows] == [prompt.text for prompt in suite.prompts]
  assert {row["group"] for row in rows} == {"seen", "held_out"}
  assert {row["kind"] for row in rows} == {"brief", "descriptive"}
  page = open(index, encoding="utf-8").read()
  for row in rows:
    assert f'src="{row["video"]}"' in page
    video, _ = video_io.read_video(os.path.join(gallery_dir, row["video"]))
    gif, _ = video_io.read_video(os.path.join(gallery_dir, row["gif"]))
    assert video.shape == gif.shape == (suite.frames, suite.height, suite.width, 3)
  assert page.count("held-out combination") == sum(row["group"] == "held_out" for row in rows)
  assert os.path.getsize(os.path.join(gallery_dir, "contact_sheet.png")) > 0
  for stage in ("autoencoder", "dit"):  # each stage's loss curve, inside the gallery folder
    assert f'src="{stage}.svg"' in page
    assert os.path.getsize(os.path.join(gallery_dir, f"{stage}.svg")) > 0


def test_the_gallery_is_watermarked_and_signed_and_holds_no_key(tiny_workdir, tiny_workdir_config,
                                                                tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  experiment = experiment_lib.validate(tiny_workdir_config)
  generator = pipeline.load(workdir, experiment, progress=False)

  # World clips instead of samples: a trained model draws such flat scenes, in which the blind
  # detector finds a 40 dB watermark; the tiny workdir's barely trained model draws pixel noise.
  def generate(self, prompt, *, frames, height, width, seed):
    video = world.generate(seed, seed=1, frames=frames, height=height, width=width)["video"]
    return api.Result(video=video, new_frames=frames, seconds=0.01, fps=self.fps, mode="t2v",
                      seed=seed, steps=1, prompt=prompt)

  monkeypatch.setattr(api.Pipeline, "generate", generate)
  # A fixed key and checkpoint hash, so the payloads (and what the detector recovers) are the
  # same on every run; keys and checkpoints are otherwise new per workdir.
  key_path = keys.provenance_dir(workdir) / keys.WATERMARK_KEY_FILE
  key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
  descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(descriptor, "w") as file:
    file.write("5e" * 32)
  monkeypatch.setattr(writer, "checkpoint_hash", lambda *args, **kwargs: "0" * 64)
  index = main_job.write_gallery(experiment, workdir, generator=generator)

  gallery_dir = os.path.dirname(index)
  rows = [json.loads(line) for line in open(os.path.join(gallery_dir, "manifest.jsonl"))]
  key = keys.watermark_key(workdir, create=False)
  anchor = keys.trust_anchor_file(workdir)
  recovered = []
  for row in rows:
    for name in (row["video"], row["gif"]):
      path = os.path.join(gallery_dir, name)
      found = watermark.detect(video_io.read_video(path)[0], key)
      assert found.watermarked, name
      # The CRC turns a misread payload into None, never into another video's payload.
      assert found.payload is None or found.payload.hex() == row["watermark"], name
      recovered.append(found.payload is not None)
      verification = manifest.verify(path, trust_anchor=anchor)
      assert (verification.status, verification.trusted) == (manifest.VALID, True)
      assert verification.claim["prompt"] == row["prompt"]
      assert verification.claim["seed"] == row["seed"]
  assert len({row["watermark"] for row in rows}) == len(rows)  # one counter value per video
  # At 32x32 the payload comes back from about 0.96 of saved videos (benchmark --what=watermark).
  assert sum(recovered) >= 0.9 * len(recovered)
  # No key material in the gallery: neither the watermark key nor the signing key.
  signing_key = (keys.provenance_dir(workdir) / keys.SIGNING_KEY_FILE).read_text()
  secrets = [key, key.hex().encode(),
             "".join(signing_key.strip().splitlines()[1:-1])[:40].encode()]
  for name in os.listdir(gallery_dir):
    data = open(os.path.join(gallery_dir, name), "rb").read()
    assert not any(secret in data for secret in secrets), name
  assert not any(name.endswith((".key", ".crt")) for name in os.listdir(gallery_dir))


def test_a_mistake_found_before_training_is_one_line(devices, tiny_workdir_config, tmp_path,
                                                     capsys):
  """`run` reports what `train` reports (`train.command.USER_ERRORS`), and writes no gallery."""
  tiny_workdir_config.mesh.data = 3
  assert main_job.run(experiment_lib.validate(tiny_workdir_config), str(tmp_path)) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith("error: ")
  assert "multiply to 3 but there are 8" in err
  assert not os.path.exists(os.path.join(tmp_path, main_job.GALLERY_DIR))


def test_run_resumes_under_a_changed_config_only_when_told(tiny_workdir, tiny_workdir_config,
                                                           tmp_path, capsys, monkeypatch):
  """The config-change error names `--allow_config_change`, so `run` must take it too."""
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  galleries = []
  monkeypatch.setattr(main_job, "write_gallery",
                      lambda experiment, workdir, **kwargs: galleries.append(workdir) or "index")
  tiny_workdir_config.autoencoder.scale_factor *= 1.25
  experiment = experiment_lib.validate(tiny_workdir_config)

  assert main_job.run(experiment, workdir) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "--allow_config_change" in err
  assert "config.autoencoder.scale_factor" in err and galleries == []

  assert main_job.run(experiment, workdir, allow_config_change=True) == 0
  assert galleries == [workdir]


def test_a_preempted_run_writes_no_gallery_and_exits_as_preempted(devices, tiny_workdir_config,
                                                                   tmp_path, capsys,
                                                                   monkeypatch):
  """SIGTERM mid-training: the stage saved and stopped. `run` says so in one line and exits 143,
  so that a scheduler restarts it; there is no gallery of an unfinished model."""
  stopped = [trainer.StageResult("autoencoder", "done", 2),
             trainer.StageResult("dit", "preempted", 1)]
  monkeypatch.setattr(trainer, "train", lambda experiment, workdir, **kwargs: stopped)
  monkeypatch.setattr(main_job, "write_gallery", lambda *args, **kwargs: pytest.fail("a gallery"))
  experiment = experiment_lib.validate(tiny_workdir_config)
  assert main_job.run(experiment, str(tmp_path)) == exit_codes.PREEMPTED == 143
  err = capsys.readouterr().err
  assert err == ("preempted: stage dit saved its checkpoint at step 1 on SIGTERM and stopped; "
                 "run the same command to resume\n")


def _run_two_processes(workdir: pathlib.Path, tmp_path: pathlib.Path):
  """`run` on a trained copy of `tiny_workdir` (both processes go straight to the gallery) as
  processes 0 and 1 of one run, 2 CPU devices each."""
  config_file = command_line.tiny_workdir_config_file(tmp_path)
  return command_line.finish(command_line.start_processes(
      ["-m", "videogen.main", "run", f"--config={config_file}", f"--workdir={workdir}",
       "--config.sample.num_steps=2"], devices_per_process=2))


@pytest.mark.slow
def test_two_processes_write_one_gallery(tiny_workdir, tmp_path):
  """`run` joins a multi-process run as `train` does; process 0 alone samples and writes the
  gallery, while both read the checkpoint (orbax reads collectively)."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_workdir, workdir)
  first, second = _run_two_processes(workdir, tmp_path)
  assert [first.returncode, second.returncode] == [0, 0], command_line.describe(
      [first, second], tail=6000)
  rows = [json.loads(line) for line in open(workdir / main_job.GALLERY_DIR / "manifest.jsonl")]
  assert f"gallery {len(rows)}/{len(rows)}" in first.stderr
  assert f"gallery: {workdir}" in first.stdout
  # Process 1 joined the run (its info logs dropped): it sampled and wrote nothing.
  assert "gallery" not in second.stderr and "gallery" not in second.stdout
  for row in rows:
    assert (workdir / main_job.GALLERY_DIR / row["video"]).stat().st_size > 0


@pytest.mark.slow
def test_when_process_0_cannot_write_the_gallery_the_others_stop_too(tiny_workdir, tmp_path):
  """Process 0 alone writes the gallery, and checks its folder before any training; when that
  fails (here: a file where the folder goes), process 0 refuses with one line and process 1
  stops at once too, not after the coordinator's timeout (`multihost.run_together`)."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_workdir, workdir)
  (workdir / main_job.GALLERY_DIR).write_text("not a folder")
  first, second = _run_two_processes(workdir, tmp_path)
  assert first.returncode == exit_codes.REFUSED, first.stderr[-3000:]
  assert first.stderr.strip().splitlines()[-1] == (
      f"error: {workdir}/{main_job.GALLERY_DIR}/index.html: {workdir}/{main_job.GALLERY_DIR} is "
      f"a file, not a folder: choose another path")
  assert second.returncode == exit_codes.FAILED, second.stderr[-3000:]
  assert second.stderr.strip().splitlines()[-1] == (
      "error: another process failed checking the gallery's key and folder: its log says why")
