r"""The `export` command: a trained workdir's models as files other runtimes load.

    python -m videogen.main export --workdir=runs/tiny --out=exported \
        [--formats=torch,onnx,stablehlo --frames=9 --height=32 --width=32 --batch=1]

restores the diffusion stage's EMA weights (the text encoder, the transformer, the autoencoder)
and writes, for the four components of `videogen.export.components`:

    OUT/stablehlo/{text_encoder,dit,encoder,decoder}.stablehlo   (`videogen.export.stablehlo`)
    OUT/onnx/{text_encoder,dit,encoder,decoder}.onnx             (`videogen.export.onnx_format`)
    OUT/torch/{text_encoder,dit,encoder,decoder}.safetensors,    (`videogen.export.torch_format`)
              videogen_torch.py, config.json, tokenizer.model
    OUT/tokenizer.model                                          the sentencepiece model
    OUT/export_report.json                                       (`videogen.export.report`)

Each format's parity with the JAX functions is measured while exporting and written to the
report; the torch export also runs its `generate` against the JAX pipeline from the same noise.
--frames/--height/--width set the example shape (default: the training clip's), which is also the
fixed shape of the axes a format cannot keep dynamic; --batch the example batch size (parity is
measured at it and at one more).

Formats are a table (`FORMATS`: name -> the packages it needs and its writer
`write(job, directory) -> report rows`); a format whose packages are missing is refused before
anything is loaded. The weights are restored onto one device and each format holds one
component's serialised copy at a time beside them.

Exit codes (`videogen.exit_codes`): 0 written; 2 one line on stderr says what to change (a missing
flag, an unknown format, a format's packages not installed, a shape the models cannot take, a
missing or untrained workdir, a config the checkpoint was not trained with, an --out that cannot
be written); 1 a format failed while writing or measuring its parity.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from absl import logging

from data_pipelines import video_io
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.export import components as components_lib
from videogen.export import onnx_format
from videogen.export import report as report_lib
from videogen.export import stablehlo
from videogen.export import torch_format
from videogen.generate import pipeline
from videogen.parallel import mesh as mesh_lib

INSTALL = "pip install -e '.[export]'"
TOKENIZER_FILE = "tokenizer.model"


class Format(NamedTuple):
  """One export format: the packages it imports (checked first) and its writer."""
  packages: tuple[str, ...]
  write: Callable[[components_lib.Job, str], dict[str, Any]]


FORMATS: dict[str, Format] = {
    "stablehlo": Format((), stablehlo.write),
    "onnx": Format(onnx_format.PACKAGES, onnx_format.write),
    "torch": Format(torch_format.PACKAGES, torch_format.write),
}


class UsageError(ValueError):
  """A command line the command cannot run (`exit_codes.REFUSED`)."""


def parse_formats(formats: str | Sequence[str] | None) -> list[str]:
  """The formats to write, in `FORMATS` order: all when None or empty.

  Raises:
    UsageError: an unknown format, or one whose packages are not installed.
  """
  if isinstance(formats, str):
    formats = formats.split(",")
  requested = [name.strip() for name in formats or () if name.strip()] or list(FORMATS)
  unknown = [name for name in requested if name not in FORMATS]
  if unknown:
    raise UsageError(f"unknown format {unknown[0]!r}: choose from {', '.join(FORMATS)} "
                     f"(--formats={','.join(FORMATS)})")
  for name in requested:
    missing = [package for package in FORMATS[name].packages
               if importlib.util.find_spec(package) is None]
    if missing:
      raise UsageError(f"format {name!r} needs {', '.join(missing)}, which is not installed: "
                       f"{INSTALL}")
  return [name for name in FORMATS if name in requested]


def one_device_mesh() -> jax.sharding.Mesh:
  """A mesh of the first device: the weights whole on it, so that the artifacts' constants are
  plain arrays (no shards to gather into a second copy)."""
  return jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape((1,) * len(mesh_lib.AXES)),
                           mesh_lib.AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(mesh_lib.AXES))


def export(experiment: experiment_lib.Experiment | None, workdir: str, out: str, *,
           formats: Sequence[str], frames: int | None = None, height: int | None = None,
           width: int | None = None, batch: int = 1) -> dict[str, Any]:
  """Exports `workdir`'s models to `out` in `formats`; returns the report (also written).

  Raises:
    FileNotFoundError: the workdir, its diffusion stage's checkpoint or its tokenizer is missing.
    UsageError: a shape the models cannot take.
    video_io.VideoWriteError: `out` cannot be written.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist: give a trained run's directory "
                            f"(`{workdir_lib.train_command(workdir)}` makes one)")
  step = workdir_lib.require_step(workdir, workdir_lib.DIT_STAGE)
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE, step)
  try:
    shape = components_lib.check_shape(experiment, frames, height, width)
  except ValueError as error:
    raise UsageError(str(error)) from error
  video_io.check_writable(os.path.join(out, report_lib.FILE))  # creates the folder
  generator = pipeline.load(workdir, experiment, mesh=one_device_mesh(), step=step,
                            progress=False)
  job = components_lib.Job(
      generator=generator, experiment=experiment, workdir=workdir,
      components=tuple(components_lib.build(generator, frames=shape[0], height=shape[1],
                                            width=shape[2], batch=batch)),
      out=out, batches=(batch, batch + 1))
  os.makedirs(out, exist_ok=True)
  # pipeline.load has checked that the tokenizer exists.
  shutil.copyfile(workdir_lib.tokenizer_path(workdir, experiment),
                  os.path.join(out, TOKENIZER_FILE))
  results, seconds = {}, {}
  for name in formats:
    start = time.perf_counter()
    results[name] = FORMATS[name].write(job, os.path.join(out, name))
    seconds[name] = time.perf_counter() - start
    logging.info("exported %s in %.1f s", name, seconds[name])
  report = report_lib.build(job, step=step, shape=shape, batch=batch,
                            tokenizer_file=TOKENIZER_FILE, results=results, seconds=seconds)
  report_lib.write(report, out)
  return report


