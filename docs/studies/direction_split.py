"""Direction's two parts for learning curves measured before the suite reported them.

    python docs/studies/direction_split.py DIR/learning_curve.json [STEP]

Since the suite splits direction (`motion_accuracy`, `still_accuracy`; see
`videogen.evaluate.scoring.DIRECTION_PARTS`), every new row holds both. An older row holds only
direction, which counts "staying still" as a ninth direction; this recomputes the parts from the
row's confusion table (the last row, or STEP), as the suite does: over the objects prompted to
move, the share that move the prompted way (chance 1/8), and over those prompted to stay still,
the share that do. Objects the analyzer did not find count as wrong.
"""
import json
import sys

rows = json.load(open(sys.argv[1]))["rows"]
row = rows[-1] if len(sys.argv) < 3 else next(r for r in rows if r["step"] == int(sys.argv[2]))
table = row["confusion"]["direction"]


def share(prompted: list[str]) -> tuple[int, int]:
  right = sum(table[name].get(name, 0) for name in prompted)
  return right, sum(n for name in prompted for n in table[name].values())


motion, still = share([name for name in table if name != "static"]), share(["static"])
print(f"step {row['step']}: direction {row['direction_accuracy']:.3f}; motion {motion[0]}/"
      f"{motion[1]} = {motion[0] / max(motion[1], 1):.3f}; still {still[0]}/{still[1]} = "
      f"{still[0] / max(still[1], 1):.3f}")
