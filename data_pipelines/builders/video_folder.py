r"""TFDS builder `video_folder`: your own folder of captioned videos, bucketed by shape.

The folder (searched recursively) holds .mp4/.webm/.gif/.mov videos and their captions, either in
a sidecar text file beside each video (`clip.mp4` -> `clip.txt`, UTF-8) or in one
`captions.jsonl` at the top of the folder, one line per video:

    {"video": "clip.mp4", "caption": "a dog runs on the beach"}

(a sidecar wins over a captions.jsonl line for the same video; paths are relative to the folder).

Shape buckets: a model compiles one step per static shape, so each video goes to one of a few
buckets (frames, height, width), written as one split per bucket named "FRAMESxHEIGHTxWIDTH"
(e.g. split "17x32x48" holds only uint8 [17, 32, 48, 3] clips). A video goes to the bucket with
the closest aspect ratio, then the most frames that the video still fills, then the largest size
that does not enlarge it. It is resized keeping its aspect ratio until it covers the bucket, then
cut to the bucket's centre; its middle `frames` frames are kept (every `frame_stride`-th frame
when `frame_stride` > 1, which speeds motion up). Videos shorter than every bucket are skipped.

Files that cannot be used are skipped, never dropped silently and never a crash: zero-byte,
truncated or undecodable files, grey or transparent (alpha) videos, and videos whose caption is
missing, empty or not UTF-8. Each is logged and listed with its reason in the report
DATA_DIR/video_folder/report.json, written beside the data set (DATA_DIR/video_folder/1.0.0).

    report = video_folder.build_video_folder("my_videos", "/tmp/tfds", buckets=["17x32x48"])
    sources = common.load(report["dataset_dir"])      # {"17x32x48": source, ...}
    example = sources["17x32x48"][0]  # {"video": uint8 [17, 32, 48, 3], "caption": bytes,
                                      #  "file": bytes (path in the folder), "fps": float32}

From the shell:

    python -m data_pipelines.builders.video_folder --folder=my_videos --out=/tmp/tfds \
        --buckets=17x32x48,17x48x32,1x48x48

One data_dir holds one folder's data set: build another folder into another data_dir. An existing
data set is reused as it is; delete DATA_DIR/video_folder to rebuild it.
"""

from __future__ import annotations

import collections
from concurrent import futures
import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import video_io
from data_pipelines.builders import common

CAPTIONS_FILE = "captions.jsonl"
REPORT_FILE = "report.json"
DEFAULT_BUCKETS: tuple[str, ...] = ("17x64x64", "17x48x80", "17x80x48", "1x64x64")
# Aspect ratios closer than this (relative) count as equal, so that frames decide between them.
_ASPECT_TOLERANCE = 1e-3
# Files probed and decoded at once, in threads.
DEFAULT_NUM_WORKERS = min(8, os.cpu_count() or 1)

_In = TypeVar("_In")
_Out = TypeVar("_Out")

