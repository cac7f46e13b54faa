"""Video and image files in and out: the one place where every stage reads or writes pixels.

    frames, fps = video_io.read_video("clip.mp4")           # uint8 [T, H, W, 3], frames per second
    info = video_io.probe_video("clip.mp4")                 # size, fps, frames, source pixel format
    video_io.write_video("sample.mp4", frames, fps=8)       # H.264 yuv420p; ".gif" writes a GIF
    video_io.write_contact_sheet("grid.png", [frames_a, frames_b], labels=["a", "b"])

Decoding runs the ffmpeg binary that the `imageio-ffmpeg` wheel ships (ffmpeg 9), so no system
ffmpeg is needed. It is called directly rather than through `imageio_ffmpeg.read_frames` because
that generator hides ffmpeg's exit status and error log: a truncated file then decodes to a few
frames and no error, while here it is a `VideoDecodeError` that says the file is cut short.
`mediapy.read_video` is not used: it cannot parse the stream header of this ffmpeg version.
Writing pipes frames through `imageio_ffmpeg.write_frames`, for GIFs too: Pillow (imageio's GIF
writer) merges identical consecutive frames, so a still clip would read back shorter.

Every decoded frame is RGB uint8. The source pixel format (grey, with alpha, ...) is reported by
`probe_video`, so that a data set builder can decide what to do with such files.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
from typing import Any

import imageio_ffmpeg
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

# Containers this module is tested with; ffmpeg may read others too.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".webm", ".gif", ".mov")
WRITE_SUFFIXES: tuple[str, ...] = (".mp4", ".gif")
# H.264 constant rate factor for written mp4s: visually lossless, still small for short clips.
MP4_CRF = 15
# Seconds one ffmpeg call may take before it is stopped (a stuck pipe must not hang a build).
FFMPEG_TIMEOUT_S = 600.0

# ffmpeg pixel formats that carry one (grey) channel, with or without alpha.
_GREY_PIX_FMTS = re.compile(r"^(gray|grey|ya|monob|monow|y400|y8|y16)")
# ffmpeg pixel formats that carry alpha. GIF and PNG decoders report "bgra"/"rgba"/"pal8" for
# every file, opaque or not, so "has alpha" means "may be transparent", not "is".
_ALPHA_PIX_FMTS = re.compile(r"^(rgba|bgra|argb|abgr|ya\d|pal8|gbrap|yuva|ayuv|vuya|rgb32|bgr32)")


class VideoDecodeError(ValueError):
  """A video file could not be read: says which file, what was wrong and what to do.

  Attributes:
    path: the file.
    reason: a short machine-readable kind: "missing", "empty", "undecodable", "truncated",
      "no_video_stream" ("alpha" from `read_image`).
    message: what was wrong and what to do, without the path.
  """

  def __init__(self, path: str | pathlib.Path, reason: str, message: str):
    self.path = str(path)
    self.reason = reason
    self.message = message
    super().__init__(f"{path}: {message}")


def _ffmpeg() -> str:
  return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: list[str], path: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs ffmpeg with `args`; stdout is bytes, stderr text."""
  try:
    return subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", *args],
                          capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as error:
    raise VideoDecodeError(
        path, "undecodable",
        f"ffmpeg took more than {FFMPEG_TIMEOUT_S:.0f} s on this file; check that it is a "
        f"regular video file, not a pipe or a live stream") from error


def _check_readable(path: pathlib.Path) -> None:
  if not path.exists():
    raise VideoDecodeError(path, "missing", "no such file: check the path")
  if not path.is_file():
    raise VideoDecodeError(path, "undecodable", "not a regular file")
  if path.stat().st_size == 0:
    raise VideoDecodeError(path, "empty", "the file is empty (0 bytes): copy or export it again")


def _starts_like_mp4(path: pathlib.Path) -> bool:
  """True when the file begins with an ISO media 'ftyp' box, as every mp4/mov does."""
  with path.open("rb") as file:
    return file.read(8)[4:8] == b"ftyp"


