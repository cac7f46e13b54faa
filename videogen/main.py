r"""The one entry point: `python -m videogen.main <command> --config=... --workdir=...`.

Commands:
  run        the main job: train every stage of the experiment, then write a sample gallery.
  train      train the experiment's stages in order (resumes from the workdir's checkpoints).
  cache_latents  encode the data once with the trained autoencoder, for
             `--config.dit_stage.latents=cache`.
  generate   prompt -> video, from a trained workdir.
  evaluate   measure a trained workdir (`--what=`: generation, autoencoder, noise_levels,
             caption_use, learning_curve).
  summary    parameter count and forward-pass cost of the experiment's model.
  benchmark  print speed figures for the experiment (`--what=`: all, train_step, generation,
             loader, autoencoder).
  export     the workdir's models for PyTorch, ONNX and StableHLO, with measured parity.
  detect     whether videos carry the workdir's watermark, and their C2PA manifests.

`python -m videogen.main <command> --help` shows a command's usage and the flags it takes.

Example:
  python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
      --config.train.autoencoder.num_steps=100

Any config field can be overridden with `--config.<path>=<value>`; an unknown key or a value of the
wrong type stops the command before anything is built, with a message that says what to change.
Every such mistake is one line on stderr and exit code 2.

Exit codes, the same in every command (`videogen.exit_codes`): 0 done; 2 a mistake in what was
asked (a flag, a config, a file it names, a size that does not fit), one line on stderr that says
what to change; 1 the work ran and failed (a non-finite loss, items of a batch, another process,
a bug with its traceback).

Output: progress bars, videogen's own log lines and every library's warnings; `--verbosity=0`
(info) or `--verbosity=1` (debug) shows every library's log lines too. Compiled programs are cached
on disk (`~/.cache/videogen/jax`, under $XDG_CACHE_HOME when set), so a second command in a new
process does not compile again; $VIDEOGEN_COMPILATION_CACHE names another folder ("off": none) and
an explicit $JAX_COMPILATION_CACHE_DIR is kept.
"""

from __future__ import annotations

from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from videogen import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file and variant, e.g. experiments/shapes.py:tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
# Used by `train` (videogen.train.command), and by `run` for its training.
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir whose checkpoints were made with a different config.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-process run (with --num_processes and "
                    "--process_id); TPU pods and SLURM are detected without it.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run (1 alone: "
                     "this process runs by itself, whatever a launcher's environment says).")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
# Used by `generate` (videogen.generate.command); a prompts file's lines default to these.
flags.DEFINE_string("prompt", None, "generate: what the video shows, e.g. 'a red circle'.")
flags.DEFINE_string("negative_prompt", None, "generate: the unconditional branch's prompt.")
_GENERATE_OUT_HELP = ("generate: output .mp4 (a .gif is written beside it); with --prompts_file, "
                      "the output folder.")
_EVALUATE_OUT_HELP = ("evaluate: the folder the reports (eval_<what>.json) and the generation "
                      "suite's videos go to; default: the workdir.")
_EXPORT_OUT_HELP = "export: the folder the torch/, onnx/ and stablehlo/ exports and report go to."
flags.DEFINE_string("out", None, f"{_GENERATE_OUT_HELP} {_EVALUATE_OUT_HELP} {_EXPORT_OUT_HELP}")
flags.DEFINE_string("mode", "t2v", "generate: t2v, t2i, i2v, extend, extend_backward, loop, "
                    "connect or edit.")
flags.DEFINE_integer("frames", None, "generate: frames to make: the video's length (t2v, i2v, "
                     "edit, loop's clip) or the new frames (extend, connect); default: the "
                     "training clip's length. evaluate: each long clip's length (long_video; "
                     "default 480).")
flags.DEFINE_integer("height", None, "generate: frame height (default: the input's or training's).")
flags.DEFINE_integer("width", None, "generate: frame width (default: the input's or training's).")
flags.DEFINE_integer("steps", None, "generate, and evaluate's generation suite: sampling "
                     "steps (default: config.sample); at most the distilled student's steps (a "
                     "workdir whose distill stage trained) samples with the student.")