# Why a file was skipped -> what the user can do about it.
SKIP_REASONS: dict[str, str] = {
    "unsupported_format": "convert it to .mp4 (ffmpeg -i IN -pix_fmt yuv420p OUT.mp4)",
    "missing": "the file vanished while building; build again",
    "empty": "the file has 0 bytes; copy or export it again",
    "truncated": "the file is cut short; copy or export it again",
    "undecodable": "ffmpeg cannot decode it; convert it or remove it",
    "no_video_stream": "the file holds no video stream; remove it",
    "grey": "a one-channel video: convert it to colour (ffmpeg -i IN -pix_fmt yuv420p OUT.mp4)",
    "alpha": "the video has transparent pixels; flatten it onto a background first",
    "too_short": "fewer frames than the shortest bucket; add a bucket with fewer frames",
    "caption_missing": f"add a sidecar <name>.txt or a line in {CAPTIONS_FILE}",
    "caption_empty": "write a caption into its sidecar or captions.jsonl line",
    "caption_not_utf8": "save the caption as UTF-8",
    "caption_invalid": f"give a string \"caption\" in its {CAPTIONS_FILE} line",
}


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A file that is not in the data set, and why."""
  file: str      # path relative to the folder
  reason: str    # a key of SKIP_REASONS
  detail: str

  def as_dict(self) -> dict[str, str]:
    return {"file": self.file, "reason": self.reason, "detail": self.detail,
            "what_to_do": SKIP_REASONS[self.reason]}


@dataclasses.dataclass(frozen=True)
class Clip:
  """A video planned into a bucket."""
  file: str                   # path relative to the folder
  caption: str
  bucket: common.Shape        # (frames, height, width)
  start_frame: int            # first source frame kept
  source: dict[str, Any]      # `video_io.probe_video` of the file


def choose_bucket(height: int, width: int, frames: int, buckets: Sequence[common.Shape], *,
                  frame_stride: int = 1) -> common.Shape | None:
  """The bucket a video of this size and length goes to, or None when it is too short for all.

  Closest aspect ratio (in log space) first; among equally close, the most frames that the video
  fills (`frames` source frames give ceil(frames / frame_stride) kept frames); then the largest
  bucket that does not enlarge the video, else the smallest one.
  """
  available = math.ceil(frames / frame_stride)
  fitting = [b for b in buckets if b[0] <= available]
  if not fitting:
    return None
  aspect = math.log(width / height)
  distance = {b: abs(math.log(b[2] / b[1]) - aspect) for b in fitting}
  closest = min(distance.values())
  candidates = [b for b in fitting if distance[b] <= closest + _ASPECT_TOLERANCE]
  most_frames = max(b[0] for b in candidates)
  candidates = [b for b in candidates if b[0] == most_frames]
  not_enlarging = [b for b in candidates if b[1] <= height and b[2] <= width]
  if not_enlarging:
    return max(not_enlarging, key=lambda b: b[1] * b[2])
  return min(candidates, key=lambda b: b[1] * b[2])


def centre_start_frame(frames: int, bucket_frames: int, frame_stride: int = 1) -> int:
  """First source frame of the middle `bucket_frames` frames (every `frame_stride`-th)."""
  available = math.ceil(frames / frame_stride)
  return (available - bucket_frames) // 2 * frame_stride


def _read_caption_file(path: pathlib.Path) -> tuple[str | None, Skipped | None]:
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as error:
    return None, Skipped("", "caption_not_utf8", f"{path.name}: byte {error.start} is not UTF-8")
  text = " ".join(text.split())  # one line, single spaces
  if not text:
    return None, Skipped("", "caption_empty", f"{path.name} holds no text")
  return text, None


def read_captions_jsonl(folder: pathlib.Path) -> tuple[dict[str, str | Skipped], list[dict]]:
  """Reads FOLDER/captions.jsonl.

  Returns:
    ({video path: caption, or a `Skipped` naming what is wrong with its line}, problems): the
    problems are lines that name no video (bad JSON, no "video" key) or repeat one.
  """
  path = folder / CAPTIONS_FILE
  captions: dict[str, str | Skipped] = {}
  problems: list[dict] = []
  if not path.exists():
    return captions, problems
  for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
    if not raw.strip():
      continue
    where = f"{CAPTIONS_FILE} line {number}"
    utf8_error = None
    try:
      line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
      # Still find which video the line names, so that video is reported, not just the line.
      line = raw.decode("utf-8", "replace")
      utf8_error = f"{where}: byte {error.start} is not UTF-8"
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as error:
      problems.append({"file": CAPTIONS_FILE, "line": number,
                       "problem": f"not JSON ({error.msg}): write one JSON object per line"})
      continue
    video = entry.get("video") if isinstance(entry, dict) else None
    if not isinstance(video, str) or not video:
      problems.append({"file": CAPTIONS_FILE, "line": number,
                       "problem": 'no "video" key: write {"video": "name.mp4", "caption": "..."}'})
      continue
    video = pathlib.PurePosixPath(video).as_posix()
    if video in captions:
      problems.append({"file": CAPTIONS_FILE, "line": number,
                       "problem": f"{video} is captioned again; the first caption is kept"})
      continue
    caption = entry.get("caption")
    if utf8_error is not None:
      captions[video] = Skipped(video, "caption_not_utf8", utf8_error)
    elif not isinstance(caption, str):
      captions[video] = Skipped(video, "caption_invalid",
                                f"{where}: \"caption\" is {type(caption).__name__}, not a string")
    elif not caption.strip():
      captions[video] = Skipped(video, "caption_empty", f"{where}: the caption is empty")
    else:
      captions[video] = " ".join(caption.split())
  return captions, problems


def _list_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Every non-hidden file under `folder`, sorted by relative path (the data set's order)."""
  files = [p for p in folder.rglob("*")
           if p.is_file() and not any(part.startswith(".")
                                      for part in p.relative_to(folder).parts)]
  return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


