"""A caption-clip model trained with hard negative captions, for reranking candidates.

    python docs/studies/negative_clip.py WORKDIR STEPS K OUT.pkl

Trains `videogen.models.caption_clip.CaptionClipModel` (the text stage's model, the preset's
settings) on WORKDIR's latent cache, as the text stage does, but each clip is also set against K
captions of its own scene with one thing changed (NegCLIP, Yuksekgonul et al. 2023): one object's
colour, shape, size or direction swapped, or one object dropped or one added. In-batch CLIP
leaves these words unlearned ("A text encoder pre-trained on caption-clip pairs" in
docs/learning_curve.md), because the clips of a small batch differ mostly in colour; a hard
negative differs in one word only. The clip-to-caption softmax runs over the batch's captions and
all their negatives, the caption-to-clip one over the batch's clips. Writes the parameters to
OUT.pkl, which `clip_rerank.py WORKDIR SCENES N OUT.pkl` ranks candidates with, then prints how
often the model prefers a test clip's own caption to the same caption with one change, per kind
of change (`win_rates`). STEPS 0 measures OUT.pkl alone; OUT.pkl `text` measures the text
stage's checkpoint (in-batch CLIP, no hard negatives).
"""
import collections
import json
import pickle
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world
from videogen import workdir as workdir_lib
from videogen.models import caption_clip
from videogen.train import latent_cache
from videogen.train import text_stage

import best_of_n  # docs/studies/best_of_n.py, beside this script

COLORS = tuple(vocabulary.COLORS)
SHAPES = vocabulary.SHAPES
DIRECTIONS = tuple(vocabulary.DIRECTIONS)


def split_caption(caption: str) -> tuple[list[str], str | None, bool]:
  """(object phrases, background clause or None, descriptive?) of a world caption."""
  if ";" in caption:
    parts = caption.split("; ")
    background = parts.pop() if parts[-1].startswith("on a ") else None
    return parts, background, True
  head, _, last = caption.rpartition(" and ")
  objects = (head.split(", ") + [last]) if head else [caption]
  return objects, None, False


def join_caption(objects: list[str], background: str | None, descriptive: bool) -> str:
  if descriptive:
    return "; ".join(objects + ([background] if background else []))
  return objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]


def _swap(phrase: str, words: tuple[str, ...], rng: np.random.Generator,
          pattern: str = r"\b({})\b", taken: str = "") -> str | None:
  """`phrase` with its first word of `words` replaced by another not in `taken`."""
  match = re.search(pattern.format("|".join(sorted(words, key=len, reverse=True))), phrase)
  if not match:
    return None
  others = [w for w in words if w != match.group(1) and not re.search(rf"\b{w}\b", taken)]
  if not others:
    return None
  return _article(phrase[:match.start(1)] + rng.choice(others) + phrase[match.end(1):])


def _article(phrase: str) -> str:
  """'a orange' -> 'an orange' and back: a negative must not give itself away by grammar."""
  phrase = re.sub(r"^an? ", "", phrase)
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def colour_word(phrase: str) -> str | None:
  """The colour an object phrase names (None if it names none)."""
  match = re.search(r"\b({})\b".format("|".join(COLORS)), phrase)
  return match.group(1) if match else None


