"""A gallery of generated videos: one `index.html` that shows every video (or image) beside its
prompt.

    write_index(out_dir, entries, title="videogen: experiments/shapes.py:tiny")

Each entry names files inside `out_dir` (relative paths, so the folder can be moved or zipped and
opened anywhere) and the text to show under it.
"""

from __future__ import annotations

import dataclasses
import html
import os
from typing import Sequence

# The gallery page's file name inside its folder.
INDEX_FILE = "index.html"
# Files shown with <video>; anything else (.png, .gif) is shown with <img>.
_VIDEO_KINDS = ("mp4", "webm")


@dataclasses.dataclass(frozen=True)
class GalleryEntry:
  """One generated video. Paths are relative to the gallery folder."""
  prompt: str
  video: str            # .mp4 (or .webm) shown with <video>; an image (.png, .gif) with <img>
  gif: str | None = None  # .gif fallback, linked under the video
  note: str = ""        # e.g. "held-out combination", "seed 3, 20 Heun steps"


def write_index(out_dir: str, entries: list[GalleryEntry], *, title: str,
                contact_sheet: str | None = None, curves: Sequence[str] = ()) -> str:
  """Writes `out_dir/index.html` and returns its path.

  `contact_sheet` and `curves` (training loss charts, e.g. from `videogen.train.curves`) are
  image files inside `out_dir`, shown after the videos.

  Raises:
    FileNotFoundError: an entry, the contact sheet or a curve names a file that is not in
      `out_dir` (the page would show a broken video or image).
  """
  for entry in entries:
    for path in (entry.video, entry.gif):
      if path is not None and not os.path.exists(os.path.join(out_dir, path)):
        raise FileNotFoundError(
            f"gallery entry for {entry.prompt!r} names {path!r}, which is not in {out_dir}: "
            f"write the video before the index")
  for path in ([contact_sheet] if contact_sheet else []) + list(curves):
    if not os.path.exists(os.path.join(out_dir, path)):
      raise FileNotFoundError(f"the gallery names the image {path!r}, which is not in "
                              f"{out_dir}: write it before the index")
  cards = []
  for entry in entries:
    gif_link = (f' · <a href="{html.escape(entry.gif)}">gif</a>' if entry.gif else "")
    note = f'<div class="note">{html.escape(entry.note)}</div>' if entry.note else ""
    source = html.escape(entry.video)
    kind = os.path.splitext(entry.video)[1].lstrip(".").lower() or "file"
    shown = (f'<video src="{source}" autoplay loop muted playsinline controls></video>'
             if kind in _VIDEO_KINDS else f'<img src="{source}" alt="{html.escape(entry.prompt)}">')
    cards.append(
        f'<figure>{shown}<figcaption>{html.escape(entry.prompt)}{note}'
        f'<div class="links"><a href="{source}">{kind}</a>{gif_link}</div>'
        f'</figcaption></figure>')
  sheet = (f'<h2>Contact sheet</h2><img class="sheet" src="{html.escape(contact_sheet)}" '
           f'alt="frames of every video">' if contact_sheet else "")
  charts = "".join(f'<img class="curve" src="{html.escape(path)}" '
                   f'alt="training curve {html.escape(path)}">' for path in curves)
  charts = f"<h2>Training</h2>{charts}" if curves else ""
  page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
figure {{ margin: 0; width: 240px; }}
video, figure img {{ width: 240px; image-rendering: pixelated; background: #000; }}
figcaption {{ font-size: 0.9em; margin-top: 0.3em; }}
.note {{ color: #a33; font-size: 0.85em; }}
.links {{ font-size: 0.8em; color: #666; }}
.sheet {{ max-width: 100%; image-rendering: pixelated; }}
.curve {{ max-width: 100%; margin: 0 1em 1em 0; }}
</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(entries)} videos.</p>
<div class="grid">
{chr(10).join(cards)}
</div>
{sheet}
{charts}
</body></html>
"""
  path = os.path.join(out_dir, INDEX_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path