def _error_lines(log: str, limit: int = 3) -> str:
  """The last few meaningful lines of an ffmpeg log, for error messages."""
  lines = [line.strip() for line in log.splitlines()
           if line.strip() and not line.startswith(("  ", "frame=", "Input #", "At least one"))]
  return " | ".join(lines[-limit:]) or "no message from ffmpeg"


def _parse_header(log: str, path: pathlib.Path) -> dict[str, Any]:
  """Parses the input description that ffmpeg prints for `-i path` (the first video stream)."""
  stream_line = next((line for line in log.splitlines()
                      if re.match(r"\s*Stream #0:\d+.*: Video: ", line)), None)
  if stream_line is None:
    if "Input #0" in log:
      raise VideoDecodeError(path, "no_video_stream",
                             "the file holds no video stream (audio only?): pass a video file")
    if "moov atom not found" in log and _starts_like_mp4(path):
      # An mp4 whose header survived but whose index (written last) did not.
      raise VideoDecodeError(
          path, "truncated",
          "the file is cut short (its mp4 index 'moov' is missing): copy or export it again")
    raise VideoDecodeError(
        path, "undecodable",
        f"ffmpeg cannot decode it ({_error_lines(log)}): convert it with "
        f"`ffmpeg -i IN -pix_fmt yuv420p OUT.mp4` or remove it")
  description = stream_line.split(": Video: ", 1)[1]
  # Split on commas outside parentheses: "h264 (High), yuv420p(tv, progressive), 48x32 [..], ..."
  parts = [p.strip() for p in re.split(r",\s*(?![^()]*\))", description)]
  codec = parts[0].split(" ", 1)[0]
  pix_fmt = parts[1].split("(", 1)[0].strip() if len(parts) > 1 else ""
  size = next(filter(None, (re.match(r"(\d+)x(\d+)\b", part) for part in parts[1:])), None)
  if size is None or 0 in (int(size.group(1)), int(size.group(2))):
    raise VideoDecodeError(path, "undecodable",
                           f"ffmpeg reports no frame size for it ({stream_line.strip()})")
  width, height = int(size.group(1)), int(size.group(2))
  # "tbr" is ffmpeg's best guess at the real frame rate; "fps" the container's average (a GIF
  # with 12/13 cs delays for 8 fps shows "8.33 fps, 8 tbr").
  rates = {unit: float(value) for value, unit in re.findall(r"([\d.]+) (tbr|fps)\b", description)}
  fps = rates.get("tbr") or rates.get("fps") or 0.0
  duration_match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", log)
  duration = (int(duration_match.group(1)) * 3600 + int(duration_match.group(2)) * 60
              + float(duration_match.group(3))) if duration_match else 0.0
  rotation_match = re.search(r"rotation of (-?[\d.]+) degrees", log)
  rotation = int(round(float(rotation_match.group(1)))) % 360 if rotation_match else 0
  if rotation in (90, 270):  # ffmpeg turns such frames upright while decoding.
    width, height = height, width
  # VP8/VP9 keep alpha beside the colour planes; ffmpeg then reports "yuv420p" + alpha_mode 1.
  alpha_side_channel = re.search(r"alpha_mode\s*:\s*1", log) is not None
  return {
      "width": width,
      "height": height,
      "fps": fps,
      "duration": duration,
      "codec": codec,
      "pix_fmt": pix_fmt,
      "is_grey": bool(_GREY_PIX_FMTS.match(pix_fmt)),
      "has_alpha": bool(_ALPHA_PIX_FMTS.search(pix_fmt)) or alpha_side_channel,
      "alpha_side_channel": alpha_side_channel,
      "rotation": rotation,
  }


