"""Tests for data_pipelines/video_io.py: round trips, probing, errors on broken files."""

from __future__ import annotations

import pathlib
import subprocess

import av
import imageio_ffmpeg
import numpy as np
from PIL import Image
import pytest

from data_pipelines import video_io


def _clip(frames: int = 9, height: int = 32, width: int = 48) -> np.ndarray:
  """A smooth moving gradient with a coloured square: uint8 [T, H, W, 3]."""
  t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
  video = np.stack([(x * 4 + t * 6) % 256, (y * 6) % 256, np.full_like(x, 90)], axis=-1)
  video = video.astype(np.uint8)
  for i in range(frames):
    video[i, 8:16, 4 + 2 * i:12 + 2 * i] = (230, 30, 30)
  return video


def _flat_clip(values: list[int], height: int = 8, width: int = 8) -> np.ndarray:
  """Frame i is one flat colour (values[i], 100, 200): few colours, exact in a GIF."""
  video = np.zeros((len(values), height, width, 3), np.uint8)
  video[..., 0] = np.asarray(values, np.uint8)[:, None, None]
  video[..., 1], video[..., 2] = 100, 200
  return video


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float(10 * np.log10(255.0 ** 2 / mse)) if mse else float("inf")


def ffmpeg_encode(path: pathlib.Path, frames: np.ndarray, args: list[str], fps: int = 8,
                  pix_fmt_in: str = "rgb24") -> pathlib.Path:
  """Encodes raw frames with ffmpeg command-line `args` (codec, pixel format, ...)."""
  height, width = frames.shape[1:3]
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo",
                  "-pix_fmt", pix_fmt_in, "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
                  *args, str(path)], input=np.ascontiguousarray(frames).tobytes(), check=True)
  return path


def test_mp4_round_trip_is_close(tmp_path):
  video = _clip()
  path = tmp_path / "clip.mp4"
  video_io.write_video(path, video, fps=8)
  frames, fps = video_io.read_video(path)
  assert frames.shape == video.shape and frames.dtype == np.uint8
  assert fps == pytest.approx(8.0)
  assert _psnr(frames, video) > 30.0
  # Frame order survives: each frame is closest to its own source frame.
  errors = np.abs(frames[:, None].astype(int) - video[None].astype(int)).mean(axis=(2, 3, 4))
  np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(len(video)))


def test_mp4_with_odd_size_is_padded_to_even(tmp_path):
  video = _clip(frames=3, height=17, width=25)
  path = tmp_path / "odd.mp4"
  video_io.write_video(path, video, fps=8)
  frames, _ = video_io.read_video(path)
  assert frames.shape == (3, 18, 26, 3)
  assert _psnr(frames[:, :17, :25], video) > 28.0


def test_gif_round_trip_is_exact_and_keeps_repeated_frames(tmp_path):
  # Frames 1-3 repeat: a GIF writer that merges them would read back 4 frames.
  video = _flat_clip([0, 50, 50, 50, 200, 120])
  path = tmp_path / "clip.gif"
  video_io.write_video(path, video, fps=10)
  frames, fps = video_io.read_video(path)
  np.testing.assert_array_equal(frames, video)
  assert fps == pytest.approx(10.0, abs=0.5)


def test_gif_of_the_procedural_world_is_exact(tmp_path):
  world = pytest.importorskip("data_pipelines.shapes.world")
  video = world.generate(1, seed=0, frames=5, height=24, width=40)["video"]
  path = tmp_path / "world.gif"
  video_io.write_video(path, video, fps=8)
  np.testing.assert_array_equal(video_io.read_video(path)[0], video)


