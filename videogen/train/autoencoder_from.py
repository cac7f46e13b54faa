"""`--autoencoder_from=DIR` of `train` and `run`: a new run on another run's trained autoencoder.

    python -m videogen.main run --config=experiments/shapes.py:long --workdir=runs/long \
        --autoencoder_from=runs/tiny

The diffusion stage holds the autoencoder frozen, so transformer recipes, presets and seeds that
keep its settings can share one trained autoencoder. Before any stage trains, `take` copies into
WORKDIR what DIR holds of it:

- the newest autoencoder checkpoint: the autoencoder stage finds itself trained (an experiment
  that asks for more steps than the copy has trains the copy on);
- the tokenizer, with its caption words: the latent cache's tokens are its ids;
- the latent cache, where it fits this run (its fingerprint, `latent_cache.expected_fingerprint`:
  the same data and seed, autoencoder step and tokenizer) and the autoencoder will not train on;
  otherwise the dit stage encodes its own, as in any new run.

Copies, not links: the workdir stays whole when DIR is deleted. Each is staged beside its place and
moved in whole; the staging of a copy cut short is removed by the next. The same command run again
(to resume) finds them in place and copies nothing. An autoencoder of another architecture than
config.autoencoder, one whose config the run's autoencoder stage would refuse to resume (unless
--allow_config_change), and a workdir that already holds another autoencoder or tokenizer, are
refused before anything is copied.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import uuid

from absl import logging

from videogen import config as config_lib
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.parallel import multihost
from videogen.train import config_changes
from videogen.train import latent_cache


class AutoencoderFromError(ValueError):
  """--autoencoder_from names no trained autoencoder, or one the workdir cannot take; the
  message says what to do."""


def _same_files(first: str, second: str) -> bool:
  """Whether two directories hold the same files with the same bytes."""
  def listing(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)
  names = listing(first)
  if names != listing(second):
    return False
  _, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
  return not mismatch and not errors


def _copy_tree(source: str, target: str) -> None:
  """Copies a directory into place whole: a copy cut short leaves no `target`, and the next
  copy removes its staging directory."""
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  staging_prefix = f"{os.path.basename(target)}.tmp-"
  workdir_lib.remove_cut_short(parent, staging_prefix, "an --autoencoder_from copy")
  staging = os.path.join(parent, staging_prefix + uuid.uuid4().hex)
  shutil.copytree(source, staging)
  os.replace(staging, target)


def _check_autoencoder(experiment: experiment_lib.Experiment, source: str, workdir: str,
                       option: str, allow_config_change: bool) -> tuple[int, str, str]:
  """The step of the source's newest autoencoder checkpoint, its folder and where its copy goes.

  Raises:
    AutoencoderFromError: the source has none, or the workdir holds another, or the run's
      autoencoder stage would refuse to resume it (its config differs, unless
      `allow_config_change`).
    workdir.AutoencoderMismatchError: it was trained with another architecture than
      config.autoencoder.
  """
  stage = workdir_lib.AUTOENCODER_STAGE
  step = workdir_lib.latest_step(source, stage)
  if step is None:
    raise AutoencoderFromError(
        f"{option}: no checkpoint of stage 'autoencoder' in "
        f"{workdir_lib.checkpoint_dir(source, stage)}: name a workdir whose autoencoder stage "
        f"has trained (runs/tiny after the README's main job)")
  # Orbax keeps each step in a folder named after it (`checkpointing.Checkpointer`).
  theirs = os.path.join(workdir_lib.checkpoint_dir(source, stage), str(step))
  saved = workdir_lib.saved_config(source, stage, step)
  workdir_lib.check_autoencoder_architecture(saved, experiment, theirs)
  if stage in experiment.stages and not allow_config_change:
    # The check the autoencoder stage makes when it finds the copy, made before copying.
    differences = config_changes.config_differences(
        saved, config_changes.experiment_json(experiment), stage=stage)
    if differences:
      listed = config_lib.listed(differences, 6)
      raise AutoencoderFromError(
          f"{option}: its autoencoder was trained under another config than this run's "
          f"autoencoder stage ({listed}): leave 'autoencoder' out of config.stages to train only "
          f"the later stages on it, or pass --allow_config_change")
  ours = os.path.join(workdir_lib.checkpoint_dir(workdir, stage), str(step))
  own_step = workdir_lib.latest_step(workdir, stage)
  if own_step is not None and not (own_step == step and _same_files(theirs, ours)):
    raise AutoencoderFromError(
        f"{option}: {workdir} already holds an autoencoder of its own (step {own_step}), not "
        f"the newest of {source} (step {step}): use a new --workdir, or drop --autoencoder_from "
        f"to train on the one it has")
  return step, theirs, ours


def _cache_fits(experiment: experiment_lib.Experiment, source: str, workdir: str,
                step: int) -> str | None:
  """Why the source's latent cache cannot serve this run (whose autoencoder checkpoint, copied
  in, is at `step`), or None when it can."""
  if not latent_cache.has_cache(experiment, source):
    return "there is none"
  stage = workdir_lib.AUTOENCODER_STAGE
  if stage in experiment.stages and step < experiment.train[stage].num_steps:
    return f"the autoencoder trains on to step {experiment.train[stage].num_steps} first"
  if not os.path.exists(workdir_lib.tokenizer_path(workdir, experiment)):
    return "the run has no tokenizer"
  cache = latent_cache.LatentCache(workdir_lib.latent_cache_dir(source, experiment))
  differences = latent_cache.fingerprint_differences(
      cache, experiment, workdir, tokenizer=workdir_lib.load_tokenizer(workdir, experiment),
      seed=experiment.seed)
  if differences:
    return f"it was built for other data: {config_lib.listed(differences, 3)}"
  return None


def take(experiment: experiment_lib.Experiment, workdir: str, source: str, *,
         allow_config_change: bool = False) -> list[str]:
  """Copies `source`'s autoencoder checkpoint, tokenizer and fitting latent cache into
  `workdir` (see the module docstring).

  Args:
    allow_config_change: copy an autoencoder trained under another config than this run's
      autoencoder stage (its architecture must still be config.autoencoder's), as the trainer
      resumes one.

  Returns:
    What it copied, as paths in `workdir` (empty when everything was in place).

  Raises:
    AutoencoderFromError: `source` is `workdir` or has no autoencoder checkpoint, `workdir`
      holds another autoencoder, or the autoencoder stage would refuse the copy's config.
    workdir.WorkdirMismatchError: the source's autoencoder does not fit config.autoencoder, or
      `workdir` holds another tokenizer.
  """
  option = f"--autoencoder_from={source}"
  if os.path.abspath(source) == os.path.abspath(workdir):
    raise AutoencoderFromError(f"{option} is this run's own --workdir: name another run's "
                               f"workdir, or drop the flag")
  step, theirs, ours = _check_autoencoder(experiment, source, workdir, option,
                                          allow_config_change)
  copied = []
  has_tokenizer = os.path.exists(workdir_lib.tokenizer_path(source, experiment))
  # Checked before the checkpoint is copied: a refused run is left as it was.
  if has_tokenizer and workdir_lib.copy_tokenizer(source, workdir, experiment, option=option):
    copied.append(workdir_lib.tokenizer_path(workdir, experiment))
  if not os.path.exists(ours):
    _copy_tree(theirs, ours)
    copied.append(ours)
  cache = workdir_lib.latent_cache_dir(workdir, experiment)
  source_cache = workdir_lib.latent_cache_dir(source, experiment)
  if os.path.abspath(cache) != os.path.abspath(source_cache):
    unfit = _cache_fits(experiment, source, workdir, step)
    if unfit is not None:
      logging.info("%s: the latent cache is not copied, %s; the dit stage encodes its own",
                   option, unfit)
    elif not latent_cache.has_cache(experiment, workdir):
      _copy_tree(source_cache, cache)
      copied.append(cache)
  copied = [os.path.abspath(path) for path in copied]
  for path in copied:
    logging.info("%s: copied %s", option, path)
  return copied


def take_for_command(experiment: experiment_lib.Experiment, workdir: str, source: str | None, *,
                     allow_config_change: bool = False) -> int | None:
  """`take` on process 0 while the others wait; the exit code of a refusal, else None."""
  if source is None:
    return None
  if not source.strip():
    return exit_codes.refuse("--autoencoder_from is empty: give the workdir of a run whose "
                             "autoencoder stage has trained, e.g. --autoencoder_from=runs/tiny")
  try:
    multihost.run_together(
        lambda: take(experiment, workdir, source, allow_config_change=allow_config_change)
        if multihost.is_primary() else None,
        "copying --autoencoder_from")
  except (AutoencoderFromError, workdir_lib.WorkdirMismatchError) as error:
    return exit_codes.refuse(error)
  except multihost.PeerFailedError as error:
    return exit_codes.fail(error)
  return None
