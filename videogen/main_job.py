r"""The main job: train every stage of an experiment, then write a gallery of sampled videos.

    python -m videogen.main run --config=experiments/shapes.py:tiny --workdir=runs/tiny

1. `videogen.train.trainer.train` trains the experiment's stages in order (the autoencoder, then
   the diffusion transformer on its latents), resuming from the workdir's checkpoints
   (`--allow_config_change` resumes checkpoints made under another config, as for `train`). A
   multi-process run (a TPU pod, SLURM, or `--coordinator_address`, `--num_processes` and
   `--process_id`) trains as one, as `train` does.
2. The gallery: the Python API (`videogen.api`) samples one video per prompt of a fixed list, the
   text-to-video prompts of the generation suite (`videogen.evaluate.suite.build_suite`):
   brief and descriptive captions of training combinations and of held-out ones. Each video is
   written as .mp4 and .gif into WORKDIR/gallery/, with a PNG contact sheet, each stage's loss
   curve (SVG), a manifest.jsonl and an index.html that shows every video beside its prompt.
   Each video is watermarked and signed (`videogen.provenance.writer`: `--watermark=false`,
   `--key=FILE`, `--manifest_prompt=false` as for `generate`); the keys stay in
   WORKDIR/provenance/, never in the gallery. In a multi-process run every process reads the
   model onto its own devices (a checkpoint is read collectively), process 0 alone samples and
   writes the gallery, and the others wait for it.

`python -m videogen.main evaluate --workdir=DIR --what=generation` then scores the same kind of
prompts with the analyzer.
"""

from __future__ import annotations

import json
import os
import re
import time

import jax
from absl import logging

from data_pipelines import video_io
from videogen import api
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.evaluate import suite as suite_lib
from videogen.generate import gallery
from videogen.generate import pipeline
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import multihost
from videogen.provenance import keys
from videogen.provenance import writer
from videogen.train import autoencoder_from as autoencoder_from_lib
from videogen.train import command as train_command
from videogen.train import curves
from videogen.train import trainer

GALLERY_DIR = "gallery"


def _slug(text: str, limit: int = 40) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit].rstrip("_")


def write_gallery(experiment: experiment_lib.Experiment, workdir: str, *,
                  generator: pipeline.Generator | None = None, watermark: bool = True,
                  key_file: str | None = None, include_prompt: bool = True,
                  step: int | None = None) -> str:
  """Samples the gallery's prompts from the trained workdir; returns the index.html path.

  Args:
    experiment: the validated experiment.
    workdir: the trained run; the gallery goes to WORKDIR/gallery/.
    generator: an already loaded model to sample from; None loads the workdir's.
    watermark, key_file, include_prompt: how the videos are stamped (`writer.Stamp.for_workdir`).
    step: the checkpoint step that `generator` holds, for the stamp; None: the newest.
  """
  stamp = writer.Stamp.for_workdir(workdir, watermark=watermark, key_file=key_file,
                                   include_prompt=include_prompt, step=step)
  if generator is None:
    generator = pipeline.load(workdir, experiment)
  model = api.Pipeline(generator, stamp)
  world_config = experiment.data.world if experiment.has("data") else None
  frames, height, width = model.default_shape
  suite = suite_lib.build_suite(
      suite_lib.GenerationEvalConfig(modes=()),
      **({"world_config": world_config} if world_config is not None else {}),
      default_shape=(frames, height, width))
  out_dir = os.path.join(workdir, GALLERY_DIR)
  os.makedirs(out_dir, exist_ok=True)
  entries, videos, manifest = [], [], []
  for number, prompt in enumerate(suite.prompts):
    result = model.generate(prompt.text, frames=suite.frames, height=suite.height,
                            width=suite.width, seed=suite.seed + number)
    stem = f"{number:02d}_{_slug(prompt.text)}"
    # Both files of a video carry one payload: one generation, one counter value.
    paths = [os.path.join(out_dir, stem + suffix) for suffix in (".mp4", ".gif")]
    written = model.stamp.write(paths, result.video, round(result.fps),
                                claim={"mode": result.mode, "seed": result.seed,
                                       "prompt": prompt.text})
    note = ("held-out combination" if prompt.group == "held_out" else "training combination")
    note += f" · {prompt.kind} · seed {suite.seed + number}"
    entries.append(gallery.GalleryEntry(prompt=prompt.text, video=stem + ".mp4",
                                        gif=stem + ".gif", note=note))
    videos.append(written.frames)
    manifest.append({"video": stem + ".mp4", "gif": stem + ".gif", "prompt": prompt.text,
                     "kind": prompt.kind, "group": prompt.group, "seed": suite.seed + number,
                     "seconds": result.seconds, "real_time_factor": result.real_time_factor,
                     "watermark": None if written.payload is None else written.payload.hex()})
    logging.info("gallery %d/%d: %s", number + 1, len(suite.prompts), result.summary())
  video_io.write_contact_sheet(os.path.join(out_dir, "contact_sheet.png"), videos,
                               labels=[p.text for p in suite.prompts])
  with open(os.path.join(out_dir, "manifest.jsonl"), "w", encoding="utf-8") as f:
    for row in manifest:
      f.write(json.dumps(row) + "\n")
  charts = curves.write_curves(workdir, out_dir=out_dir)
  return gallery.write_index(out_dir, entries, title=f"videogen: {experiment.name}",
                             contact_sheet="contact_sheet.png",
                             curves=[os.path.basename(path) for path in charts])