@pytest.mark.parametrize("suffix,args", [
    (".webm", ["-c:v", "libvpx-vp9", "-lossless", "1"]),
    (".mov", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"]),
])
def test_reads_webm_and_mov(tmp_path, suffix, args):
  video = _clip(frames=5)
  path = ffmpeg_encode(tmp_path / f"clip{suffix}", video, args)
  frames, fps = video_io.read_video(path)
  assert frames.shape == video.shape
  assert fps == pytest.approx(8.0)
  assert _psnr(frames, video) > 30.0


def test_read_video_selects_frames_and_crops_the_centre(tmp_path):
  path = tmp_path / "count.gif"
  video_io.write_video(path, _flat_clip([10 * i for i in range(10)]), fps=8)
  frames, fps = video_io.read_video(path, start_frame=2, frame_stride=3, max_frames=2)
  np.testing.assert_array_equal(frames[:, 0, 0, 0], [20, 50])
  assert fps == pytest.approx(8.0 / 3, abs=0.2)
  assert video_io.read_video(path, max_frames=4)[0].shape[0] == 4
  # Green | red | blue columns; covering 16x16 keeps the aspect ratio, so only red remains.
  bands = np.zeros((1, 16, 32, 3), np.uint8)
  bands[:, :, :8] = (0, 255, 0)
  bands[:, :, 8:24] = (255, 0, 0)
  bands[:, :, 24:] = (0, 0, 255)
  video_io.write_video(tmp_path / "bands.gif", bands, fps=8)
  frames, _ = video_io.read_video(tmp_path / "bands.gif", size=(16, 16))
  assert frames.shape == (1, 16, 16, 3)
  np.testing.assert_allclose(frames[0].reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=2)
  # Shrinking to 8x8 halves the scale: the 16 red columns become exactly the 8 kept.
  frames, _ = video_io.read_video(tmp_path / "bands.gif", size=(8, 8))
  np.testing.assert_allclose(frames[0].reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=2)


def test_probe_reports_size_frames_and_pixel_format(tmp_path):
  video = _clip(frames=6, height=16, width=24)
  mp4 = tmp_path / "clip.mp4"
  video_io.write_video(mp4, video, fps=12)
  info = video_io.probe_video(mp4, count_frames=True)
  assert (info["width"], info["height"], info["frames"]) == (24, 16, 6)
  assert info["fps"] == pytest.approx(12.0)
  assert info["pix_fmt"] == "yuv420p" and not info["is_grey"] and not info["has_alpha"]
  assert not info["truncated"]
  assert video_io.probe_video(mp4)["frames"] is None  # not counted unless asked

  grey = ffmpeg_encode(tmp_path / "grey.mov", video[..., :1].copy(), ["-c:v", "png"],
                       pix_fmt_in="gray")
  info = video_io.probe_video(grey)
  assert info["is_grey"] and info["pix_fmt"] == "gray"
  assert video_io.read_video(grey)[0].shape == (6, 16, 24, 3)

  rgba = np.concatenate([video, np.full(video.shape[:3] + (1,), 128, np.uint8)], axis=-1)
  alpha = ffmpeg_encode(tmp_path / "alpha.mov", rgba, ["-c:v", "png"], pix_fmt_in="rgba")
  info = video_io.probe_video(alpha)
  assert info["has_alpha"] and not info["is_grey"]
  frames, _ = video_io.read_video(alpha, with_alpha=True)
  assert frames.shape == (6, 16, 24, 4) and np.all(frames[..., 3] == 128)


def _truncated_copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
  target.write_bytes(source.read_bytes()[:source.stat().st_size // 2])
  return target


@pytest.mark.parametrize("broken,reason", [
    ("zero_bytes", "empty"),
    ("random_bytes", "undecodable"),
    ("truncated_index_first", "truncated"),
    ("truncated_index_last", "truncated"),
    ("missing", "missing"),
])
def test_broken_files_raise_decode_error_with_reason(tmp_path, broken, reason):
  video = _clip(frames=24)
  path = tmp_path / f"{broken}.mp4"
  if broken == "zero_bytes":
    path.write_bytes(b"")
  elif broken == "random_bytes":
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
  elif broken == "truncated_index_first":  # write_video puts the index first (+faststart)
    video_io.write_video(tmp_path / "whole.mp4", video, fps=8)
    _truncated_copy(tmp_path / "whole.mp4", path)
  elif broken == "truncated_index_last":  # ffmpeg's default: the index after the frames
    ffmpeg_encode(tmp_path / "whole.mp4", video, ["-c:v", "libx264", "-pix_fmt", "yuv420p"])
    _truncated_copy(tmp_path / "whole.mp4", path)
  with pytest.raises(video_io.VideoDecodeError, match=path.name) as caught:
    video_io.read_video(path)
  assert caught.value.reason == reason
  assert caught.value.path == str(path)


def test_write_video_rejects_bad_input(tmp_path):
  video = _clip(frames=2)
  with pytest.raises(ValueError, match=r"\.avi.*\.mp4 or \.gif"):
    video_io.write_video(tmp_path / "clip.avi", video, fps=8)
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_video(tmp_path / "clip.mp4", video.astype(np.float32) / 255, fps=8)
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    video_io.write_video(tmp_path / "clip.mp4", video[0], fps=8)
  with pytest.raises(ValueError, match="fps"):
    video_io.write_video(tmp_path / "clip.mp4", video, fps=0)
  assert not list(tmp_path.iterdir())


def test_a_failed_write_raises_names_ffmpegs_reason_and_leaves_no_file(tmp_path, monkeypatch,
                                                                       capfd):
  video = _clip(frames=3)
  with pytest.raises(video_io.VideoWriteError,
                     match=r"^/proc/clip.mp4: ffmpeg could not write it \(.*No such file"):
    video_io.write_video("/proc/clip.mp4", video, fps=8)
  assert capfd.readouterr().err == ""  # ffmpeg's own message is in the error, not on the terminal
  # A write that fails replaces nothing: an existing file stays, no temporary file remains.
  kept = tmp_path / "kept.mp4"
  kept.write_bytes(b"the old video")
  monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: "false")  # exits 1, writes nothing
  with pytest.raises(video_io.VideoWriteError,
                     match=r"ffmpeg could not write it \(exit status 1\)"):
    video_io.write_video(kept, video, fps=8)
  assert kept.read_bytes() == b"the old video"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4"]


def test_no_ffmpeg_is_one_line_that_says_how_to_get_one(tmp_path, monkeypatch):
  # The accelerator's Python has imageio-ffmpeg without its binary and no ffmpeg on PATH.
  def none_found():
    raise RuntimeError("No ffmpeg exe could be found.")

  monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", none_found)
  with pytest.raises(video_io.FfmpegNotFoundError, match="IMAGEIO_FFMPEG_EXE"):
    video_io.ffmpeg_exe()
  for name in ("clip.mp4", "clip.gif"):
    with pytest.raises(video_io.VideoWriteError, match=f"^{tmp_path / name}: no ffmpeg found: "):
      video_io.write_video(tmp_path / name, _clip(frames=2), fps=8)
  assert not list(tmp_path.iterdir())


def test_written_files_replace_old_ones_whole(tmp_path):
  path = tmp_path / "clip.gif"
  path.write_bytes(b"an older file")
  video = _flat_clip([10, 60, 60, 200])
  video_io.write_video(path, video, fps=8)
  np.testing.assert_array_equal(video_io.read_video(path)[0], video)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]


@pytest.mark.parametrize("where, message, write_message", [
    ("file.txt/clip.mp4", r"file.txt is a file, not a folder: choose another path", None),
    ("file.txt/deeper/clip.mp4", r"file.txt is a file, not a folder", None),
    ("folder.mp4", r"folder.mp4: is a folder: name a file inside it", r"cannot replace it"),
    ("/proc/clip.mp4", r"cannot create a file in /proc \(No such file or directory\)",
     r"ffmpeg could not write it"),
])
def test_check_writable_names_what_is_in_the_way(tmp_path, where, message, write_message):
  (tmp_path / "file.txt").write_text("x")
  (tmp_path / "folder.mp4").mkdir()
  with pytest.raises(video_io.VideoWriteError, match=message):
    video_io.check_writable(tmp_path / where)
  with pytest.raises(video_io.VideoWriteError, match=write_message or message):
    video_io.write_video(tmp_path / where, _clip(frames=1), fps=8)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder.mp4"]


def test_check_writable_creates_the_folder_and_leaves_nothing_else(tmp_path):
  video_io.check_writable(tmp_path / "new" / "deeper" / "clip.mp4")
  assert (tmp_path / "new" / "deeper").is_dir()
  assert not list((tmp_path / "new" / "deeper").iterdir())


def test_check_writable_without_creating_the_folder_creates_nothing(tmp_path):
  (tmp_path / "file.txt").write_text("x")
  video_io.check_writable(tmp_path / "new" / "deeper" / "clip.mp4", create_folder=False)
  video_io.check_writable(tmp_path / "clip.mp4", create_folder=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
  with pytest.raises(video_io.VideoWriteError, match="file.txt is a file, not a folder"):
    video_io.check_writable(tmp_path / "file.txt" / "new" / "clip.mp4", create_folder=False)


def test_write_image_round_trip_and_errors(tmp_path):
  rgb = _clip(frames=1, height=10, width=12)[0]
  video_io.write_image(tmp_path / "sub" / "frame.png", rgb)
  np.testing.assert_array_equal(video_io.read_image(tmp_path / "sub" / "frame.png"), rgb)
  with pytest.raises(ValueError, match=r"\.jpg; name the file \.png"):
    video_io.write_image(tmp_path / "frame.jpg", rgb)
  with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
    video_io.write_image(tmp_path / "frame.png", rgb[..., :2])
  with pytest.raises(video_io.VideoWriteError, match="^/proc/frame.png: cannot write it"):
    video_io.write_image("/proc/frame.png", rgb)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_read_image(tmp_path):
  rgb = _clip(frames=1, height=10, width=12)[0]
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  np.testing.assert_array_equal(video_io.read_image(tmp_path / "rgb.png"), rgb)
  Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
  grey = video_io.read_image(tmp_path / "grey.png")
  assert grey.shape == (10, 12, 3)
  np.testing.assert_array_equal(grey, np.repeat(rgb[..., :1], 3, axis=-1))
  opaque = np.concatenate([rgb, np.full((10, 12, 1), 255, np.uint8)], axis=-1)
  Image.fromarray(opaque).save(tmp_path / "opaque.png")
  np.testing.assert_array_equal(video_io.read_image(tmp_path / "opaque.png"), rgb)
  Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
  assert _psnr(video_io.read_image(tmp_path / "rgb.jpg"), rgb) > 25.0
  opaque[0, 0, 3] = 0
  Image.fromarray(opaque).save(tmp_path / "hole.png")
  with pytest.raises(video_io.VideoDecodeError, match="transparent"):
    video_io.read_image(tmp_path / "hole.png")
  (tmp_path / "junk.png").write_bytes(b"not a png")
  with pytest.raises(video_io.VideoDecodeError, match="junk.png"):
    video_io.read_image(tmp_path / "junk.png")


def test_contact_sheet_has_one_row_per_video_and_frames_across(tmp_path):
  red = np.zeros((10, 8, 8, 3), np.uint8)
  red[..., 0] = 255
  blue = np.zeros((3, 8, 8, 3), np.uint8)
  blue[..., 2] = 255
  path = tmp_path / "sheet.png"
  video_io.write_contact_sheet(path, [red, blue], max_frames=4)
  sheet = np.asarray(Image.open(path).convert("RGB"))
  gap = 2
  assert sheet.shape == (gap + 2 * (8 + gap), gap + 4 * (8 + gap), 3)
  row0 = sheet[gap:gap + 8]
  row1 = sheet[gap + 10:gap + 18]
  cells = [slice(gap + c * 10, gap + c * 10 + 8) for c in range(4)]
  assert all(np.all(row0[:, c] == (255, 0, 0)) for c in cells)
  assert all(np.all(row1[:, c] == (0, 0, 255)) for c in cells[:3])
  assert np.all(row1[:, cells[3]] == 255)  # the short video leaves its last cell blank
  labelled = tmp_path / "labelled.png"
  video_io.write_contact_sheet(labelled, [red, blue], labels=["red", "blue"], max_frames=4)
  labelled_sheet = np.asarray(Image.open(labelled).convert("RGB"))
  assert labelled_sheet.shape[0] > sheet.shape[0]
  assert np.any(labelled_sheet[:12] < 128)  # some label text is drawn above the first row
  with pytest.raises(ValueError, match="one label per video"):
    video_io.write_contact_sheet(path, [red, blue], labels=["red"])


def _ffmpeg_decode(path: pathlib.Path, height: int, width: int, vf: str | None = None):
  """The frames the ffmpeg command line decodes (the reference decoder): uint8 [T, H, W, 3]."""
  filters = ["-vf", vf] if vf else []
  out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), *filters,
                        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                       capture_output=True, check=True).stdout
  return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize("name", ["clip.mp4", "odd.mp4", "clip.gif", "clip.webm"])
