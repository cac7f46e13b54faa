r"""Which words of its caption the model uses.

    python -m videogen.main evaluate --workdir=runs/tiny --what=caption_use

Each test-split clip of the procedural world is noised to a level t with a fixed noise draw, and
the transformer's flow loss on it is measured twice: with the clip's own descriptive caption, and
with the caption of a counterfactual scene that differs in one attribute of one object (its colour,
shape, size, direction of motion (reversed), moving or staying still), or in the background, or
with no caption at all. The clip, noise and level are the same in both, so the difference (the
"gap") is the loss the model saves by reading that attribute from the caption; the "win rate" is
the fraction of clips on which the true caption scores the lower loss (0.5: the word is ignored).

Unlike `--what=generation`, nothing is sampled and no analyzer reads pixels: it measures whether
the conditioning path has learned an attribute at all, cheaply and without sampling noise, so
that a word the model ignores is told apart from one it uses but renders badly. Each level is
measured twice: every latent frame noised ("t2v"), and with the first latent frame given clean
("first", the image-to-video case), where the motion words decide where the objects go next.

The command (`videogen.evaluate.command`) prints a table, then one JSON object as the last line,
and writes it to WORKDIR/eval_caption_use.json. The dit stage measures `stage_scores` at its
evaluations, so this module imports nothing from `videogen.train`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world
from videogen.diffusion import flow
from videogen.evaluate import noise_levels
from videogen.generate import pipeline

LEVELS: tuple[float, ...] = (0.5, 0.7, 0.9, 1.0)
# What a counterfactual caption changes; "caption" drops the caption altogether (the null caption).
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "direction", "motion", "background",
                               "caption")
# Frames given clean: none (text-to-video) or the first latent frame (image-to-video).
GIVEN: tuple[str, ...] = ("t2v", "first")
# The level of each setting in the dit stage's periodic measurement (`stage_scores`). Text-to-video
# at 0.9: high enough that the caption decides much of the clip, low enough that the noised
# frames still show where objects are. First frame given at 1: there only the caption says where
# the objects go, so motion words separate best (moving vs still: 0.33 for the main job's model,
# which ignores motion words, against 0.91 for one trained on given frames near t = 1; at 0.9,
# 0.58 against 0.80).
STAGE_LEVELS: dict[str, float] = {"t2v": 0.9, "first": 1.0}
# Test-split captions whose tokens `token_rank` reads in the dit stage's measurement.
RANK_CAPTIONS = 64
# A `token_rank` below this is a collapsed text encoder: every weak run of the tiny preset read
# 1.3-1.8 at step 1,500 and every other run 2.2 or more (docs/learning_curve.md).
COLLAPSED_RANK = 2.0
# Speed of an object that a "motion" counterfactual sets moving: the default world's middle one.
_COUNTERFACTUAL_SPEED = 0.45

# (videos uint8 [B, T, H, W, 3], captions (B strings, "" = no caption), level, given, noise
# seeds (B ints)) -> float [B]: each clip's flow loss at that level, its noise drawn from its seed.
LossFn = Callable[[np.ndarray, Sequence[str], float, str, Sequence[int]], np.ndarray]


def _opposite(direction: str) -> str:
  dx, dy = vocabulary.DIRECTIONS[direction]
  return next(name for name, (x, y) in vocabulary.DIRECTIONS.items()
              if np.isclose(x, -dx) and np.isclose(y, -dy))


def counterfactual(scene: world.Scene, attribute: str,
                   rng: np.random.Generator) -> Optional[world.Scene]:
  """The scene with `attribute` of one randomly chosen object changed (or its background).

  Colours stay distinct within the scene; "direction" reverses a moving object's motion;
  "motion" stops a moving object or sets a still one moving. Returns None when no object can
  take the change (e.g. "direction" in a scene of still objects) and for "caption".
  """
  if attribute not in ATTRIBUTES:
    raise ValueError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
  if attribute == "caption":
    return None
  if attribute == "background":
    others = [b for b in vocabulary.BACKGROUNDS if b != scene.background]
    return dataclasses.replace(scene, background=others[rng.integers(len(others))])
  candidates = list(range(len(scene.objects)))
  if attribute == "direction":
    candidates = [i for i in candidates if scene.objects[i].direction != vocabulary.STATIC]
  if not candidates:
    return None
  index = candidates[rng.integers(len(candidates))]
  obj = scene.objects[index]
  if attribute == "color":
    used = {o.color for o in scene.objects}
    others = [c for c in vocabulary.COLORS if c not in used]
    changed = dataclasses.replace(obj, color=others[rng.integers(len(others))])
  elif attribute == "shape":
    others = [s for s in vocabulary.SHAPES if s != obj.shape]
    changed = dataclasses.replace(obj, shape=others[rng.integers(len(others))])
  elif attribute == "size":
    changed = dataclasses.replace(obj, size=next(s for s in vocabulary.SIZES if s != obj.size))
  elif attribute == "direction":
    changed = dataclasses.replace(obj, direction=_opposite(obj.direction))
  elif obj.direction == vocabulary.STATIC:  # "motion": set it moving
    directions = tuple(vocabulary.DIRECTIONS)
    changed = dataclasses.replace(obj, direction=directions[rng.integers(len(directions))],
                                  speed=_COUNTERFACTUAL_SPEED)
  else:  # "motion": stop it
    changed = dataclasses.replace(obj, direction=vocabulary.STATIC, speed=0.0)
  objects = scene.objects[:index] + (changed,) + scene.objects[index + 1:]
  return dataclasses.replace(scene, objects=objects)


def measure_gaps(loss_fn: LossFn, *, levels: Sequence[float] = LEVELS,
                 given: Sequence[str] = GIVEN, clips: int = 64, frames: int = 9,
                 height: int = 32, width: int = 32,
                 world_config: world.WorldConfig = world.WorldConfig(), seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
  """The loss gap and win rate of every attribute, per level and per `given` setting.

  Returns:
    {"clips", "frames", "height", "width", "pairs": {attribute: clips it applies to},
     "given": {"t2v": {"0.5": {"loss": mean loss with the true caption,
                               "gap": {attribute: mean loss increase},
                               "win_rate": {attribute: fraction}}, ...}, ...}}.
  """
  levels = noise_levels.check_levels(levels)
  unknown = [g for g in given if g not in GIVEN]
  if unknown or not given:
    raise ValueError(f"given must name some of {GIVEN}, got {tuple(given)}")
  if clips < 1:
    raise ValueError(f"clips must be >= 1, got {clips}")
  rng = np.random.default_rng(seed)
  videos, captions = [], {attribute: [] for attribute in ATTRIBUTES}
  truth = []
  for index in range(clips):
    scene = world.sample_scene(index, seed=seed, split="test", config=world_config)
    rendered = world.render(scene, frames=frames, height=height, width=width,
                            fps=world_config.fps)
    videos.append(rendered["video"])
    truth.append(rendered["description"])
    for attribute in ATTRIBUTES:
      changed = counterfactual(scene, attribute, rng)
      if changed is not None:
        changed = world.describe(changed, frames=frames, height=height, width=width,
                                 fps=world_config.fps)
      elif attribute == "caption":
        changed = ""
      captions[attribute].append(changed)
  videos = np.stack(videos)
  noise_seeds = [seed + index for index in range(clips)]
  pairs = {a: sum(c is not None for c in captions[a]) for a in ATTRIBUTES}
  report: dict[str, Any] = {"clips": clips, "frames": frames, "height": height, "width": width,
                            "pairs": pairs, "given": {}}
  bar = tqdm.tqdm(total=len(given) * len(levels) * (1 + len(ATTRIBUTES)), desc="caption use",
                  unit="pass", disable=not progress)
  for setting in given:
    report["given"][setting] = {}
    for level in levels:
      base = np.asarray(loss_fn(videos, truth, level, setting, noise_seeds), np.float64)
      bar.update(1)
      if base.shape != (clips,):
        raise ValueError(f"the loss function returned shape {base.shape} for {clips} clips: it "
                         f"must return one loss per clip")
      gaps, wins = {}, {}
      for attribute in ATTRIBUTES:
        keep = [i for i, c in enumerate(captions[attribute]) if c is not None]
        if keep:
          changed = np.asarray(loss_fn(videos[keep], [captions[attribute][i] for i in keep],
                                       level, setting, [noise_seeds[i] for i in keep]),
                               np.float64)
          # Same clip, noise and level as its base loss: only the caption differs.
          difference = changed - base[keep]
          gaps[attribute] = float(difference.mean())
          wins[attribute] = float(np.mean(difference > 0))
        else:
          gaps[attribute] = wins[attribute] = None
        bar.update(1)
      report["given"][setting][f"{level:g}"] = {"loss": float(base.mean()), "gap": gaps,
                                                "win_rate": wins}
  bar.close()
  return report


def format_table(report: dict[str, Any]) -> str:
  """Per given setting and level: the true caption's loss, then each attribute's gap and win rate
  ("gap/win")."""
  lines = []
  for setting, per_level in report["given"].items():
    lines.append(f"given: {setting}   loss gap of a counterfactual caption / "
                 f"win rate of the true one")
    lines.append("level    loss  " + "  ".join(f"{a:>13}" for a in ATTRIBUTES))
    for level, row in per_level.items():
      cells = []
      for attribute in ATTRIBUTES:
        gap, win = row["gap"][attribute], row["win_rate"][attribute]
        cells.append("          n/a" if gap is None else f"{gap:+8.4f}/{win:4.2f}")
      lines.append(f"{level:>5}  {row['loss']:6.3f}  " + "  ".join(cells))
  return "\n".join(lines)


def generator_loss_fn(generator: Any) -> LossFn:
  """The flow loss of a `pipeline.Generator`'s transformer on clips, for `measure_gaps`.

  Clips and captions are encoded once each (clips cached by noise seed: one seed per clip); each
  loss is the mean squared error of the predicted velocity over the latent frames not given.
  """
  latents: dict[int, jax.Array] = {}
  conditioning: dict[str, dict[str, jax.Array]] = {}

  def loss_fn(videos: np.ndarray, captions: Sequence[str], level: float, given: str,
              noise_seeds: Sequence[int]) -> np.ndarray:
    losses = []
    for video, caption, noise_seed in zip(videos, captions, noise_seeds):
      if noise_seed not in latents:
        latents[noise_seed] = generator.encode(video)
      x0 = latents[noise_seed]
      noise = jax.random.normal(jax.random.key(noise_seed), x0.shape, jnp.float32)
      times = np.full(x0.shape[:2], level, np.float32)
      if given == "first":
        times[:, 0] = 0.0
      x = flow.noisy_input(x0, noise, jnp.asarray(times))
      if caption not in conditioning:
        conditioning[caption] = generator.encode_prompt(caption)
      velocity = generator.velocity(x, jnp.asarray(times), conditioning[caption])
      error = jnp.square(velocity.astype(jnp.float32) - flow.velocity_target(x0, noise))
      losses.append(float(jnp.mean(error[:, 1:] if given == "first" else error)))
    return np.asarray(losses)

  return loss_fn


def effective_rank(tokens: np.ndarray) -> float:
  """exp(entropy) of the energy shares of the singular values of `tokens` [N, D] about their
  mean: 1 when they differ along one direction only, D when they spread evenly over D."""
  tokens = np.asarray(tokens, np.float64)
  values = np.linalg.svd(tokens - tokens.mean(axis=0), compute_uv=False)
  shares = np.square(values) / max(float(np.sum(np.square(values))), np.finfo(np.float64).tiny)
  shares = shares[shares > 0]
  return float(np.exp(-np.sum(shares * np.log(shares)))) if shares.size else 0.0


def token_rank(text_encoder: Any, tokenizer: Any, captions: Sequence[str]) -> float:
  """The effective rank of the text encoder's outputs at the captions' tokens (padding left out).

  A jointly trained encoder can collapse: one direction then carries almost all of the
  difference between caption tokens, and the transformer reads colour and count worse (in the
  tiny preset's runs, 1.3-2.4 in the weak ones and 4.5 or more in the others:
  docs/learning_curve.md, "What makes a run weak").
  """
  ids, mask = tokenizer.encode(list(captions))
  embeddings, _ = text_encoder(jnp.asarray(ids), jnp.asarray(mask))
  return effective_rank(np.asarray(embeddings, np.float32)[np.asarray(mask, bool)])


def text_token_rank(text_encoder: Any, tokenizer: Any, *, shape: tuple[int, int, int],
                    world_config: world.WorldConfig) -> float:
  """`token_rank` on the descriptive captions of `RANK_CAPTIONS` test-split scenes of the
  procedural world (seed 0) at `shape` (frames, height, width): the dit stage's
  eval/text_token_rank and the learning curve's text_token_rank."""
  frames, height, width = shape
  captions = [world.describe(world.sample_scene(index, seed=0, split="test", config=world_config),
                             frames=frames, height=height, width=width, fps=world_config.fps)
              for index in range(RANK_CAPTIONS)]
  return token_rank(text_encoder, tokenizer, captions)


