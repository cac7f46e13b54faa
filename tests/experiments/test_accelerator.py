"""experiments/accelerator: the rehearsal of the accelerator run, and what it needs installed."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata

import pytest

from experiments.accelerator import run as run_lib
from videogen import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
ACCELERATOR = ROOT / "experiments" / "accelerator"
# The target's own Python: these and whatever they depend on (README.md beside run.sh).
TARGET_PREINSTALLED = ("jax", "flax", "optax", "orbax-checkpoint", "sentencepiece", "einops",
                       "tqdm", "absl-py", "numpy", "scipy")
# The rehearsal shrunk further, to seconds of compute: a one-level autoencoder of 8 channels, a
# one-block transformer and text encoder, two steps a stage, the loader in this process.
SHRINK = {
    "autoencoder.base_channels": 8, "dit.width": 32, "dit.depth": 1,
    "text_encoder.depth": 1, "data.num_workers": 0,
    "train.autoencoder.num_steps": 2, "train.dit.num_steps": 2,
    "train.dit.checkpoint_every": 2, "dit_stage.cache_steps": 2,
}


def _name(requirement: str) -> str:
  return re.split(r"[=<>!\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def carried_wheels() -> set[str]:
  lines = (ACCELERATOR / "wheels.txt").read_text().splitlines()
  return {_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}


def with_dependencies(names) -> set[str]:
  """`names` and every distribution they require, as installed here (extras left out)."""
  found, todo = set(), list(names)
  while todo:
    name = todo.pop()
    if name in found:
      continue
    found.add(name)
    try:
      requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
      continue
    todo += [_name(r) for r in requires if "extra ==" not in r]
  return found


# About 90 s on a loaded 2-core machine with a warm cache, minutes without: compiling (each stage's
# step, which its timing reads back from the cache; the cache's encoder; the sampler) dominates.
@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
  """The driver's CPU mode, shrunk, in a fresh process (its imports are what it needs)."""
  out = tmp_path_factory.mktemp("accelerator_out")
  workdir = tmp_path_factory.mktemp("accelerator_workdir")
  sets = [f"--set={path}={value!r}" for path, value in SHRINK.items()]
  process = subprocess.run(
      [sys.executable, "-m", "experiments.accelerator.run", f"--out={out}", "--cpu",
       f"--workdir={workdir}", "--gallery_videos=2", "--autoencoder_seconds=900",
       "--dit_seconds=900", "--motion_seconds=900", *sets],
      cwd=ROOT, capture_output=True, text=True, timeout=1500,
      # One device, as on the target (tests/conftest.py fakes 8 for this process).
      env={**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""})
  assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
  return out, json.loads((out / run_lib.FIGURES_FILE).read_text())


@pytest.mark.slow
def test_rehearsal_writes_sensible_figures(rehearsal):
  out, figures = rehearsal
  assert figures["backend"] == "cpu"
  assert figures["matmul_bf16"]["flops_per_second"] > 0
  assert figures["loader"]["samples_per_s"] > 0
  assert figures["latent_cache"]["samples_per_s"] > 0
  for name in ("autoencoder", "dit"):
    stage = figures["stages"][name]
    assert stage["status"] == "done" and stage["steps"] == 2, stage
    assert stage["step"]["flops_per_step"] > 0
    assert 0 < stage["step"]["flops_per_second"] and 0 < stage["step_to_matmul_ratio"]
    assert stage["training_samples_per_second"] > 0
  metrics = json.loads((out / "eval_generation.json").read_text())
  assert metrics["prompts"] == figures["generation"]["prompts"] > 0
  for attribute in ("color", "shape", "size", "direction"):
    # None only where no prompted object of the attribute was found at all.
    value = metrics[f"{attribute}_accuracy"]
    assert value is None or 0.0 <= value <= 1.0, (attribute, metrics)
  assert 0.0 <= metrics["count_accuracy"] <= 1.0
  assert (out / "gallery" / "contact_sheet.png").stat().st_size > 0
  assert figures["generation"]["gallery_videos"] == 2


