r"""Writes a preview of the procedural world: one .mp4 and one .gif per sample, a manifest, a sheet.

    python -m data_pipelines.shapes --num 16 --out /tmp/shapes_preview \
        [--height 32 --width 32 --frames 17 --seed 0 --split train]

writes, in --out:
  000000.mp4, 000000.gif, ...   sample i of the split, at the world's frame rate;
  manifest.jsonl                one JSON line per sample: {"index", "video", "gif", "caption",
                                "description", "background", "fps", "objects": [{"color", "shape",
                                "size", "direction", "track", "boxes", "bounces"}, ...]};
  contact_sheet.png             a few frames of every sample, labelled with its brief caption.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Sequence

import tqdm

from data_pipelines import video_io
from data_pipelines.shapes import world

MANIFEST = "manifest.jsonl"
CONTACT_SHEET = "contact_sheet.png"


def write_preview(out_dir: str | pathlib.Path, *, num: int, frames: int, height: int, width: int,
                  seed: int = 0, split: str = "train",
                  config: world.WorldConfig = world.WorldConfig(),
                  progress: bool = True) -> list[dict]:
  """Renders samples 0 .. num-1 of a split into `out_dir`; returns the manifest's records."""
  if num < 1:
    raise ValueError(f"--num must be at least 1, got {num}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records, videos = [], []
  with open(out_dir / MANIFEST, "w") as manifest:
    for index in tqdm.trange(num, desc=f"rendering {split} samples", disable=not progress):
      sample = world.generate(index, seed=seed, frames=frames, height=height, width=width,
                              split=split, config=config)
      stem = f"{index:06d}"
      video_io.write_video(out_dir / f"{stem}.mp4", sample["video"], fps=sample["fps"])
      video_io.write_video(out_dir / f"{stem}.gif", sample["video"], fps=sample["fps"])
      record = {"index": index, "video": f"{stem}.mp4", "gif": f"{stem}.gif",
                **{k: v for k, v in sample.items() if k != "video"}}
      manifest.write(json.dumps(record) + "\n")
      records.append(record)
      videos.append(sample["video"])
  video_io.write_contact_sheet(out_dir / CONTACT_SHEET, videos,
                               labels=[r["caption"] for r in records])
  return records


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m data_pipelines.shapes",
      description="Write preview videos, a manifest and a contact sheet of the procedural world.")
  parser.add_argument("--num", type=int, default=16, help="how many samples (indices 0 .. num-1)")
  parser.add_argument("--out", required=True, help="output folder (created)")
  parser.add_argument("--height", type=int, default=32)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--frames", type=int, default=17)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--split", default="train", choices=world.SPLITS)
  args = parser.parse_args(argv)
  records = write_preview(args.out, num=args.num, frames=args.frames, height=args.height,
                          width=args.width, seed=args.seed, split=args.split)
  print(f"wrote {len(records)} samples, {MANIFEST} and {CONTACT_SHEET} to {args.out}")
  return 0
