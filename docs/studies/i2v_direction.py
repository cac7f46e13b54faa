"""Direction in image-to-video from ground-truth first frames (docs/learning_curve.md).

    python docs/studies/i2v_direction.py WORKDIR 64 [STEP]

Each procedural-world clip (9x32x32, seed 777) with a moving object gives its first frame and its
descriptive caption to image-to-video; the analyzer reads each moving object's direction in the
real clip, in the generated one, and in one generated from the caption with every direction
reversed. Prints the share read as in the real clip.
"""
import sys
from data_pipelines.shapes import world
from videogen.evaluate import scoring
from videogen.generate import modes, pipeline

workdir, count = sys.argv[1], int(sys.argv[2])
step = int(sys.argv[3]) if len(sys.argv) > 3 else None  # None: the latest checkpoint
generator = pipeline.load(workdir, progress=False, step=step)
totals = {"real": [0, 0], "i2v": [0, 0], "i2v, directions reversed": [0, 0]}
reverse = {"left": "right", "right": "left", "up": "down", "down": "up"}
def flip(direction):
  return "-".join(reverse[part] for part in direction.split("-"))
for index in range(count):
  clip = world.generate(index, seed=777, frames=9, height=32, width=32)
  moving = [o for o in clip["objects"] if o["direction"] != "static"]
  if not moving:
    continue
  expected = [{k: o[k] for k in ("color", "shape", "size", "direction")} for o in clip["objects"]]
  videos = {"real": clip["video"],
            "i2v": modes.image_to_video(generator, clip["description"], clip["video"][0],
                                        frames=9, seed=index).video}
  text = clip["description"]
  for o in moving:
    text = text.replace(f"{o['color']} {o['shape']} moving {o['direction']}",
                        f"{o['color']} {o['shape']} moving {flip(o['direction'])}")
  videos["i2v, directions reversed"] = modes.image_to_video(
      generator, text, clip["video"][0], frames=9, seed=index).video
  for name, video in videos.items():
    score = scoring.score_video(video, [e for e in expected if e["direction"] != "static"])
    totals[name][0] += score.hits.get("direction", 0)
    totals[name][1] += score.totals.get("direction", 0)
for name, (hits, total) in totals.items():
  print(f"{name}: direction read as in the ground-truth clip for {hits}/{total} = "
        f"{hits / max(total, 1):.2f}")