@pytest.mark.slow
def test_rehearsal_continues_in_the_given_frame_phase(rehearsal):
  out, figures = rehearsal
  phase = figures["motion"]
  # The dit stage's 2 steps, then as many again under the phase's config, resumed.
  assert phase["status"] == "done" and phase["steps"] == 4 and phase["planned_steps"] == 4, phase
  assert not phase["stopped_by_budget"]
  # The newest transformer checkpoint was trained under the phase's config, not the stage's.
  trained = workdir_lib.saved_experiment(figures["workdir"], workdir_lib.DIT_STAGE)
  assert trained.diffusion.condition_probability == 1.0
  assert trained.sample.frame_schedule == "image_first"
  metrics = json.loads((out / "eval_generation_motion.json").read_text())
  assert metrics["prompts"] == figures["generation_motion"]["prompts"] > 0
  assert 0.0 <= metrics["count_accuracy"] <= 1.0
  assert (out / "gallery_motion" / "contact_sheet.png").stat().st_size > 0


def test_the_phase_gives_every_clip_its_first_frame_at_the_highest_noise():
  experiment = run_lib.motion_experiment(run_lib.CPU, reached=6)
  dit = experiment.train["dit"]
  stage = run_lib.build_experiment(run_lib.CPU).train["dit"]
  assert dit.num_steps == 6 + stage.num_steps and dit.schedule == "constant"
  assert dit.learning_rate == stage.learning_rate / 2 and dit.warmup_steps == 0
  assert experiment.diffusion.condition_probability == 1.0
  assert tuple(experiment.diffusion.condition_weights) == (1.0, 0.0, 0.0, 0.0, 0.0)
  assert experiment.diffusion.condition_logit_mean == 4.0
  assert experiment.sample.frame_schedule == "image_first"


def _module_file(name: str) -> pathlib.Path | None:
  base = ROOT.joinpath(*name.split("."))
  for path in (base.with_suffix(".py"), base / "__init__.py"):
    if path.is_file():
      return path
  return None


def required_imports(module: str) -> set[str]:
  """Top-level names of the third-party modules that importing `module` needs.

  Follows the project's own imports (videogen, data_pipelines, experiments) from module level;
  imports inside functions (lazy, optional) and under `except ImportError` (optional) are not
  needed to import the module, so they are left out.
  """
  own = ("videogen", "data_pipelines", "experiments")
  needed, seen, todo = set(), set(), [module]
  while todo:
    name = todo.pop()
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):  # a package's __init__ runs first
      path = _module_file(".".join(parts[:depth]))
      if path is None or path in seen:
        continue
      seen.add(path)
      tree = ast.parse(path.read_text())
      statements = list(tree.body)
      for node in tree.body:
        if isinstance(node, ast.Try) and not any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers):
          statements += node.body
      for node in statements:
        if isinstance(node, ast.Import):
          targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
          continue
        for target in targets:
          top = target.partition(".")[0]
          if top in own:
            todo.append(target)
          elif top not in sys.stdlib_module_names and top != "__future__":
            needed.add(top)
  return needed


def test_what_the_run_imports_is_installed_on_the_target():
  covered = with_dependencies(TARGET_PREINSTALLED) | carried_wheels()
  by_module = metadata.packages_distributions()
  needed = required_imports("experiments.accelerator.run")
  assert {"jax", "grain", "ml_collections", "PIL", "matplotlib"} <= needed, needed
  # A namespace such as `orbax` is shared by several distributions: one of them is enough.
  missing = sorted(top for top in needed
                   if not {_name(d) for d in by_module.get(top, [top])} & covered)
  assert not missing, (f"the accelerator run imports {missing}, which the target lacks: add them "
                       f"to experiments/accelerator/wheels.txt (or make the import optional)")


def test_what_each_carried_wheel_requires_is_there_too():
  """The wheels install with --no-deps: their own requirements must be on the target too."""
  covered = with_dependencies(TARGET_PREINSTALLED) | carried_wheels()
  for wheel in sorted(carried_wheels()):
    requires = [_name(r) for r in metadata.requires(wheel) or []
                if "extra ==" not in r and "platform_system == \"Windows\"" not in r]
    missing = sorted(set(requires) - covered)
    assert not missing, f"{wheel} requires {missing}: add them to wheels.txt"


def test_every_carried_wheel_is_fetched_for_the_target_and_pinned():
  lines = [line for line in (ACCELERATOR / "wheels.txt").read_text().splitlines()
           if line.strip() and not line.lstrip().startswith("#")]
  assert all("==" in line for line in lines), lines
  assert not carried_wheels() & {_name(n) for n in TARGET_PREINSTALLED}