def probe_video(path: str | pathlib.Path, *, count_frames: bool = False) -> dict[str, Any]:
  """Describes a video file without decoding its frames.

  Args:
    path: the video file.
    count_frames: also count the frames exactly, by reading (not decoding) every packet: one
      more pass over the file, still fast.

  Returns:
    A dict with "width", "height" (as decoded, after any rotation), "fps" (0.0 when unknown),
    "duration" (seconds, 0.0 when unknown), "frames" (exact count, or None when not counted),
    "frames_estimate" (from duration and fps), "codec", "pix_fmt" (the source pixel format, e.g.
    "yuv420p", "gray", "rgba", "bgra" for every GIF), "is_grey", "has_alpha" (the source format can
    hold transparency), "alpha_side_channel" (VP8/VP9 alpha, which only libvpx decodes),
    "rotation", and "truncated" (True when counting found the file cut short).

  Raises:
    VideoDecodeError: the file is missing, empty, not a video, or cut short before its index.
  """
  path = pathlib.Path(path)
  _check_readable(path)
  if count_frames:
    result = _run_ffmpeg(["-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"], path)
  else:
    result = _run_ffmpeg(["-i", str(path)], path)
  log = result.stderr.decode("utf-8", "replace")
  info = _parse_header(log, path)
  info["frames_estimate"] = (int(round(info["duration"] * info["fps"]))
                             if info["duration"] and info["fps"] else None)
  info["frames"] = None
  info["truncated"] = False
  if count_frames:
    counts = re.findall(r"frame=\s*(\d+)", log)
    info["frames"] = int(counts[-1]) if counts else 0
    info["truncated"] = "partial file" in log or result.returncode != 0
  return info


def _decode_filters(info: dict[str, Any], start_frame: int, frame_stride: int,
                    size: tuple[int, int] | None) -> list[str]:
  """ffmpeg filters that pick frames, then resize and centre-crop them to `size`."""
  filters = []
  if start_frame or frame_stride != 1:
    filters.append(f"select='gte(n\\,{start_frame})*not(mod(n-{start_frame}\\,{frame_stride}))'")
  if size is not None and size != (info["height"], info["width"]):
    height, width = size
    # Area averaging when shrinking (no aliasing); bicubic when enlarging.
    shrinking = max(height / info["height"], width / info["width"]) < 1.0
    flags = "area" if shrinking else "bicubic"
    # Cover the target box keeping the aspect ratio, then cut its centre.
    filters.append(f"scale={width}:{height}:force_original_aspect_ratio=increase:flags={flags}")
    filters.append(f"crop={width}:{height}")
  return filters


def read_video(path: str | pathlib.Path, *, max_frames: int | None = None, start_frame: int = 0,
               frame_stride: int = 1, size: tuple[int, int] | None = None,
               with_alpha: bool = False) -> tuple[np.ndarray, float]:
  """Decodes a video file into RGB frames.

  Args:
    path: a video file (.mp4, .webm, .gif, .mov; whatever ffmpeg reads).
    max_frames: decode at most this many frames (after `start_frame` and `frame_stride`).
    start_frame: the first frame to keep.
    frame_stride: keep every `frame_stride`-th frame from `start_frame` on.
    size: (height, width): resize keeping the aspect ratio so that the frame covers this box,
      then cut out its centre. None keeps the source size.
    with_alpha: return RGBA frames (alpha is 255 where the source has none).

  Returns:
    (frames, fps): frames uint8 [T, H, W, 3] (or [T, H, W, 4] with `with_alpha`); fps of the
    returned frames (the source rate divided by `frame_stride`; 0.0 when the file states none).

  Raises:
    VideoDecodeError: the file is missing, empty, undecodable or cut short.
  """
  if frame_stride < 1 or start_frame < 0 or (max_frames is not None and max_frames < 1):
    raise ValueError(f"read_video({path}): need frame_stride >= 1, start_frame >= 0 and "
                     f"max_frames >= 1 or None; got {frame_stride}, {start_frame}, {max_frames}")
  path = pathlib.Path(path)
  info = probe_video(path)
  args = []
  if with_alpha and info["alpha_side_channel"]:
    # ffmpeg's own VP8/VP9 decoders drop the alpha side channel; libvpx reads it.
    args += ["-c:v", "libvpx-vp9" if info["codec"] == "vp9" else "libvpx"]
  args += ["-i", str(path), "-map", "0:v:0"]
  filters = _decode_filters(info, start_frame, frame_stride, size)
  if filters:
    args += ["-vf", ",".join(filters)]
  if max_frames is not None:
    args += ["-frames:v", str(max_frames)]
  channels = 4 if with_alpha else 3
  # passthrough: one output frame per stored frame (no duplication to a constant rate).
  args += ["-fps_mode", "passthrough", "-f", "rawvideo",
           "-pix_fmt", "rgba" if with_alpha else "rgb24", "-v", "error", "-"]
  result = _run_ffmpeg(args, path)
  log = result.stderr.decode("utf-8", "replace")
  height, width = size if size is not None else (info["height"], info["width"])
  frame_bytes = height * width * channels
  num_frames = len(result.stdout) // frame_bytes
  expected = info["frames_estimate"]
  cut_short = "partial file" in log or (
      log.strip() and expected and max_frames is None and start_frame == 0
      and num_frames * frame_stride < 0.9 * expected - 1)
  if cut_short:
    raise VideoDecodeError(
        path, "truncated",
        f"the file is cut short: ffmpeg decoded {num_frames * frame_stride} of about "
        f"{expected} frames ({_error_lines(log)}); copy or export it again")
  if result.returncode != 0 or num_frames == 0:
    raise VideoDecodeError(
        path, "undecodable",
        f"ffmpeg decoded {num_frames} frames and stopped ({_error_lines(log)}): convert it with "
        f"`ffmpeg -i IN -pix_fmt yuv420p OUT.mp4` or remove it")
  frames = np.frombuffer(result.stdout[:num_frames * frame_bytes], np.uint8)
  frames = frames.reshape(num_frames, height, width, channels)
  return frames, info["fps"] / frame_stride