flags.DEFINE_float("guidance", None, "generate: classifier-free guidance scale.")
flags.DEFINE_string("sampler", None, "generate: 'euler' or 'heun'.")
flags.DEFINE_integer("seed", None, "generate: noise seed (the same seed gives the same video).")
flags.DEFINE_string("input", None, "generate: the video or image a mode starts from.")
flags.DEFINE_string("input2", None, "generate: the second clip of --mode=connect.")
flags.DEFINE_float("strength", 0.6, "generate: edit strength in (0, 1] (--mode=edit).")
flags.DEFINE_integer("bridge_frames", None, "generate: the closing bridge of --mode=loop.")
flags.DEFINE_string("prompts_file", None, "generate: a JSONL file of requests, one per line.")
# Used by every writer of generated videos (generate, run, evaluate) and by `detect`
# (videogen.provenance.writer, videogen.provenance.detect).
flags.DEFINE_bool("watermark", True, "Mark every generated video with the invisible watermark "
                  "keyed by WORKDIR/provenance/watermark.key (or --key); --watermark=false "
                  "writes them unmarked.")
flags.DEFINE_bool("manifest_prompt", True, "Put the prompt in each generated file's signed C2PA "
                  "manifest; --manifest_prompt=false leaves it out.")
flags.DEFINE_string("key", None, "A watermark key file (64 hex digits, owner-only) to use "
                    "instead of WORKDIR/provenance/watermark.key, e.g. when the workdir is "
                    "shared without its keys.")
_DETECT_INPUT_HELP = "detect: a video, an image, or a folder of them to check."
# Used by `evaluate` (videogen.evaluate.command.evaluate) and `benchmark`
# (videogen.evaluate.benchmark.command).
_EVALUATE_WHAT_HELP = (
    "evaluate: what to measure, 'generation' (the default: prompt following, physics, seams, "
    "speed), 'autoencoder' (reconstruction), 'noise_levels' (which noise levels the model fails "
    "to decide), 'caption_use' (which caption words the model has learned), 'learning_curve' "
    "(every saved dit checkpoint on the generation suite, against steps and compute) or "
    "'long_video' (identity drift, seams and memory of --frames-long videos).")
_BENCHMARK_WHAT_HELP = (
    "benchmark: 'all' (the default), 'train_step' (FLOP/s against a matmul, compile time, memory "
    "per device), 'generation' (sampling speed), 'loader' (samples/s of config.data), "
    "'autoencoder' (encode and decode frames/s), 'watermark' (the watermark's invisibility, "
    "false positives and robustness; not part of 'all') or 'sequence_parallel' (per-device "
    "memory of attention split over the mesh's sequence axis; not part of 'all').")
flags.DEFINE_string("what", None, f"{_EVALUATE_WHAT_HELP} {_BENCHMARK_WHAT_HELP}")
flags.DEFINE_integer("scenes_per_group", None, "evaluate: the generation suite's size "
                     "(--what=generation), as scenes of training combinations and as many of "
                     "held-out ones (default: the experiment's config.eval_generation, 2). Each "
                     "scene gives 2 prompts (its brief and its descriptive caption) and one case "
                     "per conditioned mode, so N gives 4N text-to-video prompts; "
                     "--what=learning_curve: default 12, 48 prompts.")
flags.DEFINE_list("checkpoint_steps", [], "evaluate --what=learning_curve: the dit checkpoint "
                  "steps to evaluate, e.g. 1500,3000 (default: every saved one).")
flags.DEFINE_integer("every", None, "evaluate --what=learning_curve: evaluate the saved dit "
                     "checkpoints whose step is a multiple of this (with --checkpoint_steps: "
                     "both).")
flags.DEFINE_list("compare", [], "evaluate --what=learning_curve: other runs whose "
                  "learning_curve.json to compare with, e.g. runs/a,runs/b: writes "
                  "curves/learning_curve_compare.png and learning_curve_compare.md.")
flags.DEFINE_boolean("compare_mean", False, "evaluate --what=learning_curve with --compare: the "
                     "runs are draws of one recipe (e.g. seeds); the table adds their mean ± sd "
                     "at each step they all measured.")
