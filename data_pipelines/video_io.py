"""Video and image files in and out: the one place where every stage reads or writes pixels.

    frames, fps = video_io.read_video("clip.mp4")           # uint8 [T, H, W, 3], frames per second
    info = video_io.probe_video("clip.mp4")                 # size, fps, frames, source pixel format
    video_io.write_video("sample.mp4", frames, fps=8)       # H.264 yuv420p; ".gif" writes a GIF
    video_io.write_image("frame.png", frames[0])            # one frame as a PNG
    video_io.write_contact_sheet("grid.png", [frames_a, frames_b], labels=["a", "b"])

Reading goes through PyAV (FFmpeg's libraries, in this process): the container and stream tell
size, rate, pixel format and frame count, and decoding errors arrive as exceptions, so nothing
parses a log. Decoded frames pass through an FFmpeg filter graph that turns them upright (the
stream's display matrix, as the ffmpeg command line does), resizes and crops them, and converts
them to RGB: the same filters and pixel values as `ffmpeg -i IN -f rawvideo -pix_fmt rgb24 -`.
Writing pipes frames into the ffmpeg binary that `imageio_ffmpeg` ships, for GIFs too: Pillow
(imageio's GIF writer) merges identical consecutive frames, so a still clip would read back
shorter. A file is written under a temporary name and renamed when ffmpeg has finished without
error, so a failed write raises `VideoWriteError` (with ffmpeg's message) and leaves no file.

Every decoded frame is RGB uint8. The source pixel format (grey, with alpha, ...) is reported by
`probe_video`, so that a data set builder can decide what to do with such files.
"""

from __future__ import annotations

import fractions
import os
import pathlib
import struct
import subprocess
import uuid
from typing import Any, Iterator

try:
  import av
except ImportError:  # an optional heavy dependency (36 MB): only reading videos needs PyAV
  av = None
import imageio_ffmpeg
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

# Containers this module is tested with; FFmpeg may read others too.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".webm", ".gif", ".mov")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
WRITE_SUFFIXES: tuple[str, ...] = (".mp4", ".gif")
# H.264 constant rate factor for written mp4s: visually lossless, still small for short clips.
MP4_CRF = 15
_CONVERT_HINT = "convert it with `ffmpeg -i IN -pix_fmt yuv420p OUT.mp4` or remove it"


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


class VideoWriteError(OSError):
  """A video or image file could not be written: says which file, why, and what to do.

  Attributes:
    path: the file.
    message: what was wrong and what to do, without the path.
  """

  def __init__(self, path: str | pathlib.Path, message: str):
    self.path = str(path)
    self.message = message
    super().__init__(f"{path}: {message}")


def _temporary_beside(path: pathlib.Path) -> pathlib.Path:
  """A hidden name in the folder of `path` with its suffix (ffmpeg picks the format by it)."""
  return path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex}{path.suffix}")


def _nearest_folder(path: pathlib.Path) -> pathlib.Path:
  """The nearest existing folder above `path`, raising `VideoWriteError` when a file stands
  there instead."""
  for folder in (path.parent, *path.parent.parents):
    if folder.exists():
      if not folder.is_dir():
        raise VideoWriteError(path, f"{os.path.normpath(folder)} is a file, not a folder: "
                                    f"choose another path")
      return folder
  return pathlib.Path(path.anchor or ".")