def _check_frames(frames: np.ndarray, what: str) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise ValueError(f"{what}: frames must be uint8 in [0, 255], got {frames.dtype}; convert with "
                     f"np.clip(x * 255, 0, 255).round().astype(np.uint8) for floats in [0, 1]")
  if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
    raise ValueError(f"{what}: frames must have shape [T, H, W, 3] with T, H, W >= 1, got "
                     f"{frames.shape}")
  return frames


def write_video(path: str | pathlib.Path, frames: np.ndarray, fps: float) -> None:
  """Writes RGB frames as a video; the suffix of `path` picks the format.

  ".mp4": H.264 in yuv420p (plays in browsers). yuv420p needs even sizes, so an odd height or
  width is padded by repeating the last row or column: such a file reads back one pixel larger.
  ".gif": an animated GIF with one palette of at most 256 colours: exact for the procedural world,
  dithering-free but banded for natural video.

  Args:
    path: the output file; its folder is created.
    frames: uint8 [T, H, W, 3].
    fps: frames per second (> 0).

  Raises:
    ValueError: a wrong suffix, dtype, shape or fps, or ffmpeg failed.
  """
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix not in WRITE_SUFFIXES:
    raise ValueError(f"write_video({path}): cannot write {suffix or 'a file without suffix'}; "
                     f"name the file .mp4 or .gif")
  frames = _check_frames(frames, f"write_video({path})")
  if not fps > 0:
    raise ValueError(f"write_video({path}): fps must be > 0, got {fps}")
  path.parent.mkdir(parents=True, exist_ok=True)
  if suffix == ".gif":
    # One palette for the whole clip from every pixel, no dithering: exact for <= 256 colours.
    # (Pillow, imageio's GIF writer, merges identical consecutive frames, so a still clip would
    # read back shorter; ffmpeg keeps one GIF frame per frame, with 12/13 cs delays for 8 fps.)
    _encode(path, frames, fps, codec="gif", pix_fmt_out="pal8", output_params=[
        "-vf", "split[a][b];[a]palettegen=max_colors=256:reserve_transparent=0:stats_mode=full[p];"
               "[b][p]paletteuse=dither=none", "-loop", "0"])
    return
  _, height, width, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
  _encode(path, frames, fps, codec="libx264", pix_fmt_out="yuv420p",
          output_params=["-crf", str(MP4_CRF), "-movflags", "+faststart"])


