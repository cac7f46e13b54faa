"""A contact sheet of a checkpoint's videos at a frame size of your choice (docs/learning_curve.md).

    python docs/studies/size_sheet.py WORKDIR HEIGHT WIDTH OUT.png

Text-to-video of one, two and three objects (brief and descriptive prompts), one seed per prompt,
at HEIGHT x WIDTH with the training clip's frames: a row per prompt, every frame across. The tiny
preset trains on 32x32 clips, so 32 32 shows what it learned and e.g. 48 48 how it carries that to
a size it never saw.
"""
import sys

from data_pipelines import video_io
from videogen.generate import modes
from videogen.generate import pipeline

PROMPTS = (
    "a large red circle moving right",
    "a small blue square staying still; on a black background",
    "a large yellow triangle and a small cyan circle",
    "a large white square moving down and a small magenta circle moving left; on a gray background",
    "a small green circle, a large orange square and a small blue triangle",
)

workdir, height, width, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
generator = pipeline.load(workdir, progress=False)
videos = [modes.text_to_video(generator, prompt, height=height, width=width, seed=index).video
          for index, prompt in enumerate(PROMPTS)]
# Each pixel drawn 3x3, so that the small frames can be read on a screen.
videos = [video.repeat(3, axis=1).repeat(3, axis=2) for video in videos]
video_io.write_contact_sheet(out, videos, labels=list(PROMPTS), max_frames=9)
print(f"wrote {out}")