def test_decoded_pixels_match_the_ffmpeg_command_line(tmp_path, name):
  # The decoder this module replaced ran `ffmpeg ... -pix_fmt rgb24`: same pixels, same resizing.
  video = _clip(frames=9, height=17 if name == "odd.mp4" else 32, width=48)
  path = tmp_path / name
  if name == "clip.webm":
    ffmpeg_encode(path, video, ["-c:v", "libvpx-vp9", "-crf", "30", "-b:v", "0"])
  else:
    video_io.write_video(path, video, fps=8)
  frames, _ = video_io.read_video(path)
  reference = _ffmpeg_decode(path, *frames.shape[1:3])
  assert frames.shape == reference.shape
  assert np.abs(frames.astype(int) - reference).max() <= 1
  if name != "odd.mp4":
    assert _psnr(frames, video) > 30.0
  # Shrinking: area averaging, then the centre crop.
  scale = "scale=12:12:force_original_aspect_ratio=increase:flags=area,crop=12:12"
  resized, _ = video_io.read_video(path, size=(12, 12))
  assert np.abs(resized.astype(int) - _ffmpeg_decode(path, 12, 12, scale)).max() <= 1


def _corners(video: np.ndarray) -> list[str]:
  """The colour names of the first frame's corners: top left, top right, bottom left, right."""
  names = {(1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (0, 0, 0): "black"}
  frame = video[0].astype(int) // 128
  return [names[tuple(frame[y, x])] for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1))]


