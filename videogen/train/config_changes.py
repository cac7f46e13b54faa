"""Which config changes a run may be resumed under: the config a checkpoint saves, and its diff.

    saved = experiment_json(experiment)              # JSON, written into every checkpoint
    config_differences(saved, experiment_json(new))  # ["config.train.dit.learning_rate: ..."]

A resumed run must compute what the interrupted one would have. Bookkeeping, the mesh (restoring
onto another mesh is supported), how the transformer's blocks are laid out and run (a checkpoint of
stacked blocks restores into unrolled ones and back: `layer_layout`) and the sampler settings
(generation only) may change; so may a stage's num_steps when its learning-rate schedule does not
depend on it, and the settings of the stages trained after it, the transformer's `config.dit` among
the dit stage's (experiments/shapes.py:long is the tiny run with another dit stage, so it takes the
tiny run's autoencoder). Anything else is a difference the trainer refuses unless told
`--allow_config_change`.
"""

from __future__ import annotations

import json
from typing import Any

from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.train import layer_layout

# Config keys that may change between a run and its resumption: bookkeeping that does not change
# what is computed, the mesh, the layout of the transformer's blocks and the sampler settings. A
# name matches a top-level section or a last key.
RESUMABLE_CHANGES = ("name", "mesh", "sample", "log_every", "checkpoint_every",
                     "keep_checkpoints", "eval_every", "async_checkpoints", "progress_bar",
                     "profile_steps", *layer_layout.LAYOUT_SETTINGS)


def experiment_json(experiment: experiment_lib.Experiment) -> dict[str, Any]:
  """The typed experiment as JSON: every section with its defaults filled in."""
  return {"name": experiment.name, "seed": experiment.seed, "stages": list(experiment.stages),
          **{key: config_lib.jsonable(section)
             for key, section in sorted(experiment.sections().items())}}


def _schedule_ignores_num_steps(train_config: Any) -> bool:
  """True when the learning-rate schedule does not depend on num_steps (so it may grow): not
  when a phase takes the last steps, since num_steps places it."""
  return isinstance(train_config, dict) and not train_config.get("phase_steps") and (
      train_config.get("schedule") == "constant" or train_config.get("decay_steps") is not None)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """The saved JSON re-validated as a checkpoint's experiment is read back
  (`workdir.experiment_from_json`): a field added to a section since holds the value the run
  was trained with (its default, or the upgrade's), so it is no difference. Unchanged when it no
  longer validates (its differences then show as they are)."""
  try:
    return json.loads(json.dumps(experiment_json(workdir_lib.experiment_from_json(saved))))
  except (ValueError, TypeError, KeyError):
    return saved


def _own_settings_stage(parts: list[str]) -> str | None:
  """The stage whose own settings (config.train.<stage>, config.<stage>_stage, and config.dit, the
  transformer only the dit stage and those after it build) a key is, if any."""
  if len(parts) > 2 and parts[1] == "train":
    return parts[2]
  if parts[1].endswith("_stage"):
    return parts[1][:-len("_stage")]
  if parts[1] == "dit":
    return "dit"
  return None


def _another_stages_new_settings(saved: dict[str, Any], parts: list[str]) -> bool:
  """True for a key of a stage's own settings (config.train.<stage>, config.<stage>_stage) that
  the saved config holds none of, for a stage it did not train: settings added to the experiment
  file since (e.g. a distill stage after the dit stage trained) cannot change what it computed."""
  stage = _own_settings_stage(parts)
  if stage is None:
    return False
  held = stage in saved.get("train", {}) if parts[1] == "train" else parts[1] in saved
  return not held and stage not in saved.get("stages", ())


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       stage: str | None = None) -> list[str]:
  """"config.key: old -> new" for each difference that matters for resuming.

  Bookkeeping keys (`RESUMABLE_CHANGES`) and the mesh may change; so may a stage's num_steps
  when its schedule does not depend on it (constant, or an explicit decay_steps). With `stage`
  (whose checkpoint `saved` is), so may the own settings of the stages after it in the current
  config.stages: they cannot change what it computed.
  """
  current = json.loads(json.dumps(current))
  stages = list(current.get("stages", ()))
  later = set(stages[stages.index(stage) + 1:]) - {stage} if stage in stages else set()
  old, new = config_lib.flatten(_with_defaults(saved)), config_lib.flatten(current)
  differences = []
  for key in sorted(set(old) | set(new)):
    parts = key.split(".")
    if any(part in RESUMABLE_CHANGES for part in parts[1:2] + parts[-1:]):
      continue
    if parts[1] == "train" and parts[-1] == "num_steps" and len(parts) == 4:
      stage = parts[2]
      if all(_schedule_ignores_num_steps(c.get("train", {}).get(stage)) for c in (saved, current)):
        continue
    if _another_stages_new_settings(saved, parts) or _own_settings_stage(parts) in later:
      continue
    if old.get(key, "<absent>") != new.get(key, "<absent>"):
      differences.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
  return differences
