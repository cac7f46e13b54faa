"""videogen/main_job.py: the gallery the main job writes after training."""

import json
import os
import shutil

from data_pipelines import video_io
from videogen import experiment as experiment_lib
from videogen import main_job
from videogen.evaluate import suite as suite_lib
from videogen.generate import pipeline


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


def test_a_mistake_found_before_training_is_one_line(devices, tiny_workdir_config, tmp_path,
                                                     capsys):
  """`run` reports what `train` reports (`train.command.USER_ERRORS`), and writes no gallery."""
  tiny_workdir_config.mesh.data = 3
  assert main_job.run(experiment_lib.validate(tiny_workdir_config), str(tmp_path)) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith("error: ")
  assert "multiply to 3 but there are 8" in err
  assert not os.path.exists(os.path.join(tmp_path, main_job.GALLERY_DIR))