def _check_outputs(workdir: str, *, watermark: bool, key_file: str | None) -> None:
  """Raises, before any training, what would stop the gallery: a `--key` file that is not a
  watermark key (`keys.KeyFileError`), a gallery folder that cannot be written
  (`video_io.VideoWriteError`)."""
  if watermark and key_file is not None:
    keys.watermark_key(key_file=key_file)
  # Without creating the folder: a run refused later, by the training, leaves no gallery.
  video_io.check_writable(os.path.join(workdir, GALLERY_DIR, gallery.INDEX_FILE),
                          create_folder=False)


def _process_local_generator(workdir: str,
                             experiment: experiment_lib.Experiment) -> pipeline.Generator:
  """The trained model on this process's devices alone, its weights split over them (FSDP): the
  training mesh spans every process, so its collectives would wait for processes that do not
  sample. Every process must call it: orbax reads a checkpoint collectively."""
  return pipeline.load(workdir, experiment,
                       mesh=mesh_lib.process_local_mesh(experiment.mesh))


def run(experiment: experiment_lib.Experiment, workdir: str | None, *, watermark: bool = True,
        manifest_prompt: bool = True, key: str | None = None,
        allow_config_change: bool = False, autoencoder_from: str | None = None,
        coordinator_address: str | None = None, num_processes: int | None = None,
        process_id: int | None = None) -> int:
  """`python -m videogen.main run`: train, then the gallery. Exit codes as `train`'s; the key and
  the gallery's folder are checked before the training (exit code 2).

  Args:
    watermark, manifest_prompt, key: how the gallery's videos are stamped (see `write_gallery`).
    allow_config_change: resume checkpoints written under a different config, as `train`'s.
    autoencoder_from: another run's workdir whose trained autoencoder to start from, as
      `train`'s.
    coordinator_address, num_processes, process_id: join a multi-process run, as `train`'s.
  """
  if not workdir:
    return exit_codes.refuse("run needs --workdir=DIR (checkpoints, metrics and the gallery go "
                             "there)")
  failed = multihost.join_processes(coordinator_address, num_processes, process_id)
  if failed is not None:
    return failed
  try:
    # A bad --key or a gallery that cannot be written fails now, not after the training.
    multihost.run_together(
        lambda: _check_outputs(workdir, watermark=watermark, key_file=key)
        if multihost.is_primary() else None, "checking the gallery's key and folder")
  except (keys.KeyFileError, video_io.VideoWriteError) as error:
    return exit_codes.refuse(error)
  except multihost.PeerFailedError as error:
    return exit_codes.fail(error)
  refused = autoencoder_from_lib.take_for_command(
      experiment, workdir, autoencoder_from, allow_config_change=allow_config_change)
  if refused is not None:
    return refused
  start = time.time()
  try:
    results = trainer.train(experiment, workdir, allow_config_change=allow_config_change)
  except train_command.USER_ERRORS as error:
    return train_command.report(error)
  preempted = train_command.report_preemption(results)
  if preempted is not None:
    return preempted  # no gallery of a model that has not finished training
  trained = time.time()
  generator, step = None, None
  if jax.process_count() > 1:
    # Every process opens the checkpoints (orbax syncs them); process 0 alone samples and writes.
    generator = _process_local_generator(workdir, experiment)
    step = workdir_lib.latest_step(workdir, workdir_lib.DIT_STAGE)
  try:
    # The others wait for process 0's gallery, and stop at once if it fails.
    index = multihost.run_together(
        lambda: write_gallery(experiment, workdir, generator=generator, watermark=watermark,
                              key_file=key, include_prompt=manifest_prompt, step=step)
        if multihost.is_primary() else None, "writing the gallery")
  except multihost.PeerFailedError as error:
    return train_command.report(error)
  if index is None:  # written by process 0
    return exit_codes.DONE
  done = time.time()
  print(f"trained in {(trained - start) / 60:.1f} min, gallery in {(done - trained) / 60:.1f} min")
  print(f"gallery: {index}")
  print(f"score it: python -m videogen.main evaluate --workdir={workdir} --what=generation")
  return exit_codes.DONE
