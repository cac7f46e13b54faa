"""videogen/parallel/multihost.py: when to start jax.distributed, and a real 2-process run."""

from __future__ import annotations

import os
import pathlib
import signal

import jax
import numpy as np
import pytest
from jax._src.clusters import ompi_cluster
from jax._src.clusters import slurm_cluster

from videogen import experiment as experiment_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import multihost
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import trainer

from tests.helpers import command_line
from tests.standin import experiment as standin_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]
NUM_STEPS = 4


# What srun sets for each task of a job step (besides SLURM_NTASKS).
SLURM_STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({**SLURM_STEP, "SLURM_NTASKS": "1"}, None),
    ({**SLURM_STEP, "SLURM_NTASKS": "4"}, "SLURM"),
    # A shell on a node of a 4-task allocation, not one of its launched tasks: JAX could not
    # start there, so the command runs as one process.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.1:5000"},
     "Open MPI"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, None),
    ({"TPU_WORKER_HOSTNAMES": "host-0"}, None),
    ({"TPU_WORKER_HOSTNAMES": "host-0,host-1"}, "TPU pod"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1"}, "TPU multi-slice"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
])
def test_cluster_detection(environ, expected):
  assert multihost.cluster_requested(environ) == expected


@pytest.mark.parametrize("cluster, name, environ", [
    (slurm_cluster.SlurmCluster, "SLURM", {**SLURM_STEP, "SLURM_NTASKS": "4"}),
    (slurm_cluster.SlurmCluster, "SLURM", {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}),
    (ompi_cluster.OmpiCluster, "Open MPI",
     {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.1:5000"}),
    (ompi_cluster.OmpiCluster, "Open MPI", {"OMPI_COMM_WORLD_SIZE": "2"}),
])
def test_detection_agrees_with_jax(monkeypatch, cluster, name, environ):
  """A cluster is named exactly where `jax.distributed.initialize()` finds it too: where JAX
  would not, the command ran into its error instead of running as one process."""
  for variable in list(os.environ):
    if variable.startswith(("SLURM_", "OMPI_")):
      monkeypatch.delenv(variable)
  for variable, value in environ.items():
    monkeypatch.setenv(variable, value)
  assert (multihost.cluster_requested(environ) == name) == cluster.is_env_present()


def test_incomplete_coordinator_flags_name_the_missing_ones():
  with pytest.raises(ValueError, match=r"needs all of --coordinator_address.*process_id=None"):
    multihost.initialize("127.0.0.1:1234", 2, None)


def test_a_single_process_starts_nothing(devices, monkeypatch):
  assert multihost.initialize() is False
  # --num_processes=1 alone runs one process even where a launcher's variables say otherwise.
  for variable, value in {**SLURM_STEP, "SLURM_NTASKS": "4"}.items():
    monkeypatch.setenv(variable, value)
  assert multihost.initialize(None, 1, None) is False
  assert multihost.is_primary() and multihost.all_true(True) and not multihost.all_true(False)


def test_work_done_together_on_a_single_process(devices):
  assert multihost.run_together(lambda: 7, "adding") == 7
  with pytest.raises(KeyError, match="own"):
    multihost.run_together(lambda: {}["own"], "looking up")
  assert len(multihost.shared_token()) == 32
  np.testing.assert_array_equal(multihost.sum_over_processes(np.array([1.0, 2.0])), [1.0, 2.0])


# Two processes do work together: process 1 fails the second step.
_TOGETHER_SCRIPT = """
import sys
import numpy as np
from videogen.parallel import multihost
flags = dict(arg[2:].split("=") for arg in sys.argv[1:])
process = int(flags["process_id"])
multihost.initialize(flags["coordinator_address"], int(flags["num_processes"]), process)
print("token", multihost.shared_token())
total = multihost.sum_over_processes(np.array([1 + 2.0 ** -40, float(process)]))
print("sum", total.tobytes().hex())
print("first", multihost.run_together(lambda: process * 10, "counting"))
def second():
  if process == 1:
    raise FileNotFoundError("process 1 misses its file")
try:
  multihost.run_together(second, "reading the files")
except Exception as error:
  print("second", type(error).__name__, error)
"""


@pytest.mark.slow
def test_a_failure_on_one_process_stops_every_process(tmp_path):
  """`run_together` raises on every process when one fails, so none waits for it at a later
  barrier; the shared token and the float64 sum are the same on both."""
  script = tmp_path / "together.py"
  script.write_text(_TOGETHER_SCRIPT)
  outputs = command_line.finish(command_line.start_processes(
      [str(script)], devices_per_process=1), timeout=120)
  assert [o.returncode for o in outputs] == [0, 0], command_line.describe(outputs)
  lines = [dict(line.split(" ", 1) for line in o.stdout.splitlines() if not line.startswith("["))
           for o in outputs]  # Gloo's connection lines aside
  assert lines[0]["token"] == lines[1]["token"] and len(lines[0]["token"]) == 32
  expected = np.array([2 + 2.0 ** -39, 1.0]).tobytes().hex()  # float32 would lose the 2**-39
  assert lines[0]["sum"] == lines[1]["sum"] == expected
  assert (lines[0]["first"], lines[1]["first"]) == ("0", "10")
  assert lines[0]["second"] == ("PeerFailedError another process failed reading the files: its "
                                "log says why")
  assert lines[1]["second"] == "FileNotFoundError process 1 misses its file"


def test_a_process_past_the_timeout_is_aborted_with_its_stacks():
  """`command_line.finish` aborts a process that hangs, so that a failed multi-process test
  shows where it hung (each thread's Python stack) instead of a bare kill."""
  hung = command_line.start_processes(["-c", "import time\ntime.sleep(600)"],
                                      devices_per_process=1, num_processes=1)
  [outcome] = command_line.finish(hung, timeout=2)
  assert outcome.timed_out and outcome.returncode == -signal.SIGABRT
  assert "Fatal Python error: Aborted" in outcome.stderr
  assert 'File "<string>", line 2 in <module>' in outcome.stderr  # the sleep
  message = command_line.describe([outcome])
  assert message.startswith(f"--- process 0: exit code {-signal.SIGABRT}, aborted after running "
                            "past the timeout; its stderr ends:\nFatal Python error: Aborted")


def _overrides():
  return {"standin.depth": 1, "standin.lengths": (8,), "mesh.data": 2, "mesh.fsdp": 2,
          "mesh.tensor": 2, "train.standin.num_steps": NUM_STEPS, "train.standin.log_every": 1,
          "train.standin.checkpoint_every": 2, "train.standin.progress_bar": False}


def _experiment(num_steps: int) -> experiment_lib.Experiment:
  config = standin_experiment.get_config("tiny")
  for key, value in {**_overrides(), "train.standin.num_steps": num_steps}.items():
    section, *rest = key.split(".")
    target = config[section]
    for part in rest[:-1]:
      target = target[part]
    target[rest[-1]] = value
  return experiment_lib.validate(config)


@pytest.mark.slow
def test_two_processes_of_four_devices_match_one_process(tmp_path):
  workdir = tmp_path / "two_processes"
  processes = command_line.start_processes(
      ["-m", "videogen.main", "train",
       f"--config={ROOT / 'tests' / 'standin' / 'experiment.py'}:tiny", f"--workdir={workdir}",
       *(f"--config.{key}={value}" for key, value in _overrides().items())],
      devices_per_process=4)
  # The one-process reference trains here while the two processes run.
  experiment = _experiment(NUM_STEPS)
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), jax.devices()[:1])
  reference_dir = tmp_path / "one_process"
  trainer.train_stage(stages_lib.make_stage("standin", experiment), experiment,
                      str(reference_dir), mesh=mesh)
  outputs = command_line.finish(processes)
  assert [o.returncode for o in outputs] == [0, 0], command_line.describe(outputs)
  losses = [row["loss"] for row in metrics_lib.read_metrics(str(workdir))]
  expected = [row["loss"] for row in metrics_lib.read_metrics(str(reference_dir))]
  assert len(losses) == NUM_STEPS  # written once, by process 0
  np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-5)
  # Each process saved its own data-iterator state; the arrays were written by both.
  data = workdir / "checkpoints" / "standin" / str(NUM_STEPS) / "data"
  assert sorted(os.listdir(data)) == ["process_0-of-2.json", "process_1-of-2.json"]

  # Resumed by one process, as a preempted job restarted on fewer hosts: the two processes'
  # equal data-iterator states are the stream's place, so both runs go on alike.
  longer = _experiment(NUM_STEPS + 2)
  for directory in (workdir, reference_dir):
    trainer.train_stage(stages_lib.make_stage("standin", longer), longer, str(directory),
                        mesh=mesh, allow_config_change=True)
  losses = [row["loss"] for row in metrics_lib.read_metrics(str(workdir))]
  expected = [row["loss"] for row in metrics_lib.read_metrics(str(reference_dir))]
  assert len(losses) == NUM_STEPS + 2
  np.testing.assert_allclose(losses, expected, rtol=0, atol=1e-5)
