"""What a perfect reranker could buy: the best of N seeds per prompt, chosen by the analyzer.

    python docs/studies/best_of_n.py WORKDIR SCENES N

Generates each text-to-video prompt of the learning curve's suite (`--scenes_per_group=SCENES`:
4 x SCENES prompts) with N seeds (the suite's own seed first, so seed 1 of N is what `evaluate
--what=learning_curve` samples) and scores every video. It prints the suite's accuracies for the
first seed, and for the candidate per prompt with the most attributes right (count counted
twice), which is the most that any reranker (a learned verifier, a search over noises) could get
from these N samples. Then, for the first seed, the prompted shape against the shape read, per
prompted size: whether shapes come out at random or as one blob.

The analyzer picks the candidates here only to bound what selection can do; a reranker built on
it would be scored by the metric it optimises.
"""
import collections
import json
import sys

from videogen import workdir as workdir_lib
from videogen.evaluate import learning_curve
from videogen.evaluate import scoring
from videogen.evaluate import suite as suite_lib
from videogen.generate import pipeline


def load(workdir: str, scenes: int) -> tuple[suite_lib.Suite, pipeline.Generator]:
  """The learning curve's suite at `--scenes_per_group=scenes`, and the workdir's generator."""
  experiment = workdir_lib.saved_experiment(
      workdir, workdir_lib.DIT_STAGE, workdir_lib.require_step(workdir, workdir_lib.DIT_STAGE))
  frames_shape = tuple(pipeline.experiment_defaults(experiment).get("default_shape",
                                                                    (9, 32, 32)))
  suite = suite_lib.build_suite(learning_curve.suite_config(experiment, scenes),
                                world_config=experiment.data.world, default_shape=frames_shape)
  return suite, pipeline.load(workdir, experiment, progress=False)


KEYS = ("color_accuracy", "shape_accuracy", "size_accuracy", "direction_accuracy",
        "count_accuracy", "count_stability")


def right(score: scoring.VideoScore) -> int:
  return sum(score.hits.values()) + 2 * int(score.count_correct)


def accuracies(scores: list[scoring.VideoScore]) -> dict[str, float]:
  pooled = scoring.accuracies([score.accuracy_row() for score in scores])
  return {key.removesuffix("_accuracy"): pooled[key] for key in KEYS}


def sample(suite: suite_lib.Suite, generator: pipeline.Generator, index: int,
           candidates: int) -> tuple[list[scoring.VideoScore], list]:
  """Prompt `index` of the suite sampled with `candidates` seeds, the suite's own first: the
  analyzer's scores and the videos."""
  prompt = suite.prompts[index]
  scores, videos = [], []
  for k in range(candidates):
    # The suite numbers its text-to-video seeds from suite.seed in prompt order.
    video = generator.generate(prompt.text, frames=suite.frames, height=suite.height,
                               width=suite.width, seed=suite.seed + index + 1000 * k)
    scores.append(scoring.score_video(video, prompt.expected, prompt.background))
    videos.append(video)
  return scores, videos


def main(workdir: str, scenes: int, candidates: int) -> None:
  suite, generator = load(workdir, scenes)
  first, best = [], []
  shapes = collections.Counter()
  for index, prompt in enumerate(suite.prompts):
    scores, _ = sample(suite, generator, index, candidates)
    first.append(scores[0])
    best.append(max(scores, key=right))
    # The prompt states the scene's objects in order, and the readings follow the prompt.
    for obj, reading in zip(prompt.scene.objects, scores[0].readings, strict=True):
      shapes[(obj.size, *reading["shape"])] += 1
    print(index, [right(s) for s in scores], prompt.text, flush=True)

  print("seed 1 of", candidates, json.dumps(accuracies(first)))
  print("best of", candidates, json.dumps(accuracies(best)))
  for size in ("small", "large"):
    for prompted in ("circle", "square", "triangle"):
      read = {str(r): n for (s, p, r), n in sorted(shapes.items(), key=str)
              if (s, p) == (size, prompted)}
      print(f"{size} {prompted}: read as {read}")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