def _make_folder(path: pathlib.Path) -> None:
  """Creates the folder of `path`, raising `VideoWriteError` when it cannot be."""
  _nearest_folder(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise VideoWriteError(path, f"cannot create its folder {path.parent} ({error.strerror}): "
                                f"choose a folder you can write to") from error


def check_writable(path: str | pathlib.Path, *, create_folder: bool = True) -> None:
  """Checks, before any work is done, that a file can be written at `path`.

  Creates its folder (with `create_folder`; else, when the folder is missing, checks that the
  nearest existing folder above it can be written to), then creates and removes an empty file
  beside it.

  Raises:
    VideoWriteError: `path` is a folder, a parent is a file, or the folder cannot be created or
      written to; says which.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    raise VideoWriteError(path, "is a folder: name a file inside it, e.g. "
                                f"{path / ('video' + (path.suffix or '.mp4'))}")
  if create_folder:
    _make_folder(path)
  elif not path.parent.is_dir():
    folder = _nearest_folder(path)
    if not os.access(folder, os.W_OK | os.X_OK):
      raise VideoWriteError(path, f"cannot create its folder in {folder} (Permission denied): "
                                  f"choose a folder you can write to")
    return
  temporary = _temporary_beside(path)
  try:
    temporary.touch(exist_ok=False)
    temporary.unlink()
  except OSError as error:
    raise VideoWriteError(path, f"cannot create a file in {path.parent} ({error.strerror}): "
                                f"choose a folder you can write to") from error


def _check_readable(path: pathlib.Path) -> None:
  if not path.exists():
    raise VideoDecodeError(path, "missing", "no such file: check the path")
  if not path.is_file():
    raise VideoDecodeError(path, "undecodable", "not a regular file")
  if path.stat().st_size == 0:
    raise VideoDecodeError(path, "empty", "the file is empty (0 bytes): copy or export it again")


def _mp4_index_missing(path: pathlib.Path) -> bool:
  """True for an ISO media file (mp4, mov) with no 'moov' box: its index, which most writers put
  last, so a file cut short loses it first."""
  file_size = path.stat().st_size
  offset = 0
  with path.open("rb") as file:
    while offset + 8 <= file_size:
      file.seek(offset)
      header = file.read(16)
      size, kind = struct.unpack(">I4s", header[:8])
      if offset == 0 and kind != b"ftyp":
        return False  # not ISO media: some other kind of broken file
      if kind == b"moov":
        return False
      if size == 1 and len(header) == 16:  # a 64-bit size follows the type
        size = struct.unpack(">Q", header[8:])[0]
      if size < 8:  # 0: the box runs to the end of the file; smaller: not a box header
        break
      offset += size
  return offset > 0


def _open(path: pathlib.Path) -> av.container.InputContainer:
  """Opens a video file, raising `VideoDecodeError` with the reason it cannot be."""
  if av is None:
    raise ImportError(f"reading {path} needs PyAV, which is not installed: pip install av")
  _check_readable(path)
  try:
    container = av.open(str(path), "r")
  except av.error.FFmpegError as error:
    if _mp4_index_missing(path):
      raise VideoDecodeError(
          path, "truncated",
          "the file is cut short (its mp4 index 'moov' is missing): copy or export it again"
      ) from error
    raise VideoDecodeError(path, "undecodable",
                           f"FFmpeg cannot open it ({error.strerror}): {_CONVERT_HINT}") from error
  if not container.streams.video:
    container.close()
    raise VideoDecodeError(path, "no_video_stream",
                           "the file holds no video stream (audio only?): pass a video file")
  return container


def _display_matrix(frame: av.VideoFrame | None) -> np.ndarray | None:
  """int32 [9]: the display matrix (16.16 fixed point) of a decoded frame, or None.

  PyAV shows a stream's display matrix only on its decoded frames, which carry a copy of it.
  Looked up by its type: iterating the side data gives the entries up to PyAV 18.1.0 and their
  types from 18.1.1 on.
  """
  if frame is None:
    return None
  side_data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
  return None if side_data is None else np.frombuffer(bytes(side_data), dtype=np.int32)


def _orientation(matrix: np.ndarray | None, tags: dict[str, str]) -> tuple[int, list[str]]:
  """(rotation in degrees, counter-clockwise, 0/90/180/270; FFmpeg filters that turn the frames
  upright), as the ffmpeg command line's autorotation picks them."""
  if matrix is None:
    # Older writers left a clockwise "rotate" tag instead (Matroska upper-cases it).
    tag = next((value for key, value in tags.items() if key.lower() == "rotate"), None)
    rotation = -int(round(float(tag or 0))) % 360
    return rotation, {0: [], 90: ["transpose=cclock"], 180: ["hflip", "vflip"],
                      270: ["transpose=clock"]}.get(rotation, [])
  a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
  # av_display_rotation_get: the counter-clockwise angle; mirroring shows in the signs.
  rotation = int(round(np.degrees(-np.arctan2(b, a)))) % 360
  clockwise = (-rotation) % 360
  if clockwise == 90:
    return rotation, ["transpose=cclock_flip" if c > 0 else "transpose=clock"]
  if clockwise == 180:
    return rotation, ["hflip"] * (a < 0) + ["vflip"] * (d < 0)
  if clockwise == 270:
    return rotation, ["transpose=clock_flip" if c < 0 else "transpose=cclock"]
  # 0 (only a vertical mirror can remain), or an angle that is no multiple of 90: left as is.
  return rotation, ["vflip"] * (clockwise == 0 and d < 0)


def _source_format(stream: av.video.stream.VideoStream) -> dict[str, Any]:
  """The stream's pixel format: "pix_fmt", "is_grey", "has_alpha", "alpha_side_channel"."""
  pix_fmt = stream.codec_context.format
  components = pix_fmt.components if pix_fmt is not None else ()
  colour = [c for c in components if not c.is_alpha]
  # VP8/VP9 keep alpha beside the colour planes (only libvpx decodes it); WebM says so in a tag.
  alpha_side_channel = stream.metadata.get("alpha_mode") == "1"
  return {
      "pix_fmt": pix_fmt.name if pix_fmt is not None else "none",
      "is_grey": pix_fmt is not None and len(colour) == 1 and not pix_fmt.has_palette,
      # A palette may hold transparent entries: GIF and PNG decoders report "bgra"/"rgba"/"pal8"
      # for every file, opaque or not, so "has alpha" means "may be transparent", not "is".
      "has_alpha": (any(c.is_alpha for c in components) or bool(pix_fmt and pix_fmt.has_palette)
                    or alpha_side_channel),
      "alpha_side_channel": alpha_side_channel,
  }


def _first_frame(container: av.container.InputContainer) -> av.VideoFrame | None:
  """The first decodable frame (for its side data), or None."""
  try:
    return next(container.decode(video=0), None)
  except av.error.FFmpegError:
    return None


class _Packets:
  """The video packets of a container, counted as they are read.

  Attributes:
    complete: packets read whole.
    cut: a packet was read only in part (the file ends inside it) or the demuxer failed.
  """

  def __init__(self, container: av.container.InputContainer):
    self._container = container
    self.complete = 0
    self.cut = False

  def __iter__(self) -> Iterator[av.Packet]:
    try:
      for packet in self._container.demux(self._container.streams.video[0]):
        if packet.is_corrupt:  # the demuxer read only part of it
          self.cut = True
        elif packet.size:  # not the empty packet that ends the stream
          self.complete += 1
        yield packet
    except av.error.FFmpegError:
      self.cut = True
      raise


def _count_packets(container: av.container.InputContainer) -> tuple[int, bool]:
  """(complete packets of the video stream, whether the file ends inside one or cannot be read
  to its end)."""
  packets = _Packets(container)
  try:
    for _ in packets:
      pass
  except av.error.FFmpegError:
    pass
  return packets.complete, packets.cut


def probe_video(path: str | pathlib.Path, *, count_frames: bool = False) -> dict[str, Any]:
  """Describes a video file, decoding at most its first frame (for its display matrix).

  Args:
    path: the video file.
    count_frames: also count the frames exactly, by reading (not decoding) every packet: one
      more pass over the file, still fast.

  Returns:
    A dict with "width", "height" (as decoded, after any rotation), "fps" (0.0 when unknown),
    "duration" (seconds, 0.0 when unknown), "frames" (exact count of complete frames, or None
    when not counted), "frames_estimate" (from duration and fps), "codec", "pix_fmt" (the source
    pixel format, e.g. "yuv420p", "gray", "rgba", "bgra" for every GIF), "is_grey", "has_alpha"
    (the source format can hold transparency), "alpha_side_channel" (VP8/VP9 alpha, which only
    libvpx decodes), "rotation" (degrees counter-clockwise in [0, 360), from the display matrix
    or a "rotate" tag; `read_video` turns frames upright by multiples of 90), and "truncated"
    (True when counting found the file cut short).

  Raises:
    VideoDecodeError: the file is missing, empty, not a video, or cut short before its index.
  """
  path = pathlib.Path(path)
  with _open(path) as container:
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
      raise VideoDecodeError(path, "undecodable",
                             f"FFmpeg reports no frame size for its video stream: {_CONVERT_HINT}")
    rate = stream.base_rate or stream.average_rate  # FFmpeg's "tbr" guess, else the average
    fps = float(rate) if rate else 0.0
    duration = container.duration / av.time_base if container.duration else 0.0
    source_format = _source_format(stream)  # from the header, before decoding changes it
    rotation, _ = _orientation(_display_matrix(_first_frame(container)),
                               dict(stream.metadata))
    if rotation in (90, 270):
      width, height = height, width
    info = {
        "width": width,
        "height": height,
        "fps": fps,
        "duration": duration,
        "codec": stream.codec_context.name,
        **source_format,
        "rotation": rotation,
        "frames_estimate": int(round(duration * fps)) if duration and fps else None,
        "frames": None,
        "truncated": False,
    }
    indexed = stream.frames  # an mp4's index lists every frame; 0 when the container has none
  if count_frames:
    with _open(path) as container:
      complete, cut = _count_packets(container)
    info["frames"] = complete
    info["truncated"] = cut or bool(indexed and complete < indexed)
  return info


def _decode(container: av.container.InputContainer, packets: _Packets,
            with_alpha: bool) -> Iterator[av.VideoFrame]:
  """The decoded frames of the first video stream (libvpx for VP8/VP9 with alpha)."""
  stream = container.streams.video[0]
  codec = stream.codec_context
  if with_alpha and stream.metadata.get("alpha_mode") == "1":
    # FFmpeg's own VP8/VP9 decoders drop the alpha side channel; libvpx reads it.
    codec = av.CodecContext.create("libvpx-vp9" if codec.name == "vp9" else "libvpx", "r")
  for packet in packets:
    yield from codec.decode(packet if packet.size else None)  # None flushes the decoder


def _upright_graph(first: av.VideoFrame, stream: av.video.stream.VideoStream, filters: list[str],
                   size: tuple[int, int] | None, pix_fmt: str) -> av.filter.Graph:
  """buffer -> turn upright -> cover `size` keeping the aspect ratio, cut its centre -> pix_fmt."""
  graph = av.filter.Graph()
  nodes = [graph.add_buffer(width=first.width, height=first.height, format=first.format.name,
                            time_base=stream.time_base)]
  for spec in filters:
    name, _, args = spec.partition("=")
    nodes.append(graph.add(name, args or None))
  if size is not None:
    height, width = size
    transposed = any(spec.startswith("transpose") for spec in filters)
    upright_height, upright_width = ((first.width, first.height) if transposed
                                     else (first.height, first.width))
    if (height, width) != (upright_height, upright_width):
      # Area averaging when shrinking (no aliasing); bicubic when enlarging.
      shrinking = max(height / upright_height, width / upright_width) < 1.0
      nodes.append(graph.add("scale", f"{width}:{height}:force_original_aspect_ratio=increase:"
                                      f"flags={'area' if shrinking else 'bicubic'}"))
      nodes.append(graph.add("crop", f"{width}:{height}"))
  nodes.append(graph.add("format", pix_fmt))
  nodes.append(graph.add("buffersink"))
  graph.link_nodes(*nodes).configure()
  return graph


def read_video(path: str | pathlib.Path, *, max_frames: int | None = None, start_frame: int = 0,
               frame_stride: int = 1, size: tuple[int, int] | None = None,
               with_alpha: bool = False) -> tuple[np.ndarray, float]:
  """Decodes a video file into upright RGB frames.

  Args:
    path: a video file (.mp4, .webm, .gif, .mov; whatever FFmpeg reads).
    max_frames: decode at most this many frames (after `start_frame` and `frame_stride`).
    start_frame: the first frame to keep.
    frame_stride: keep every `frame_stride`-th frame from `start_frame` on.
    size: (height, width): resize keeping the aspect ratio so that the frame covers this box,
      then cut out its centre. None keeps the source size.
    with_alpha: return RGBA frames (alpha is 255 where the source has none).

  Returns:
    (frames, fps): frames uint8 [T, H, W, 3] (or [T, H, W, 4] with `with_alpha`), turned upright
    by the stream's rotation; fps of the returned frames (the source rate divided by
    `frame_stride`; 0.0 when the file states none).

  Raises:
    VideoDecodeError: the file is missing, empty, undecodable or cut short.
  """
  if frame_stride < 1 or start_frame < 0 or (max_frames is not None and max_frames < 1):
    raise ValueError(f"read_video({path}): need frame_stride >= 1, start_frame >= 0 and "
                     f"max_frames >= 1 or None; got {frame_stride}, {start_frame}, {max_frames}")
  path = pathlib.Path(path)
  info = probe_video(path)
  kept: list[np.ndarray] = []
  decoded = 0
  with _open(path) as container:
    stream = container.streams.video[0]
    packets = _Packets(container)
    graph = None
    try:
      for frame in _decode(container, packets, with_alpha):
        index, decoded = decoded, decoded + 1
        if index < start_frame or (index - start_frame) % frame_stride:
          continue
        if graph is None:
          _, filters = _orientation(_display_matrix(frame), dict(stream.metadata))
          graph = _upright_graph(frame, stream, filters, size, "rgba" if with_alpha else "rgb24")
        graph.push(frame)
        kept.append(graph.vpull().to_ndarray())
        if max_frames is not None and len(kept) == max_frames:
          break
      else:
        # Read to the end: an mp4's index lists every frame (stream.frames; 0 when unknown).
        if packets.cut or (stream.frames and packets.complete < stream.frames):
          raise VideoDecodeError(
              path, "truncated",
              f"the file is cut short: it holds {packets.complete} whole frames of the "
              f"{stream.frames or info['frames_estimate'] or 'unknown number of'} it announces; "
              f"copy or export it again")
    except av.error.FFmpegError as error:
      if packets.cut:
        raise VideoDecodeError(path, "truncated", f"the file is cut short after {decoded} frames "
                               f"({error.strerror}); copy or export it again") from error
      raise VideoDecodeError(
          path, "undecodable",
          f"FFmpeg decoded {decoded} frames and stopped ({error.strerror}): {_CONVERT_HINT}"
      ) from error
  if not kept:
    raise VideoDecodeError(path, "undecodable",
                           f"FFmpeg decoded {decoded} frames, none from frame {start_frame} on: "
                           + (f"pass a start_frame below {decoded}" if decoded else _CONVERT_HINT))
  return np.stack(kept), info["fps"] / frame_stride


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
    ValueError: a wrong suffix, dtype, shape or fps.
    VideoWriteError: the file could not be written (its folder cannot be created or written to,
      the disk is full, ffmpeg failed); no file is left at `path`.
  """
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix not in WRITE_SUFFIXES:
    raise ValueError(f"write_video({path}): cannot write {suffix or 'a file without suffix'}; "
                     f"name the file .mp4 or .gif")
  frames = _check_frames(frames, f"write_video({path})")
  if not fps > 0:
    raise ValueError(f"write_video({path}): fps must be > 0, got {fps}")
  _make_folder(path)
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


class FfmpegNotFoundError(OSError):
  """No ffmpeg to encode with: imageio-ffmpeg was installed without its binary, none is on PATH
  and $IMAGEIO_FFMPEG_EXE is unset."""


def ffmpeg_exe() -> str:
  """The ffmpeg that videos are encoded with: $IMAGEIO_FFMPEG_EXE, imageio-ffmpeg's own binary,
  or PATH's.

  Raises:
    FfmpegNotFoundError: there is none; the message says how to get one.
  """
  try:
    return imageio_ffmpeg.get_ffmpeg_exe()
  except RuntimeError as error:
    raise FfmpegNotFoundError(
        "no ffmpeg found: install imageio-ffmpeg's wheel (it bundles one), install ffmpeg on "
        "PATH, or set IMAGEIO_FFMPEG_EXE to one") from error


def _encode(path: pathlib.Path, frames: np.ndarray, fps: float, *, codec: str, pix_fmt_out: str,
            output_params: list[str]) -> None:
  """Pipes frames uint8 [T, H, W, 3] into ffmpeg, writing `path` whole or not at all.

  The command is the one `imageio_ffmpeg.write_frames` builds for these settings; running it here
  gives ffmpeg's exit status and error output, which that generator leaves on the terminal.
  """
  _, height, width, _ = frames.shape
  rate = fractions.Fraction(float(fps)).limit_denominator()
  try:
    ffmpeg = ffmpeg_exe()
  except FfmpegNotFoundError as error:
    raise VideoWriteError(path, str(error)) from error
  temporary = _temporary_beside(path)
  command = [ffmpeg, "-y", "-f", "rawvideo", "-vcodec", "rawvideo",
             "-s", f"{width}x{height}", "-pix_fmt", "rgb24", "-r", str(rate), "-i", "-", "-an",
             "-vcodec", codec, "-pix_fmt", pix_fmt_out, "-v", "error", *output_params,
             str(temporary)]
  try:
    result = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
  except OSError as error:
    raise VideoWriteError(path, f"cannot run ffmpeg ({error.strerror}): reinstall "
                                f"imageio-ffmpeg") from error
  written = temporary.exists() and temporary.stat().st_size > 0
  if result.returncode or not written:
    temporary.unlink(missing_ok=True)
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    reason = lines[-1] if lines else f"exit status {result.returncode}"
    raise VideoWriteError(path, f"ffmpeg could not write it ({reason}): check that its folder "
                                f"is writable and the disk has free space")
  try:
    os.replace(temporary, path)
  except OSError as error:
    temporary.unlink(missing_ok=True)
    raise VideoWriteError(path, f"cannot replace it ({error.strerror}): is it a folder, or "
                                f"read-only?") from error


def reencode_mp4(source: str | pathlib.Path, output: str | pathlib.Path, *, crf: int) -> None:
  """Re-encodes a video as H.264 at `crf` (yuv420p) into `output`, as a sharing site would."""
  subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(source),
                  "-c:v", "libx264", "-crf", str(crf), "-pix_fmt", "yuv420p", str(output)],
                 check=True)


def write_image(path: str | pathlib.Path, frame: np.ndarray) -> None:
  """Writes one RGB frame uint8 [H, W, 3] as a PNG, whole or not at all.

  Raises:
    ValueError: a suffix other than .png, or a wrong dtype or shape.
    VideoWriteError: the file could not be written; no file is left at `path`.
  """
  path = pathlib.Path(path)
  if path.suffix.lower() != ".png":
    raise ValueError(f"write_image({path}): cannot write {path.suffix or 'a file without suffix'};"
                     f" name the file .png")
  frame = _check_frames(np.asarray(frame)[None], f"write_image({path})")[0]
  _make_folder(path)
  temporary = _temporary_beside(path)
  try:
    Image.fromarray(frame).save(temporary, format="PNG")
    os.replace(temporary, path)
  except OSError as error:
    temporary.unlink(missing_ok=True)
    raise VideoWriteError(path, f"cannot write it ({error.strerror or error}): check that its "
                                f"folder is writable and the disk has free space") from error


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


def read_frames(path: str | pathlib.Path) -> np.ndarray:
  """A video or image file as uint8 frames [T, H, W, 3] (an image is one frame).

  Raises:
    FileNotFoundError: no such file, naming it.
    VideoDecodeError: the file is empty or cannot be decoded.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"input {path} does not exist: pass an existing video "
                            f"({', '.join(VIDEO_SUFFIXES)}) or image ({', '.join(IMAGE_SUFFIXES)})")
  if path.suffix.lower() in IMAGE_SUFFIXES:
    return read_image(path)[None]
  return read_video(path)[0]


def check_frames_file(path: str | pathlib.Path) -> None:
  """Checks that `read_frames` can read a video or image file, without decoding all of it: an
  image is read (it is one frame), a video probed (`probe_video`: its header and first frame).

  Raises:
    VideoDecodeError: the file is missing, empty or cannot be decoded.
  """
  path = pathlib.Path(path)
  if path.suffix.lower() in IMAGE_SUFFIXES:
    read_image(path)
  else:
    probe_video(path)


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
