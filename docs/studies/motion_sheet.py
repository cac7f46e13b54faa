"""A contact sheet of one object prompted in each of the eight directions (docs/learning_curve.md).

    python docs/studies/motion_sheet.py WORKDIR STEP OUT.png

Text-to-video with image-first sampling, one seed per prompt ("a large red circle moving right;
on a black background", ...): a row per direction, every frame across.
"""
import dataclasses
import sys

from data_pipelines import video_io
from data_pipelines.shapes import vocabulary
from videogen.generate import modes
from videogen.generate import pipeline

workdir, step, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
generator = pipeline.load(workdir, progress=False, step=step)
generator.sample_config = dataclasses.replace(generator.sample_config,
                                              frame_schedule="image_first")
prompts = [f"a large red circle moving {direction}; on a black background"
           for direction in vocabulary.DIRECTIONS]
videos = [modes.text_to_video(generator, prompt, seed=index).video
          for index, prompt in enumerate(prompts)]
# Each pixel drawn 3x3, so that 32x32 frames can be read on a screen.
videos = [video.repeat(3, axis=1).repeat(3, axis=2) for video in videos]
video_io.write_contact_sheet(out, videos, labels=prompts, max_frames=9)
print(f"wrote {out}")
