"""The train command survives SIGKILL and SIGTERM: resuming gives the uninterrupted run exactly.

Each run is a `python -m videogen.main train` subprocess on one CPU device; they share a JAX
compilation cache, so only the first compiles.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from videogen import exit_codes
from videogen.train import metrics as metrics_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS = 100
pytestmark = pytest.mark.slow


def _command(workdir, checkpoint_every=10):
  return [sys.executable, "-m", "videogen.main", "train",
          f"--config={ROOT / 'tests' / 'standin' / 'experiment.py'}:tiny", f"--workdir={workdir}",
          "--config.standin.depth=1", "--config.standin.lengths=(4, 8)",
          f"--config.train.standin.num_steps={NUM_STEPS}", "--config.train.standin.log_every=1",
          f"--config.train.standin.checkpoint_every={checkpoint_every}",
          "--config.train.standin.progress_bar=False"]


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _run(command, env):
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, environment):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _run(_command(workdir), environment)
  return workdir


def _wait_for(predicate, process, what, timeout=240.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    if process.poll() is not None:
      pytest.fail(f"the run ended (exit {process.returncode}) before {what}: "
                  f"{process.stderr.read()[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.02)


def _final_state(workdir):
  path = pathlib.Path(workdir) / "checkpoints" / "standin" / str(NUM_STEPS) / "state"
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


def _assert_same_run(workdir, reference):
  losses = [(r["step"], r["loss"]) for r in metrics_lib.read_metrics(str(workdir), "standin")]
  expected = [(r["step"], r["loss"]) for r in metrics_lib.read_metrics(str(reference), "standin")]
  assert [step for step, _ in losses] == list(range(1, NUM_STEPS + 1))
  assert losses == expected
  ours, theirs = _final_state(workdir), _final_state(reference)
  for name in ("params", "ema_params", "opt_state", "step"):
    flat_ours = ocp.tree.to_flat_dict(ours[name])
    flat_theirs = ocp.tree.to_flat_dict(theirs[name])
    assert flat_ours.keys() == flat_theirs.keys()
    for key in flat_ours:
      np.testing.assert_array_equal(np.asarray(flat_ours[key]), np.asarray(flat_theirs[key]),
                                    err_msg=f"{name}/{key}")


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_identical(tmp_path, environment,
                                                                     uninterrupted):
  workdir = tmp_path / "killed"
  process = subprocess.Popen(_command(workdir), env=environment, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  first_checkpoint = workdir / "checkpoints" / "standin" / "10"
  _wait_for(first_checkpoint.exists, process, "the checkpoint at step 10")
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  process.stderr.close()
  assert process.returncode == -signal.SIGKILL
  steps = sorted(int(p.name) for p in first_checkpoint.parent.iterdir() if p.name.isdigit())
  assert steps and steps[-1] < NUM_STEPS, "the run finished before it was killed"
  resumed = _run(_command(workdir), environment)
  assert f"resumed from step {steps[-1]}" in resumed.stderr
  _assert_same_run(workdir, uninterrupted)


def test_sigterm_saves_then_exits_as_preempted_and_resumes_identically(tmp_path, environment,
                                                                       uninterrupted):
  workdir = tmp_path / "preempted"
  # No periodic checkpoints: the only one before the end is the one SIGTERM asks for.
  command = _command(workdir, checkpoint_every=1000)
  process = subprocess.Popen(command, env=environment, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: len(metrics_lib.read_metrics(str(workdir))) >= 3, process,
            "three logged steps")
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  # Not 0: a scheduler restarts the job, and `train && evaluate` does not go on to evaluate.
  assert process.returncode == exit_codes.PREEMPTED == 143, stderr[-3000:]
  assert "stopped by preemption" in stderr
  assert re.search(r"preempted: stage standin saved its checkpoint at step \d+ on SIGTERM and "
                   r"stopped; run the same command to resume", stderr)
  saved = sorted(int(p.name) for p in (workdir / "checkpoints" / "standin").iterdir()
                 if p.name.isdigit())
  assert len(saved) == 1 and 3 <= saved[0] < NUM_STEPS
  _run(command, environment)
  _assert_same_run(workdir, uninterrupted)