@dataclasses.dataclass
class Plan:
  """What a build will write: clips per bucket, skipped files and caption file problems."""
  clips: dict[common.Shape, list[Clip]]
  skipped: list[Skipped]
  problems: list[dict]


def _ordered_map(function: Callable[[_In], _Out], items: Iterable[_In],
                 num_workers: int) -> Iterator[_Out]:
  """`map(function, items)` on `num_workers` threads, in order, a few items ahead at most."""
  with futures.ThreadPoolExecutor(max_workers=num_workers) as pool:
    pending: collections.deque = collections.deque()
    for item in items:
      pending.append(pool.submit(function, item))
      if len(pending) >= 2 * num_workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def plan_folder(folder: str | pathlib.Path, buckets: Sequence[common.Shape], *,
                frame_stride: int = 1, num_workers: int = DEFAULT_NUM_WORKERS) -> Plan:
  """Finds each usable video's caption and bucket, without decoding frames.

  Raises:
    FileNotFoundError: `folder` is not a directory.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"video folder {folder} does not exist or is not a directory")
  jsonl_captions, problems = read_captions_jsonl(folder)
  files = _list_files(folder)
  names = {p.relative_to(folder).as_posix() for p in files}
  for video in sorted(set(jsonl_captions) - names):
    problems.append({"file": CAPTIONS_FILE, "problem": f"captions {video}, which is not in the "
                     f"folder: check the path (relative to the folder)"})
  clips: dict[common.Shape, list[Clip]] = {b: [] for b in buckets}
  skipped: list[Skipped] = []
  videos = [p for p in files if p.suffix.lower() in video_io.VIDEO_SUFFIXES]
  caption_files = {p.with_suffix(".txt") for p in videos}
  for path in files:
    name = path.relative_to(folder).as_posix()
    if path not in videos and path not in caption_files and name != CAPTIONS_FILE:
      skipped.append(Skipped(name, "unsupported_format",
                             f"{path.suffix or 'no suffix'} is not one of "
                             f"{', '.join(video_io.VIDEO_SUFFIXES)}"))
  def plan_one(path: pathlib.Path) -> Clip | Skipped:
    return _plan_video(path, path.relative_to(folder).as_posix(), jsonl_captions, buckets,
                       frame_stride)

  for outcome in _ordered_map(plan_one, videos, num_workers):
    if isinstance(outcome, Skipped):
      skipped.append(outcome)
    else:
      clips[outcome.bucket].append(outcome)
  return Plan(clips={b: c for b, c in clips.items() if c}, skipped=skipped, problems=problems)


def _plan_video(path: pathlib.Path, name: str, jsonl_captions: dict[str, str | Skipped],
                buckets: Sequence[common.Shape], frame_stride: int) -> Clip | Skipped:
  sidecar = path.with_suffix(".txt")
  if sidecar.exists():
    caption, problem = _read_caption_file(sidecar)
  elif name in jsonl_captions:
    found = jsonl_captions[name]
    caption, problem = (None, found) if isinstance(found, Skipped) else (found, None)
  else:
    caption, problem = None, Skipped(name, "caption_missing",
                                     f"no {sidecar.name} and no {CAPTIONS_FILE} line")
  if problem is not None:
    return dataclasses.replace(problem, file=name)
  try:
    info = video_io.probe_video(path, count_frames=True)
  except video_io.VideoDecodeError as error:
    return Skipped(name, error.reason, error.message)
  if info["truncated"]:
    return Skipped(name, "truncated",
                   f"the file is cut short after {info['frames']} whole frames")
  if info["frames"] == 0:
    return Skipped(name, "undecodable", "no video frame found in the file")
  if info["is_grey"]:
    return Skipped(name, "grey", f"pixel format {info['pix_fmt']} has one channel")
  bucket = choose_bucket(info["height"], info["width"], info["frames"], buckets,
                         frame_stride=frame_stride)
  if bucket is None:
    kept = f" ({math.ceil(info['frames'] / frame_stride)} with frame_stride {frame_stride})"
    return Skipped(name, "too_short", f"{info['frames']} frames{kept if frame_stride > 1 else ''}; "
                   f"the shortest bucket needs {min(b[0] for b in buckets)}")
  return Clip(file=name, caption=caption, bucket=bucket,
              start_frame=centre_start_frame(info["frames"], bucket[0], frame_stride),
              source=info)


def decode_clip(folder: pathlib.Path, clip: Clip,
                frame_stride: int = 1) -> tuple[np.ndarray, float]:
  """Decodes a planned clip at its bucket's shape: (uint8 [T, H, W, 3], fps).

  Raises:
    video_io.VideoDecodeError: the file cannot be decoded to the bucket's frames; `reason` is
      "alpha" for transparent pixels, "truncated" for too few frames.
  """
  frames, height, width = clip.bucket
  path = folder / clip.file
  video, fps = video_io.read_video(path, start_frame=clip.start_frame, frame_stride=frame_stride,
                                   max_frames=frames, size=(height, width),
                                   with_alpha=clip.source["has_alpha"])
  if video.shape[-1] == 4:
    transparent = int(np.count_nonzero(video[..., 3] < 255))
    if transparent:
      raise video_io.VideoDecodeError(
          path, "alpha", f"{transparent} transparent pixels in the kept frames "
          f"(pixel format {clip.source['pix_fmt']})")
    video = video[..., :3]
  if video.shape[0] != frames:
    raise video_io.VideoDecodeError(
        path, "truncated", f"decoded {video.shape[0]} of the {frames} frames expected from "
        f"frame {clip.start_frame} (the file counts {clip.source['frames']})")
  return np.ascontiguousarray(video), fps


class VideoFolder(tfds.core.GeneratorBasedBuilder,
                  skip_registration=__name__ == "__main__"):  # `python -m` imports it twice
  """A folder of captioned videos, one split per shape bucket."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def __init__(self, *, folder: str | pathlib.Path | None = None,
               buckets: Iterable[str | common.Shape] = DEFAULT_BUCKETS, frame_stride: int = 1,
               num_workers: int = DEFAULT_NUM_WORKERS, **kwargs: Any):
    """Creates the builder.

    Args:
      folder: the folder of videos; only needed to build (not to read a built data set).
      buckets: shapes (frames, height, width) or "FRAMESxHEIGHTxWIDTH" names.
      frame_stride: keep every `frame_stride`-th source frame.
      num_workers: files probed and decoded at once, in threads.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (data_dir, ...).
    """
    self._folder = pathlib.Path(folder).resolve() if folder is not None else None
    self._buckets = tuple(dict.fromkeys(common.parse_shape(b) for b in buckets))
    if not self._buckets:
      raise ValueError("no buckets given: pass at least one, e.g. buckets=['17x32x48']")
    if frame_stride < 1:
      raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    self._frame_stride = frame_stride
    self._num_workers = max(1, num_workers)
    self._skipped: list[Skipped] = []
    self._kept: list[dict[str, Any]] = []
    self._plan: Plan | None = None
    super().__init__(**kwargs)

  @property
  def buckets(self) -> tuple[common.Shape, ...]:
    """The shape buckets (frames, height, width), in the order given."""
    return self._buckets

  @property
  def report_path(self) -> pathlib.Path:
    """DATA_DIR/video_folder/report.json, beside the version folder."""
    return pathlib.Path(self.data_dir_root) / self.name / REPORT_FILE

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Captioned videos from a folder; one split per shape bucket.",
        features=tfds.features.FeaturesDict({
            "video": common.video_feature(),  # static per split: [frames, height, width, 3]
            "caption": tfds.features.Text(),
            "file": tfds.features.Text(),     # path in the source folder
            "fps": tfds.features.Scalar(dtype=np.float32),
        }),
        disable_shuffling=True,  # the folder's sorted order; readers shuffle themselves
        metadata=tfds.core.MetadataDict(
            buckets=[common.shape_name(b) for b in self._buckets],
            frame_stride=self._frame_stride,
            folder=str(self._folder) if self._folder is not None else None),
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    """Builds the splits, then writes the report (also when the build fails)."""
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      self._write_report()

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the videos are local
    if self._folder is None:
      raise ValueError("VideoFolder needs folder=... to build a data set")
    self._plan = plan_folder(self._folder, self._buckets, frame_stride=self._frame_stride,
                             num_workers=self._num_workers)
    self._skipped = list(self._plan.skipped)
    for skip in self._skipped:
      logging.warning("video_folder: skipping %s (%s): %s", skip.file, skip.reason, skip.detail)
    generators = {}
    for bucket, clips in self._plan.clips.items():
      # TFDS cannot write an empty split, so a bucket's first decodable clip is found now.
      first, clips = self._first_decodable(clips)
      if first is not None:
        generators[common.shape_name(bucket)] = self._generate_examples(first, clips)
    if not generators:
      raise ValueError(
          f"no usable video in {self._folder}: {len(self._skipped)} file(s) skipped "
          f"({_count_reasons(self._skipped)}); see {self.report_path}")
    return generators

  def _first_decodable(self, clips: list[Clip]
                       ) -> tuple[tuple[Clip, dict[str, Any]] | None, list[Clip]]:
    """((the first clip that decodes, its example), the clips after it), or (None, [])."""
    for position, clip in enumerate(clips):
      example = self._decode(clip)
      if example is not None:
        return (clip, example), clips[position + 1:]
    return None, []

  def _decode(self, clip: Clip) -> dict[str, Any] | None:
    try:
      video, fps = decode_clip(self._folder, clip, self._frame_stride)
    except video_io.VideoDecodeError as error:
      skip = Skipped(clip.file, error.reason, error.message)
      logging.warning("video_folder: skipping %s (%s): %s", skip.file, skip.reason, skip.detail)
      self._skipped.append(skip)
      return None
    source = clip.source
    self._kept.append({
        "file": clip.file, "bucket": common.shape_name(clip.bucket),
        "start_frame": clip.start_frame,
        "source": {k: source[k] for k in ("width", "height", "frames", "fps", "pix_fmt")}})
    return {"video": video, "caption": clip.caption, "file": clip.file, "fps": np.float32(fps)}

  def _generate_examples(self, first, clips: list[Clip]) -> Iterator[tuple[str, dict]]:
    yield first[0].file, first[1]
    for clip, example in zip(clips, _ordered_map(self._decode, clips, self._num_workers)):
      if example is not None:
        yield clip.file, example

  def report(self) -> dict[str, Any]:
    """What the last build kept and skipped (see the module docstring)."""
    kept = sorted(self._kept, key=lambda k: k["file"])
    skipped = sorted(self._skipped, key=lambda s: s.file)
    return {
        "folder": str(self._folder),
        "dataset_dir": str(common.dataset_dir(self.data_dir_root, self.name,
                                              version=str(self.version))),
        "buckets": [common.shape_name(b) for b in self._buckets],
        "frame_stride": self._frame_stride,
        "num_kept": len(kept),
        "num_skipped": len(skipped),
        "kept_per_bucket": dict(collections.Counter(k["bucket"] for k in kept)),
        "skipped_per_reason": dict(collections.Counter(s.reason for s in skipped)),
        "kept": kept,
        "skipped": [s.as_dict() for s in skipped],
        "caption_problems": self._plan.problems if self._plan is not None else [],
    }

  def _write_report(self) -> None:
    if self._plan is None:
      return  # nothing was planned (the build failed before looking at the folder)
    self.report_path.parent.mkdir(parents=True, exist_ok=True)
    self.report_path.write_text(json.dumps(self.report(), indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
    logging.info("video_folder: kept %d, skipped %d; report at %s", len(self._kept),
                 len(self._skipped), self.report_path)


def _count_reasons(skipped: Iterable[Skipped]) -> str:
  counts = collections.Counter(s.reason for s in skipped)
  return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "none"


def build_video_folder(folder: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                       buckets: Iterable[str | common.Shape] = DEFAULT_BUCKETS,
                       frame_stride: int = 1,
                       num_workers: int = DEFAULT_NUM_WORKERS) -> dict[str, Any]:
  """Builds the `video_folder` data set of `folder` under the TFDS data_dir `out_dir`.

  Returns:
    The report (also in OUT_DIR/video_folder/report.json): "dataset_dir", "kept_per_bucket",
    "skipped_per_reason", "kept" and "skipped" (file, reason, detail, what_to_do) lists, and
    "caption_problems" (lines of captions.jsonl that name no usable video).

  Raises:
    FileNotFoundError: `folder` is not a directory.
    ValueError: no video in the folder is usable (the report says why).
  """
  builder = VideoFolder(folder=folder, buckets=buckets, frame_stride=frame_stride,
                        num_workers=num_workers, data_dir=str(out_dir))
  if (builder.data_path / "dataset_info.json").exists():
    built = json.loads((builder.data_path / "metadata.json").read_text())
    wanted = {"buckets": [common.shape_name(b) for b in builder.buckets],
              "frame_stride": frame_stride, "folder": str(pathlib.Path(folder).resolve())}
    if any(built.get(key) != value for key, value in wanted.items()):
      raise ValueError(
          f"{builder.data_path} already holds a video_folder data set built from "
          f"{built.get('folder')} with buckets {built.get('buckets')} and frame_stride "
          f"{built.get('frame_stride')}, not {wanted}: delete {builder.data_path.parent} or "
          f"choose another out_dir")
    logging.info("video_folder: reusing %s", builder.data_dir)
    return json.loads(builder.report_path.read_text(encoding="utf-8"))
  common.prepare(builder)
  return builder.report()


def main(argv: list[str]) -> None:
  del argv
  report = build_video_folder(_FOLDER.value, _OUT.value, buckets=_BUCKETS.value,
                              frame_stride=_FRAME_STRIDE.value, num_workers=_NUM_WORKERS.value)
  print(f"kept {report['num_kept']} videos {report['kept_per_bucket']}, skipped "
        f"{report['num_skipped']} {report['skipped_per_reason']}")
  print(f"data set: {report['dataset_dir']}")
  print(f"report:   {pathlib.Path(_OUT.value) / 'video_folder' / REPORT_FILE}")


if __name__ == "__main__":
  from absl import app
  from absl import flags
  _FOLDER = flags.DEFINE_string("folder", None, "Folder of videos and captions.", required=True)
  _OUT = flags.DEFINE_string("out", None, "TFDS data_dir to write into.", required=True)
  _BUCKETS = flags.DEFINE_list("buckets", list(DEFAULT_BUCKETS),
                               "Shape buckets FRAMESxHEIGHTxWIDTH, comma-separated.")
  _FRAME_STRIDE = flags.DEFINE_integer("frame_stride", 1, "Keep every n-th source frame.")
  _NUM_WORKERS = flags.DEFINE_integer("num_workers", DEFAULT_NUM_WORKERS,
                                      "Files probed and decoded at once, in threads.")
  app.run(main)