def _write_turned(path: pathlib.Path, video: np.ndarray, degrees: int, hflip: bool = False,
                  rotate_tag: str | None = None) -> pathlib.Path:
  """Encodes `video` as stored pixels plus orientation metadata: a display matrix turning it
  `degrees` counter-clockwise (then mirrored), or an old-style clockwise "rotate" tag."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=8, options={"crf": "10"})
    stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
    if rotate_tag is not None:
      stream.metadata["rotate"] = rotate_tag
    elif not hasattr(stream, "set_display_rotation"):
      # The reader needs no such call: it reads these files alike under PyAV 14 to 18.
      pytest.skip(f"PyAV {av.__version__} cannot write a display matrix (17 and later can)")
    else:
      stream.set_display_rotation(degrees, hflip=hflip)
    for frame in video:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return path


# Stored: red top left, green top right, black bottom left, blue bottom right.
_STORED = ["red", "green", "black", "blue"]


@pytest.mark.parametrize("degrees,hflip,upright", [
    (0, False, _STORED),
    (90, False, ["green", "blue", "red", "black"]),    # turned a quarter counter-clockwise
    (-90, False, ["black", "red", "blue", "green"]),   # a quarter clockwise
    (180, False, ["blue", "black", "green", "red"]),
    (0, True, ["green", "red", "blue", "black"]),      # mirrored left to right
])
def test_rotated_videos_are_returned_upright(tmp_path, degrees, hflip, upright):
  video = np.zeros((3, 16, 32, 3), np.uint8)
  video[:, :8, :8] = (255, 0, 0)
  video[:, :8, 24:] = (0, 255, 0)
  video[:, 8:, 24:] = (0, 0, 255)
  path = _write_turned(tmp_path / "turned.mp4", video, degrees, hflip)
  frames, _ = video_io.read_video(path)
  quarter = degrees % 180 == 90
  assert frames.shape == ((3, 32, 16, 3) if quarter else (3, 16, 32, 3))
  assert _corners(frames) == upright
  if not hflip:
    # 4:2:0 chroma bleeds over these hard colour edges: about 30 dB, a little below under load.
    # A frame one pixel off reads 15 dB and one blurred by half a pixel 21 dB.
    assert _psnr(frames, np.rot90(video, degrees // 90, axes=(1, 2))) > 27.0
  info = video_io.probe_video(path)
  assert (info["height"], info["width"]) == frames.shape[1:3]
  assert info["rotation"] == (180 if hflip else degrees % 360)
  # The same orientation, resized: the crop is taken from the upright frames.
  small, _ = video_io.read_video(path, size=(8, 8))
  assert small.shape == (3, 8, 8, 3)


def test_an_old_style_rotate_tag_turns_the_frames_too(tmp_path):
  video = np.zeros((2, 16, 32, 3), np.uint8)
  video[:, :8, :8] = (255, 0, 0)  # red top left
  # Matroska keeps free-form tags; "rotate=90" meant: turn a quarter clockwise to show.
  path = _write_turned(tmp_path / "tagged.mkv", video, 0, rotate_tag="90")
  frames, _ = video_io.read_video(path)
  assert frames.shape == (2, 32, 16, 3)
  assert _corners(frames)[1] == "red"  # top left, turned clockwise, is top right
  assert video_io.probe_video(path)["rotation"] == 270


def test_read_frames_and_check_frames_file_read_videos_and_images_and_name_bad_files(tmp_path):
  clip = np.zeros((3, 16, 16, 3), np.uint8)
  clip[:, 4:12, 4:12] = (220, 40, 40)
  video_io.write_video(tmp_path / "clip.gif", clip, fps=8)
  np.testing.assert_array_equal(video_io.read_frames(str(tmp_path / "clip.gif")), clip)
  Image.fromarray(clip[0]).save(tmp_path / "frame.png")
  np.testing.assert_array_equal(video_io.read_frames(str(tmp_path / "frame.png")), clip[:1])
  with pytest.raises(FileNotFoundError, match="nothing.mp4 does not exist"):
    video_io.read_frames(str(tmp_path / "nothing.mp4"))
  (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
  with pytest.raises(video_io.VideoDecodeError):
    video_io.read_frames(str(tmp_path / "broken.mp4"))
  for name in ("clip.gif", "frame.png"):
    video_io.check_frames_file(tmp_path / name)  # what read_frames reads, check_frames_file passes
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
  for name, reason in (("broken.mp4", "undecodable"), ("broken.png", "undecodable"),
                       ("nothing.gif", "missing")):
    with pytest.raises(video_io.VideoDecodeError) as raised:
      video_io.check_frames_file(tmp_path / name)
    assert raised.value.reason == reason