def _summary(report: dict[str, Any]) -> list[str]:
  """One line per written file: its size and parity."""
  lines = []
  for component in report["components"].values():
    for row in component["formats"].values():
      parity = row.get("parity", {})
      lines.append(f"{row['file']:<32} {row['bytes'] / 1e6:8.2f} MB   max abs error "
                   f"{parity.get('max_abs', float('nan')):.1e} (rel "
                   f"{parity.get('max_rel', float('nan')):.1e})")
  lines += [f"{name}: {entry['seconds']:.1f} s" for name, entry in report["formats"].items()]
  end_to_end = report["formats"].get("torch", {}).get("end_to_end")
  if end_to_end:
    lines.append(f"torch generate vs JAX from the same noise: {end_to_end['fraction_within_1']:.4f}"
                 f" of pixels within 1 level (max {end_to_end['max_abs_difference']})")
  return lines


def command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
            out: str | None = None, formats: str | Sequence[str] | None = None,
            frames: int | None = None, height: int | None = None, width: int | None = None,
            batch: int | None = None) -> int:
  """`python -m videogen.main export`: see the module docstring (exit codes there).

  Args:
    experiment: the validated experiment (from --config), or None for the workdir's own.
    workdir: the trained run.
    out: the output directory.
    formats: format names (a list or "a,b"); None: all of `FORMATS`.
    frames, height, width: the example shape; None: the training clip's.
    batch: the example batch size (default 1).
  """
  try:
    if not workdir:
      raise UsageError("export needs --workdir=DIR (a trained run: its checkpoints and "
                       "tokenizer)")
    if not out:
      raise UsageError("export needs --out=DIR (where the exported files go)")
    batch = 1 if batch is None else batch
    if batch < 1:
      raise UsageError(f"--batch={batch} must be at least 1")
    names = parse_formats(formats)
    report = export(experiment, workdir, out, formats=names, frames=frames, height=height,
                    width=width, batch=batch)
  except (UsageError, FileNotFoundError, workdir_lib.WorkdirMismatchError,
          video_io.VideoWriteError) as error:
    return exit_codes.refuse(error)
  except ValueError as error:  # a format's writer or its parity check
    return exit_codes.fail(error)
  print("\n".join(_summary(report)))
  print(f"wrote {os.path.join(out, report_lib.FILE)}")
  return exit_codes.DONE