def perturb(caption: str, kind: str, donor: str, rng: np.random.Generator) -> str | None:
  """The caption with one thing of `kind` changed, or None where that kind does not apply."""
  objects, background, descriptive = split_caption(caption)
  j = int(rng.integers(len(objects)))
  phrase = objects[j]
  if kind == "count":
    if len(objects) > 1 and rng.random() < 0.5:
      return join_caption(objects[:j] + objects[j + 1:], background, descriptive)
    extra = split_caption(donor)[0]
    extra = extra[int(rng.integers(len(extra)))]
    # The world gives every object of a scene its own colour.
    if (("moving" in extra or "staying" in extra) != descriptive
        or colour_word(extra) in {colour_word(o) for o in objects}):
      return None
    return join_caption(objects[:j] + [extra] + objects[j:], background, descriptive)
  if kind == "colour":
    new = _swap(phrase, COLORS, rng, taken=caption)
  elif kind == "shape":
    new = _swap(phrase, SHAPES, rng)
  elif kind == "size":
    new = _swap(phrase, vocabulary.SIZES, rng)
  else:  # direction: another direction, or still <-> moving
    if "staying still" in phrase:
      new = phrase.replace("staying still", "moving " + rng.choice(DIRECTIONS))
    elif rng.random() < 0.2:
      new = re.sub(r"moving \S+( that bounces.*)?$", "staying still", phrase)
    else:  # keeps the bounce clause, so another direction that could bounce off those edges
      edges = re.findall(r"the (top|bottom|left|right) edge", phrase)
      new = _swap(phrase, tuple(d for d in DIRECTIONS if all(_heads_to(d, e) for e in edges)),
                  rng, r"moving ({})(?![\w-])")
  if new is None or new == phrase:
    return None
  return join_caption(objects[:j] + [new] + objects[j + 1:], background, descriptive)


def _heads_to(direction: str, edge: str) -> bool:
  """Whether an object moving in `direction` can reach `edge` first."""
  dx, dy = vocabulary.DIRECTIONS[direction]
  return {"left": dx < 0, "right": dx > 0, "top": dy < 0, "bottom": dy > 0}[edge]


KINDS = ("colour", "shape", "size", "direction", "count")


def negatives(captions: list[str], k: int, rng: np.random.Generator) -> list[str]:
  """K hard negatives per caption, of different kinds where enough apply (caption-major)."""
  out = []
  for i, caption in enumerate(captions):
    found = []
    # Every kind once in a random order, then again: distinct kinds first.
    for kind in list(rng.permutation(KINDS)) * 3:
      if len(found) == k:
        break
      new = perturb(caption, kind, captions[(i + 1) % len(captions)], rng)
      if new is not None and new != caption and new not in found:
        found.append(new)
    while len(found) < k:  # a caption with too few changeable words: another scene's
      found.append(captions[(i + 1 + len(found)) % len(captions)])
    out.extend(found)
  return out