flags.DEFINE_list("layouts", [], "benchmark: also time the train step on these meshes, "
                  "DEVICES:DATAxFSDPxTENSOR each, e.g. 1:1x1x1,8:8x1x1,8:1x8x1.")
flags.DEFINE_string("stage", None, "benchmark: the stage whose train step is timed (default: "
                    "'dit' when the experiment has it, else its last stage).")
flags.DEFINE_integer("watermark_videos", None, "benchmark --what=watermark: videos per set "
                     "(world clips at each size, and the workdir's generated videos; default 8).")

# Used by `export` (videogen.export.command), with --out, --frames, --height and --width.
flags.DEFINE_list("formats", None, "export: the formats to write, comma-separated, of those in "
                  "videogen.export.command.FORMATS (default: all).")
flags.DEFINE_integer("batch", None, "export: the example batch size parity is measured at (the "
                     "batch axis stays dynamic; default 1).")


flags.DEFINE_string("autoencoder_from", None, "train, run: start --workdir from another run's "
                    "trained autoencoder: its checkpoint, tokenizer and (where it fits) latent "
                    "cache are copied in first, so that only the later stages train, e.g. "
                    "--autoencoder_from=runs/tiny.")

# The flags that join a multi-process run (videogen.parallel.multihost), for `train`, `run` and
# `cache_latents`.
_PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id")
# The flags of every command that writes generated videos (videogen.provenance.writer).
_STAMP_FLAGS = ("watermark", "manifest_prompt", "key")
_GENERATE_FLAGS = ("prompt", "negative_prompt", "out", "mode", "frames", "height", "width",
                   "steps", "guidance", "sampler", "seed", "input", "input2", "strength",
                   "bridge_frames", "prompts_file", *_STAMP_FLAGS)

# A command's function is called as `function(experiment, workdir, **{flag: value})` (see
# videogen.cli.Command); its module's docstring is its `--help`.
COMMANDS: dict[str, cli.Command] = {
    "run": cli.Command("videogen.main_job:run", True,
                       (*_STAMP_FLAGS, "allow_config_change", "autoencoder_from",
                        *_PROCESS_FLAGS)),
    "train": cli.Command("videogen.train.command:command", True,
                         ("allow_config_change", "autoencoder_from", *_PROCESS_FLAGS)),
    "cache_latents": cli.Command("videogen.train.latent_cache:command", True, _PROCESS_FLAGS),
    "generate": cli.Command("videogen.generate.command:command", False, _GENERATE_FLAGS,
                            {"out": _GENERATE_OUT_HELP}),
    "evaluate": cli.Command("videogen.evaluate.command:evaluate", False,
                            ("what", "out", "scenes_per_group", "steps", *_STAMP_FLAGS,
                             "checkpoint_steps", "every", "compare", "compare_mean", "frames"),
                            {"what": _EVALUATE_WHAT_HELP, "out": _EVALUATE_OUT_HELP}),
    "summary": cli.Command("videogen.evaluate.summary:summary", True),
    "benchmark": cli.Command("videogen.evaluate.benchmark:command", True,
                             ("what", "layouts", "stage", "watermark_videos"),
                             {"what": _BENCHMARK_WHAT_HELP}),
    "export": cli.Command("videogen.export.command:command", False,
                          ("out", "formats", "frames", "height", "width", "batch"),
                          {"out": _EXPORT_OUT_HELP}),
    "detect": cli.Command("videogen.provenance.detect:command", False, ("input", "key"),
                          {"input": _DETECT_INPUT_HELP}),
}


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags parser for `app.run`: the help, or the parsed flags; a mistake exits with 2."""
  return cli.parse_flags(argv, COMMANDS, usage=__doc__)


def main(argv: list[str]) -> int | None:
  name = cli.chosen_command(argv, COMMANDS)
  command = COMMANDS[name]
  cli.check_workdir(_WORKDIR.value)
  cli.set_up_logging()
  cli.enable_compilation_cache()
  function = command.load()
  experiment = None
  if command.needs_config or _CONFIG.value is not None:
    experiment = cli.validated_experiment(name, _CONFIG.value)
  values: dict[str, Any] = {flag: flags.FLAGS[flag].value for flag in command.flags}
  return function(experiment, _WORKDIR.value, **values)


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