def _encode(path: pathlib.Path, frames: np.ndarray, fps: float, *, codec: str, pix_fmt_out: str,
            output_params: list[str]) -> None:
  """Pipes frames uint8 [T, H, W, 3] into ffmpeg."""
  writer = imageio_ffmpeg.write_frames(
      str(path), (frames.shape[2], frames.shape[1]), fps=float(fps), codec=codec,
      pix_fmt_in="rgb24", pix_fmt_out=pix_fmt_out, quality=None, macro_block_size=1,
      ffmpeg_log_level="error", output_params=output_params)
  writer.send(None)  # starts ffmpeg
  try:
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
  finally:
    writer.close()


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """Reads a PNG or JPEG as RGB: uint8 [H, W, 3].

  Grey images are repeated to three channels; an alpha channel that is fully opaque is dropped.

  Raises:
    VideoDecodeError: the file is missing, empty, undecodable or has transparent pixels.
  """
  path = pathlib.Path(path)
  _check_readable(path)
  try:
    with Image.open(path) as image:
      image.load()
      rgba = np.asarray(image.convert("RGBA"))
  except (OSError, SyntaxError, ValueError) as error:  # Pillow's errors for unreadable images
    raise VideoDecodeError(path, "undecodable",
                           f"not a readable image ({error}): pass a PNG or JPEG file") from error
  if np.any(rgba[..., 3] < 255):
    raise VideoDecodeError(
        path, "alpha",
        "the image has transparent pixels: flatten it onto a background first (e.g. "
        "`ffmpeg -i IN.png -vf \"split[a][b];[a]drawbox=c=black:t=fill[bg];[bg][b]overlay\" "
        "OUT.png`)")
  return np.ascontiguousarray(rgba[..., :3])


def _sample_indices(length: int, count: int) -> np.ndarray:
  """`count` indices spread evenly over [0, length), first and last included."""
  if length <= count:
    return np.arange(length)
  return np.round(np.linspace(0, length - 1, count)).astype(int)


def write_contact_sheet(path: str | pathlib.Path, videos: list[np.ndarray],
                        labels: list[str] | None = None, max_frames: int = 8) -> None:
  """Writes a PNG grid: one row per video, up to `max_frames` frames across, evenly spaced in time.

  Videos may differ in size and length; each frame sits in a cell as large as the largest frame.

  Args:
    path: the output .png file; its folder is created.
    videos: each uint8 [T, H, W, 3].
    labels: one caption per video, written above its row.
    max_frames: frames shown per row.
  """
  path = pathlib.Path(path)
  if not videos:
    raise ValueError(f"write_contact_sheet({path}): no videos given")
  if labels is not None and len(labels) != len(videos):
    raise ValueError(f"write_contact_sheet({path}): {len(labels)} labels for {len(videos)} "
                     f"videos; give one label per video or none")
  if max_frames < 1:
    raise ValueError(f"write_contact_sheet({path}): max_frames must be >= 1, got {max_frames}")
  videos = [_check_frames(v, f"write_contact_sheet({path}) video {i}")
            for i, v in enumerate(videos)]
  cell_height = max(v.shape[1] for v in videos)
  cell_width = max(v.shape[2] for v in videos)
  columns = min(max_frames, max(v.shape[0] for v in videos))
  gap = 2
  label_height = 12 if labels is not None else 0
  row_height = label_height + cell_height + gap
  sheet = np.full((gap + row_height * len(videos), gap + (cell_width + gap) * columns, 3), 255,
                  np.uint8)
  for row, video in enumerate(videos):
    top = gap + row * row_height + label_height
    for column, index in enumerate(_sample_indices(video.shape[0], columns)):
      frame = video[index]
      # Centre a smaller frame in its cell.
      y = top + (cell_height - frame.shape[0]) // 2
      x = gap + column * (cell_width + gap) + (cell_width - frame.shape[1]) // 2
      sheet[y:y + frame.shape[0], x:x + frame.shape[1]] = frame
  image = Image.fromarray(sheet)
  if labels is not None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=10)
    for row, label in enumerate(labels):
      draw.text((gap, gap + row * row_height), label, fill=(0, 0, 0), font=font)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format="PNG")