def test_a_stage_stops_at_its_wall_clock_budget():
  received = []
  previous = signal.signal(signal.SIGTERM, lambda *args: received.append("outside"))
  try:
    with run_lib.StageDeadline(0.05) as deadline:
      time.sleep(0.3)  # the stage still builds its state: the signal must not kill the process
      # Then a handler like the trainer's preemption watch is installed and still receives it.
      signal.signal(signal.SIGTERM, lambda *args: received.append("trainer"))
      time.sleep(1.5)
    assert deadline.fired and received and set(received) == {"trainer"}, received
    received.clear()
    with run_lib.StageDeadline(5.0) as deadline:
      pass
    time.sleep(0.05)
    assert not deadline.fired and not received
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_overrides_reject_an_unknown_field():
  with pytest.raises(KeyError, match="num_stepz"):
    run_lib.build_experiment({"train.dit.num_stepz": 3})
  experiment = run_lib.build_experiment({**run_lib.CPU, "train.dit.num_steps": "7"})
  assert experiment.train["dit"].num_steps == 7
  assert experiment.dit.dtype == "float32"


def test_a_failed_step_timing_is_recorded_and_the_run_exits_non_zero(monkeypatch, tmp_path):
  # On the H200, XLA's cost analysis once failed after both stages had trained: the failure is
  # kept in figures.json, the run goes on to its evaluation, and the exit code says so.
  def fail(*args, **kwargs):
    raise ValueError("no FLOP count on this backend")

  monkeypatch.setattr(run_lib.benchmark, "train_step_figures", fail)
  figures = {"stages": {"dit": {"status": "done"}}, "matmul_bf16": {"flops_per_second": 1.0}}
  phases = run_lib._Phases(figures, str(tmp_path / run_lib.FIGURES_FILE))
  run_lib.time_step(phases, run_lib.build_experiment(run_lib.CPU), "dit", workdir=str(tmp_path),
                    mesh=None, steps=1)
  assert figures["stages"]["dit"]["step_error"] == "ValueError: no FLOP count on this backend"
  written = json.loads((tmp_path / run_lib.FIGURES_FILE).read_text())
  assert written["failures"] == ["time the dit step: ValueError: no FLOP count on this backend"]

  # main's process-wide settings (logging handlers, the platform) stay out of this test process.
  monkeypatch.setattr(run_lib, "set_up_process", lambda cpu: None)
  monkeypatch.setattr(run_lib, "run", lambda *args, **kwargs: written)
  assert run_lib.main([f"--out={tmp_path}", "--cpu"]) == 1
  monkeypatch.setattr(run_lib, "run", lambda *args, **kwargs: {"stages": {}})
  assert run_lib.main([f"--out={tmp_path}", "--cpu"]) == 0


def test_run_sh_hands_its_compilation_cache_to_the_next_call(tmp_path):
  # run.sh in a copy of its folder, with a stand-in Python that "compiles" one program into the
  # cache it is given: the cache comes back in OUT, and a call that carries it says so.
  here = tmp_path / "experiments" / "accelerator"
  here.mkdir(parents=True)
  (here / "run.sh").write_text((ACCELERATOR / "run.sh").read_text())
  python = tmp_path / "python"
  python.write_text('#!/bin/bash\nmkdir -p "$VIDEOGEN_COMPILATION_CACHE"\n'
                    'echo compiled > "$VIDEOGEN_COMPILATION_CACHE/program"\n')
  python.chmod(0o755)
  env = {key: value for key, value in os.environ.items() if key != "VIDEOGEN_COMPILATION_CACHE"}
  env.update(PYTHON=str(python), VIDEOGEN_SKIP_INSTALL="1")

  def call(out):
    process = subprocess.run(["bash", str(here / "run.sh"), str(out)], capture_output=True,
                             text=True, env=env, timeout=60)
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout

  first = call(tmp_path / "out1")
  assert "carried compilation cache" not in first
  assert (tmp_path / "out1" / "compilation_cache" / "program").read_text() == "compiled\n"
  # The next call: the returned cache copied back beside run.sh, as the README says.
  shutil.rmtree(here / "compilation_cache")
  shutil.copytree(tmp_path / "out1" / "compilation_cache", here / "compilation_cache")
  assert "carried compilation cache: 1 programs" in call(tmp_path / "out2")
  assert (tmp_path / "out2" / "compilation_cache" / "program").exists()
