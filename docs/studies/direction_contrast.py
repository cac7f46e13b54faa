"""Does the transformer know a direction that guidance could bring out? A negative prompt that
differs from the caption only in its directions.

    python docs/studies/direction_contrast.py WORKDIR SCENES [GUIDANCE ...]

Classifier-free guidance pushes a sample from the negative branch towards the caption's. With the
null caption as the negative (the preset), the push carries every word at once; with the caption
itself, every "moving X" turned to the opposite direction, it carries only what the transformer
reads in the direction words, scaled by the guidance. So if the transformer holds directions that
plain guidance leaves unused, this negative draws them, and if it holds none, direction stays at
chance whatever the scale.

Generates the descriptive prompts of the learning curve's suite (`--scenes_per_group=SCENES`:
2 x SCENES of its 4 x SCENES prompts; the brief ones state no direction) with the suite's seeds,
once with the preset's negative and once per GUIDANCE (default 4 and 8) with each of two
negatives: "opposite" (every direction reversed) and "still" (every moving object "staying
still"). Prints the accuracies of each as a JSON line, direction also in its two parts.
"""
import dataclasses
import json
import re
import sys

from videogen.evaluate import generation
from videogen.generate import modes

import best_of_n  # docs/studies/best_of_n.py, beside this script: the suite and the generator

OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up",
            "up-left": "down-right", "down-right": "up-left", "up-right": "down-left",
            "down-left": "up-right"}
# Longest names first, so that "up-left" is not read as "up".
MOVING = re.compile(r"moving (" + "|".join(sorted(OPPOSITE, key=len, reverse=True)) + r")\b")
NEGATIVES = {
    "opposite": lambda text: MOVING.sub(lambda m: f"moving {OPPOSITE[m.group(1)]}", text),
    # A moving object's bounce clause goes with its motion.
    "still": lambda text: re.sub(r"moving [a-z-]+( that bounces off [^;]*)?", "staying still",
                                 text),
}


def main(workdir: str, scenes: int, scales: list[float]) -> None:
  suite, generator = best_of_n.load(workdir, scenes)
  descriptive = tuple(p for p in suite.prompts if p.kind == "descriptive")
  seeds = {p.text: suite.seed + i for i, p in enumerate(suite.prompts)}

  def run(name: str, negative, guidance: float | None) -> None:
    def generate(prompt, *, frames, height, width, seed, mode="t2v", **_):
      options = {} if negative is None else dict(negative_prompt=negative(prompt),
                                                 guidance=guidance)
      # Each prompt keeps the noise it has in the whole suite (the preset's eval192 videos).
      return modes.text_to_video(generator, prompt, frames=frames, height=height, width=width,
                                 seed=seeds[prompt], **options).video

    report = generation.evaluate_generation(
        generate, dataclasses.replace(suite, prompts=descriptive, cases=()), progress=False)
    print(json.dumps({"workdir": workdir, "negative": name, "guidance": guidance,
                      "prompts": len(descriptive),
                      **{k: report.metrics[k] for k in (*best_of_n.KEYS, "motion_accuracy",
                                                        "still_accuracy")}}), flush=True)

  run("null caption (preset)", None, None)
  example = next(p.text for p in descriptive if MOVING.search(p.text))
  for name, negative in NEGATIVES.items():
    print(f"# {name}: {example!r} -> {negative(example)!r}", flush=True)
    for scale in scales:
      run(name, negative, scale)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), [float(s) for s in sys.argv[3:]] or [4.0, 8.0])