def main(workdir: str, steps: int, k: int, out: str) -> None:
  experiment = workdir_lib.saved_experiment(
      workdir, workdir_lib.DIT_STAGE, workdir_lib.require_step(workdir, workdir_lib.DIT_STAGE))
  tokenizer = workdir_lib.load_tokenizer(workdir, experiment)
  cache = latent_cache.LatentCache(f"{workdir}/latent_cache")
  with nnx.use_eager_sharding(False):
    model = text_stage.TextStage(experiment).create_model(nnx.Rngs(experiment.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 50, max(steps, 51))
  tx = optax.adamw(schedule, weight_decay=0.0)
  opt_state = tx.init(params)
  normalize = experiment.autoencoder.normalize_latents

  def loss_fn(params, tokens, mask, neg_tokens, neg_mask, latents):
    m = nnx.merge(graphdef, params, rest)
    _, pooled = m.text_encoder(jnp.concatenate([tokens, neg_tokens]),
                               jnp.concatenate([mask, neg_mask]))
    text = caption_clip.unit_length(m.text_projection(pooled.astype(jnp.float32)))
    clip = caption_clip.unit_length(m.clip_encoder(normalize(latents)))
    b = latents.shape[0]
    scale = caption_clip.inverse_temperature(m.logit_scale[...])
    labels = jnp.arange(b)
    clip_to_text = jax.nn.log_softmax(scale * clip @ text.T, axis=1)[labels, labels]
    text_to_clip = jax.nn.log_softmax(scale * text[:b] @ clip.T, axis=1)[labels, labels]
    loss = -(jnp.mean(clip_to_text) + jnp.mean(text_to_clip)) / 2
    # How often a clip's own caption beats each of its hard negatives.
    own = jnp.sum(clip * text[:b], axis=1)
    neg = jnp.einsum("be,bke->bk", clip, text[b:].reshape(b, -1, text.shape[-1]))
    return loss, jnp.mean((own[:, None] > neg).astype(jnp.float32))

  @jax.jit
  def step_fn(params, opt_state, *batch):
    (loss, win), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, win

  rng = np.random.default_rng(0)
  start = time.time()
  for step in range(steps):
    rows = cache.rows(step)
    captions = tokenizer.decode(rows["tokens"])
    neg_ids, neg_mask = tokenizer.encode(negatives(captions, k, rng))
    params, opt_state, loss, win = step_fn(
        params, opt_state, jnp.asarray(rows["tokens"]), jnp.asarray(rows["token_mask"], bool),
        jnp.asarray(neg_ids), jnp.asarray(neg_mask), jnp.asarray(rows["latents"]))
    if step % 100 == 0 or step == steps - 1:
      print(f"step {step} loss {float(loss):.4f} own caption beats a hard negative "
            f"{float(win):.3f} ({time.time() - start:.0f} s)", flush=True)
  if steps:
    with open(out, "wb") as f:
      pickle.dump(jax.tree.map(np.asarray, nnx.to_pure_dict(params)), f)
    print("wrote", out)
  elif out == "text":
    model, _ = workdir_lib.restore_model(workdir, workdir_lib.TEXT_STAGE, graphdef, params, rest,
                                         experiment=experiment)
    params = nnx.state(model, nnx.Param)
  else:
    with open(out, "rb") as f:
      nnx.replace_by_pure_dict(params, pickle.load(f))
  print(json.dumps(win_rates(workdir, experiment, tokenizer, nnx.merge(graphdef, params, rest))))


def win_rates(workdir: str, experiment, tokenizer, model, clips: int = 256) -> dict[str, float]:
  """Per kind of change, how often a test-split clip's own caption is more similar to it than
  the caption with that change (chance 0.5): what the model reads from real clips, on scenes
  it never saw (the first `clips` of the world's test split, captions brief and descriptive in
  turn). `direction_word`: the same as `direction` with every bounce clause taken out of both
  captions."""
  _, generator = best_of_n.load(workdir, 1)
  world_config = experiment.data.world
  rng = np.random.default_rng(1)
  wins = collections.defaultdict(list)
  samples = [world.generate(i, seed=0, frames=9, height=32, width=32, split="test",
                            config=world_config) for i in range(clips)]
  captions = [s["caption"] if i % 2 else s["description"] for i, s in enumerate(samples)]
  for i, (sample, caption) in enumerate(zip(samples, captions)):
    latents = generator.encode(sample["video"])
    pairs = [(kind, caption, perturb(caption, kind, captions[(i + 2) % clips], rng))
             for kind in KINDS]
    # Neither caption says how anything bounces: only the direction word differs (a bounce
    # clause narrows the directions down by itself).
    plain = re.sub(r" that bounces[^;]*", "", caption)
    pairs.append(("direction_word", plain, perturb(plain, "direction", caption, rng)))
    pairs = [(kind, own, new) for kind, own, new in pairs if new and new != own]
    texts = [text for _, own, new in pairs for text in (own, new)]
    ids, mask = tokenizer.encode(texts)
    text, clip = model(jnp.asarray(ids), jnp.asarray(mask),
                       jnp.repeat(latents, len(texts), axis=0))
    sims = np.asarray(text @ clip[0]).reshape(-1, 2)
    for (kind, _, _), (own_sim, new_sim) in zip(pairs, sims):
      wins[kind].append(float(own_sim > new_sim))
  return {kind: round(float(np.mean(v)), 3) for kind, v in wins.items()} | {
      f"{kind}_pairs": len(v) for kind, v in wins.items()}


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