def collapse_warning(rank: float) -> str | None:
  """The warning for a text encoder whose `token_rank` is `rank`; None when it has not collapsed."""
  if rank >= COLLAPSED_RANK:
    return None
  return (f"the text encoder's caption tokens span {rank:.1f} effective directions "
          f"(text_token_rank below {COLLAPSED_RANK:g}): they have collapsed, and the transformer "
          "will follow colour and count weakly; train the text encoder more slowly, with a "
          "smaller text_encoder entry in --config.train.dit.learning_rate_scales (the tiny preset "
          "sets '(\"text_encoder=0.3\",)'; docs/learning_curve.md, \"What makes a run weak\")")


def stage_scores(autoencoder: Any, text_encoder: Any, dit: Any, tokenizer: Any, flow_config: Any,
                 *, shape: tuple[int, int, int], world_config: world.WorldConfig,
                 clips: int) -> dict[str, float]:
  """The gaps and win rates at `STAGE_LEVELS` of in-memory models, as flat training metrics.

  The win rate says how often a word helps; the gap, how much: on a few clips a word the model
  ignores can still win half of them or more by chance, while its gap stays near 0.

  Returns:
    {"caption_gap_<given>_<attribute>": mean loss increase, "caption_win_<given>_<attribute>":
    win rate} for every given setting and every attribute that applies to at least one clip, and
    "text_token_rank": `text_token_rank` at `shape`.
  """
  generator = pipeline.Generator(autoencoder=autoencoder, text_encoder=text_encoder, dit=dit,
                                 tokenizer=tokenizer, flow_config=flow_config,
                                 default_shape=shape, progress=False)
  frames, height, width = shape
  loss_fn = generator_loss_fn(generator)
  scores = {}
  for setting, level in STAGE_LEVELS.items():
    report = measure_gaps(loss_fn, levels=(level,), given=(setting,), clips=clips,
                          frames=frames, height=height, width=width, world_config=world_config,
                          progress=False)
    measured = report["given"][setting][f"{level:g}"]
    for metric, name in (("gap", "gap"), ("win_rate", "win")):
      scores.update({f"caption_{name}_{setting}_{attribute}": value
                     for attribute, value in measured[metric].items() if value is not None})
  scores["text_token_rank"] = text_token_rank(text_encoder, tokenizer, shape=shape,
                                              world_config=world_config)
  return scores
