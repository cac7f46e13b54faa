"""An invisible, keyed watermark for videos: `embed` hides a 32-bit payload, `detect` finds it.

    marked = watermark.embed(frames, key, payload=b"\x12\x34\x56\x78")  # uint8 [T, H, W, 3]
    found = watermark.detect(read_back_frames, key)
    found.watermarked, found.p_value, found.payload                     # True, 1e-15, b"\x124Vx"

Method: keyed spread spectrum in the luma of a tiled, low-resolution grid.
  * The code word is the payload's 32 bits and a CRC-8 (40 bits). A key-seeded generator lays a
    grid of 16 x 16 cells; each cell belongs to one code bit (6 or 7 cells per bit) and carries a
    keyed sign. A cell is a `cell` x `cell` square of pixels (`cell_size`: 2 below 64 pixels, 4
    from 64, 8 from 128), so the pattern lives at low spatial frequencies that survive H.264 and
    a 0.5x rescale. The tile repeats over the frame and every frame carries the same pattern:
    H.264's motion compensation carries it across P-frames, keeping half the frames keeps half
    the evidence, and a crop only moves the tile's origin.
  * The pattern is added along the luma weights of R, G and B (luma, which yuv420p keeps at full
    resolution; for one PSNR this changes luma 16% more than grey), with the largest amplitude
    whose PSNR meets `target_psnr` after dithered rounding and clipping (clipping on black
    backgrounds halves the error, so the amplitude rises there).
  * Informed embedding (`informed_steps`): the embedder knows the host, so it reads its own
    result as the detector will: saved as mp4 and read back, and re-encoded at CRF 23
    (`saved_and_reencoded`), then `detect`'s native correlations c_i on both. Each step moves
    the change along the gradient of sum_i b_i c_i (b_i the intended +-1 bits) with respect to
    the pixels (a cell's gradient times each pixel's detector weight, the host estimate and
    weights held fixed), rescales it to the same PSNR, and the step whose read-back margins are
    largest is kept (the plain pattern is step 0, so the result is never worse on what it
    measures). Host interference along a bit's code is cancelled where that is cheap (flat
    pixels, which the detector weights most) and energy moves away from where the codec erases
    it. Measuring the frames themselves instead raises their margins but lowers them on the mp4;
    measuring the mp4 alone helps the mp4 and hurts CRF 23 and 28 (docs/provenance.md). Unmarked
    videos never pass through the embedder, so the detector's null distribution is untouched.
  * The detector takes luma and removes the host with a sigma filter (a local mean over the
    neighbours of similar value: the pattern averages out, the host's edges stay out), clips the
    residual, weights it by the inverse of its local variance (flat regions outvote busy ones),
    folds every frame and tile into one tile and sums each cell. A bit's normalised correlation
    sum_j s_j v_j / sqrt(sum_j v_j^2) over its cells' sums v_j and keyed signs s_j has mean 0
    and variance 1 for a video without this watermark, since the signs are independent of it.
  * Two tests, combined by Bonferroni (`p_value` = twice the smaller, so no multiplicity goes
    uncounted):
    - native: the cells where `embed` puts them on an uncropped video. The bits are unknown, so
      the statistic is sum_i |c_i|; given the cells' values its null distribution over the keyed
      signs is a convolution computed exactly (`_abs_sum_tail`), whatever the video's noise.
      Uncropped videos (the saved mp4, re-encodings, rescales, halves, GIFs) are found here.
    - search: every cell size and every cyclic shift of the grid (a crop moves the origin). Each
      bit's cells are split into two keyed halves, A and B; the search picks the hypothesis from
      the A halves only (the sum of |correlation|), and the score is z = sum_i sign(c_i^A) c_i^B
      / sqrt(bits) on the B halves, whose signs the search never saw, so z is N(0, 1) under the
      null however many hypotheses were searched.
    The bits are read at the hypothesis of the smaller p-value; the payload is reported only when
    the video is watermarked (p < `P_THRESHOLD`) and its CRC holds, if need be after flipping
    the two least reliable bits (soft decoding, `_decode`).
  * Why generated videos are harder than world clips (measured on the main job's 32x32 videos,
    docs/provenance.md): not the mp4 (detection on the frames before encoding fails on the same
    videos) but the content: soft, busy blobs moving over 9 frames put most of the residual's
    energy in the host's edges, and a search over 1024 offsets lost a weak pattern among its
    hypotheses. The native test and the weighting recover most of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
import subprocess
import tempfile
from typing import Callable

import numpy as np
from absl import logging
from scipy import ndimage
from scipy import special

from data_pipelines import video_io

PAYLOAD_BYTES = 4  # the caller's payload: e.g. a checkpoint hash prefix and a generation counter
PAYLOAD_BITS = 8 * PAYLOAD_BYTES
CODE_BITS = PAYLOAD_BITS + 8  # payload + CRC-8
CELLS = 16  # cells per tile side: 256 cells, 6 or 7 per code bit
CELL_SIZES = (2, 4, 8)  # pixels per cell side; `cell_size` picks one by frame size
# Below this p-value a video counts as watermarked: the p-value is calibrated, so 1 false positive
# in 10000 unwatermarked videos is expected, and the "at most 1 in 1000" holds with margin.
P_THRESHOLD = 1e-4
DEFAULT_PSNR = 40.5  # dB of watermarked against original frames (the issue asks >= 40)
_MAX_AMPLITUDE = 12.0  # grey levels (root mean square); only reached on nearly saturated videos
# Informed embedding (`embed`): its steps (about 0.4 s per 9x32x32 video, 1.3 s per 17x128x128),
# and each step's size relative to the change's.
INFORMED_STEPS = 4
_INFORMED_STEP = 0.1
_READ_BACK_CRF = 23  # the re-encoding `saved_and_reencoded` measures besides the saved mp4
_CLIP_RESIDUAL = 3.0  # detector clips the residual at this many robust standard deviations
_MIN_VARIANCE = 0.25  # grey levels^2: the weighting's floor, so exactly flat regions stay finite
_MIN_SCORE = -10.0  # `score` of p_value 1 (the normal quantile would be -inf)
_TAIL_STEP = 1.0 / 256  # grid of the exact null distribution of the native statistic
# When the CRC fails, the decoder flips these many least reliable bits (smallest |correlation|),
# alone and together, and takes the first word whose CRC holds (`_decode`).
_SOFT_BITS = 2
_DOMAIN = b"videogen-watermark-v1"
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601 luma weights of R, G, B
# The colour the pattern is added along: the luma weights, scaled to mean square 1 over R, G, B.
# Of all directions with one squared error (one PSNR) it changes the luma most, 16% more than
# grey (1, 1, 1), and the detector reads luma.
_DIRECTION = _LUMA / np.sqrt(np.mean(_LUMA ** 2))


@dataclasses.dataclass(frozen=True)
class Detection:
  """What `detect` found in a video.

  Attributes:
    watermarked: p_value < P_THRESHOLD.
    p_value: a bound on the probability that a video without this key's watermark scores as high
      (Bonferroni over the two tests of `detect`, each calibrated).
    score: the p-value as a normal quantile (isf), at least -10: >= 3.7 means watermarked.
    payload: the PAYLOAD_BYTES embedded bytes when watermarked and their CRC-8 matches (after
      flipping up to _SOFT_BITS least reliable bits if needed, `_decode`), else None.
    bits: the PAYLOAD_BITS payload bits read at the best hypothesis (0/1, most significant bit of
      the first byte first), whether or not they are right; for measuring bit accuracy.
    cell: the cell size (pixels) of the best hypothesis.
    offset: (dy, dx) pixels the frames were cropped from the top and left of the marked video,
      modulo the tile (CELLS * cell pixels): (0, 0) for an uncropped video.
  """
  watermarked: bool
  p_value: float
  score: float
  payload: bytes | None
  bits: tuple[int, ...]
  cell: int
  offset: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class _Layout:
  """The keyed layout of one tile's cells (flattened row-major, CELLS * CELLS of them).

  Attributes:
    signs: float [cells], +-1 per cell.
    bit: int [cells], the code bit a cell carries.
    half_a: bool [cells], the cell is in its bit's A half (the rest form the B half).
  """
  signs: np.ndarray
  bit: np.ndarray
  half_a: np.ndarray


def _layout(key: bytes) -> _Layout:
  if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
    raise ValueError("the watermark key must be bytes, at least 16 of them (e.g. os.urandom(32)); "
                     "read it with videogen.provenance.keys")
  seed = int.from_bytes(hashlib.sha256(_DOMAIN + bytes(key)).digest(), "little")
  rng = np.random.default_rng(seed)
  count = CELLS * CELLS
  order = rng.permutation(count)
  bit = np.empty(count, np.int64)
  bit[order] = np.arange(count) % CODE_BITS  # balanced: 6 or 7 cells per bit
  half_a = np.empty(count, bool)
  half_a[order] = (np.arange(count) // CODE_BITS) % 2 == 0  # each bit's cells alternate A, B
  signs = rng.choice(np.array([-1.0, 1.0]), size=count)
  return _Layout(signs=signs, bit=bit, half_a=half_a)


def _crc8(data: bytes) -> int:
  """CRC-8 with polynomial x^8 + x^2 + x + 1 (0x07), initial value 0."""
  crc = 0
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
  return crc


def _crc_holds(code: np.ndarray) -> bool:
  packed = np.packbits(code).tobytes()
  return _crc8(packed[:PAYLOAD_BYTES]) == packed[PAYLOAD_BYTES]


def _decode(levels: np.ndarray) -> bytes | None:
  """The payload read from the code bits' correlations `levels` [CODE_BITS], or None.

  The hard decisions (the signs) when their CRC holds; else the same with the _SOFT_BITS least
  reliable bits (smallest |level|) flipped, alone or together, cheapest flip (sum of the flipped
  |levels|) first, when one makes the CRC hold. A wrong bit is most often one of the weakest
  (measured on re-encoded 32x32 videos, docs/provenance.md). The CRC-8's code words are at least
  4 bits apart, so a word with one wrong bit is never "corrected" into another payload; a
  garbled word passes one of the 2^_SOFT_BITS candidates' CRCs with probability about
  2^_SOFT_BITS / 256 instead of 1 / 256.
  """
  code = (levels > 0).astype(np.uint8)
  weakest = np.argsort(np.abs(levels), kind="stable")[:_SOFT_BITS]
  flips = [[int(i) for i, chosen in zip(weakest, mask) if chosen]
           for mask in np.ndindex(*(2,) * len(weakest))]
  for flip in sorted(flips, key=lambda f: float(np.sum(np.abs(levels[f])))):
    trial = code.copy()
    trial[flip] ^= 1
    if _crc_holds(trial):
      return np.packbits(trial[:PAYLOAD_BITS]).tobytes()
  return None


def _to_bits(data: bytes) -> np.ndarray:
  return np.unpackbits(np.frombuffer(data, np.uint8))


def _code_word(payload: bytes) -> np.ndarray:
  """int [CODE_BITS]: payload bits then its CRC-8."""
  return _to_bits(payload + bytes([_crc8(payload)]))


def cell_size(height: int, width: int) -> int:
  """Pixels per cell side for a frame size: the largest of CELL_SIZES whose tile (CELLS cells)
  fits in the short side, at least 2: 2 below 64 pixels, 4 from 64, 8 from 128."""
  short = min(height, width)
  return max([c for c in CELL_SIZES if CELLS * c <= short], default=CELL_SIZES[0])


def _check_frames(frames: np.ndarray, what: str) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
    raise ValueError(f"{what}: frames must be uint8 [T, H, W, 3] with T, H, W >= 1, got "
                     f"{frames.dtype} {frames.shape}; convert floats in [0, 1] with "
                     f"np.clip(x * 255, 0, 255).round().astype(np.uint8)")
  return frames


def pattern(key: bytes, payload: bytes, height: int, width: int, cell: int | None = None
            ) -> np.ndarray:
  """float32 [H, W]: the +-1 pattern that carries `payload` under `key`, tiled from the origin."""
  if len(payload) != PAYLOAD_BYTES:
    raise ValueError(f"the watermark payload must be exactly {PAYLOAD_BYTES} bytes, got "
                     f"{len(payload)}: e.g. a checkpoint hash prefix (2 bytes) and a counter "
                     f"(2 bytes)")
  layout = _layout(key)
  cell = cell_size(height, width) if cell is None else cell
  levels = 2.0 * _code_word(payload) - 1.0  # [CODE_BITS] of +-1
  return _tiled((layout.signs * levels[layout.bit]).reshape(CELLS, CELLS), cell, height, width)


def psnr(reference: np.ndarray, frames: np.ndarray) -> float:
  """dB of `frames` against `reference` (uint8 arrays of one shape); inf when equal."""
  mse = np.mean((reference.astype(np.float64) - frames.astype(np.float64)) ** 2)
  return float(10.0 * np.log10(255.0 ** 2 / mse)) if mse else math.inf


def _tiled(cells: np.ndarray, cell: int, height: int, width: int) -> np.ndarray:
  """float32 [H, W]: per-cell values [CELLS, CELLS] as `cell`-pixel squares, tiled from the
  origin over the frame."""
  tile = np.kron(cells, np.ones((cell, cell))).astype(np.float32)  # [P, P], P = CELLS * cell
  reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]))
  return np.tile(tile, reps)[:height, :width]


def _cell_sums(residual: np.ndarray, cell: int) -> np.ndarray:
  """float64 [CELLS, CELLS]: a residual [H, W] summed over tiles and over each cell's pixels,
  cells at the origin (the native hypothesis of `detect`)."""
  folded = _fold(residual, CELLS * cell)
  return folded.reshape(CELLS, cell, CELLS, cell).sum(axis=(1, 3))


def _margins(grid: np.ndarray, layout: _Layout, levels: np.ndarray) -> np.ndarray:
  """float [CODE_BITS]: each bit's native correlation times its intended sign (+-1 `levels`)."""
  return levels * _native_correlations(grid, layout)


def _margin_gradient(grid: np.ndarray, layout: _Layout, levels: np.ndarray) -> np.ndarray:
  """float [CELLS, CELLS]: the gradient of sum_i levels_i c_i with respect to the cells' sums.

  c_i = sum_j s_j v_j / n_i with n_i = sqrt(sum_j v_j^2) over bit i's cells, so
  d c_i / d v_j = s_j / n_i - c_i v_j / n_i^2: a cell gains by moving along its sign, and a
  bit's correlation gains by its cells' sums being alike in size.
  """
  values = grid.ravel()
  energy = np.bincount(layout.bit, values ** 2, minlength=CODE_BITS)
  norm = np.sqrt(np.maximum(energy, 1e-12))[layout.bit]
  correlation = _native_correlations(grid, layout)[layout.bit]
  gradient = levels[layout.bit] * (layout.signs / norm - correlation * values / norm ** 2)
  return gradient.reshape(CELLS, CELLS)


def saved_as_mp4(frames: np.ndarray) -> np.ndarray:
  """uint8 [T, H, W, 3]: the frames as `video_io`'s mp4 writer saves them (H.264, CRF 15,
  yuv420p) and its reader reads them back."""
  _, height, width, _ = frames.shape
  with tempfile.TemporaryDirectory(prefix="watermark-") as folder:
    path = pathlib.Path(folder) / "marked.mp4"
    video_io.write_video(path, frames, fps=8.0)
    return video_io.read_video(path)[0][:, :height, :width]  # odd sizes read back padded


def saved_and_reencoded(frames: np.ndarray) -> np.ndarray:
  """uint8 [2 T, H, W, 3]: `saved_as_mp4`'s frames, then the same file re-encoded at H.264 CRF
  _READ_BACK_CRF and read back: what the informed embedder measures by default (both versions'
  evidence summed, so energy goes where the saved file and a re-encoding both keep it)."""
  _, height, width, _ = frames.shape
  with tempfile.TemporaryDirectory(prefix="watermark-") as folder:
    saved, reencoded = pathlib.Path(folder) / "marked.mp4", pathlib.Path(folder) / "again.mp4"
    video_io.write_video(saved, frames, fps=8.0)
    video_io.reencode_mp4(saved, reencoded, crf=_READ_BACK_CRF)
    versions = [video_io.read_video(path)[0][:, :height, :width] for path in (saved, reencoded)]
  return np.concatenate(versions)


def embed(frames: np.ndarray, key: bytes, payload: bytes, *,
          target_psnr: float = DEFAULT_PSNR, informed_steps: int = INFORMED_STEPS,
          read_back: Callable[[np.ndarray], np.ndarray] | None = saved_and_reencoded
          ) -> np.ndarray:
  """Adds the keyed watermark carrying `payload` to a video.

  Args:
    frames: uint8 [T, H, W, 3]; apply before encoding (mp4, gif, png all carry it then).
    key: the secret watermark key, >= 16 bytes (see videogen.provenance.keys).
    payload: exactly PAYLOAD_BYTES bytes, the caller's choice.
    target_psnr: dB of the result against `frames`; the amplitude is the largest that meets it
      (higher: less visible, less robust).
    informed_steps: steps of informed embedding (module docstring): each reads the marked
      video back (`read_back`) as `detect` does at the native hypothesis and moves the change
      along the gradient of the bits' correlations, at the same PSNR; the best step is kept.
      0 gives the plain keyed pattern.
    read_back: what the informed steps measure: the marked frames [T, ...] through a channel,
      k T frames for k versions whose evidence is summed; by default saved as mp4 and
      re-encoded at CRF 23 (`saved_and_reencoded`); None: the frames as they are.

  Returns:
    uint8 [T, H, W, 3], the watermarked frames.
  """
  frames = _check_frames(frames, "watermark.embed")
  if informed_steps < 0:
    raise ValueError(f"watermark.embed: informed_steps must be >= 0, got {informed_steps}")
  _, height, width, _ = frames.shape
  source = frames.astype(np.float32)
  # Rounding with a fixed dither keeps the mean change at amplitude * pattern for any amplitude,
  # so the PSNR budget is met exactly rather than in whole grey levels.
  dither = np.random.default_rng(0).random(frames.shape[1:], dtype=np.float32)
  limit = 255.0 ** 2 / 10.0 ** (target_psnr / 10.0)  # the largest mean squared error allowed

  def fitted(change: np.ndarray) -> np.ndarray:
    """The marked frames of a luma change [T or 1, H, W] scaled to the largest amplitude (its
    root mean square, in grey levels along _DIRECTION) whose error fits the PSNR budget."""
    wave = (change / np.sqrt(np.mean(change ** 2)))[..., None] * _DIRECTION

    def marked(amplitude: float) -> np.ndarray:
      return np.clip(np.floor(source + amplitude * wave + dither), 0, 255)

    def error(amplitude: float) -> float:
      return float(np.mean((marked(amplitude) - source) ** 2))

    # The error grows with the amplitude: bisect for the largest that fits.
    low, high = 0.0, _MAX_AMPLITUDE
    if error(high) <= limit:
      low = high
    else:
      for _ in range(14):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if error(middle) <= limit else (low, middle)
    return marked(low).astype(np.uint8)

  change = pattern(key, payload, height, width)[None]  # [1, H, W] of +-1
  marked = fitted(change)
  if not informed_steps:
    return marked
  layout = _layout(key)
  levels = 2.0 * _code_word(payload) - 1.0
  cell = cell_size(height, width)
  best, best_score = marked, -math.inf
  for step in range(informed_steps + 1):
    try:
      seen = marked if read_back is None else read_back(marked)
    except (OSError, subprocess.CalledProcessError) as error:  # e.g. no space for the scratch mp4
      logging.warning("watermark: the informed steps could not read the marked video back (%s); "
                      "embedding the %s", error,
                      "plain pattern" if step == 0 else f"result of step {step - 1}")
      return best if step else marked
    weighted, weights = _weighted_residual(seen, cell)
    grid = _cell_sums(weighted.sum(axis=0), cell)
    score = float(np.sum(_margins(grid, layout, levels)))
    if score > best_score:
      best, best_score = marked, score
    if step == informed_steps:
      break
    # The step in luma: each pixel moves by its cell's gradient times its detector weight (the
    # derivative of the cell's sum), scaled to _INFORMED_STEP of the current change's size.
    change = (marked.astype(np.float32) - source) @ _LUMA / float(_DIRECTION @ _LUMA)
    # A read-back of several versions (k T frames) moves each pixel by the sum over versions.
    weights = weights.reshape(-1, *frames.shape[:3]).sum(axis=0)
    gradient = _tiled(_margin_gradient(grid, layout, levels), cell, height, width)[None] * weights
    size = float(np.sqrt(np.mean(gradient ** 2)))
    if size == 0:
      break
    scale = _INFORMED_STEP * float(np.sqrt(np.mean(change ** 2))) / size
    marked = fitted(change + scale * gradient)
  return best


def _robust_scale(values: np.ndarray) -> np.ndarray:
  """float [T, 1, 1]: the standard deviation per frame, estimated from the median |value|."""
  return 1.4826 * np.median(np.abs(values), axis=(1, 2), keepdims=True)


def _host(luma: np.ndarray, cell: int) -> np.ndarray:
  """float32 [T, H, W]: the host estimated by a sigma filter: at each pixel, the mean of the
  7 x 7 neighbours (a stride of cell / 2 pixels apart) whose value is within tau of the pixel's.

  In flat regions this is the plain local mean (the pattern averages out over ~10 cells); a
  neighbour across an edge differs by more than tau and is left out, so the host's edges stay
  out of the residual (a median would, but it returns one of the pattern's two levels).
  """
  stride = max(1, cell // 2)
  reach = 3 * stride
  rough = luma - ndimage.uniform_filter(luma, size=(1, 2 * reach + 1, 2 * reach + 1),
                                        mode="reflect")
  tau = 3.0 * np.maximum(_robust_scale(rough), 1.0)
  padded = np.pad(luma, ((0, 0), (reach, reach), (reach, reach)), mode="reflect")
  height, width = luma.shape[1:]
  total = np.zeros_like(luma)
  count = np.zeros_like(luma)
  for dy in range(0, 2 * reach + 1, stride):
    for dx in range(0, 2 * reach + 1, stride):
      neighbour = padded[:, dy:dy + height, dx:dx + width]
      near = np.abs(neighbour - luma) <= tau
      total += np.where(near, neighbour, 0.0)
      count += near
  return total / count  # count >= 1: the pixel itself is always near


def _weighted_residual(frames: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray]:
  """(float32 [T, H, W] every frame's luma minus its host estimate, clipped, weighted by the
  inverse of its local variance; float32 [T, H, W] the weights, 0 where the residual was clipped).

  The weighting lets flat regions (where the residual is mostly the pattern) outvote textured,
  moving ones (where it is mostly the host's edges): on the main job's busy 32x32 videos it
  raises the detection statistic by up to half. It needs no calibration: the keyed signs are
  independent of any weights computed from the video. The weights are also the gradient of the
  weighted residual with respect to the luma (the host estimate and the variance held fixed),
  which the informed embedder follows (`embed`).
  """
  luma = frames.astype(np.float32) @ _LUMA  # [T, H, W]
  residual = luma - _host(luma, cell)
  # Clipping bounds what one pixel (a corner the filter missed) can add.
  bound = _CLIP_RESIDUAL * np.maximum(_robust_scale(residual), 0.5)
  inside = np.abs(residual) < bound
  residual = np.clip(residual, -bound, bound)
  reach = 4 * cell + 1  # a window of a few cells: the pattern's own energy is spread evenly
  variance = ndimage.uniform_filter(residual ** 2, size=(1, reach, reach), mode="reflect")
  weights = 1.0 / np.maximum(variance, _MIN_VARIANCE)
  return residual * weights, weights * inside


def _residual(frames: np.ndarray, cell: int) -> np.ndarray:
  """float32 [H, W]: `_weighted_residual` summed over frames."""
  return _weighted_residual(frames, cell)[0].sum(axis=0)


def _fold(residual: np.ndarray, size: int) -> np.ndarray:
  """float64 [size, size]: the residual summed over tiles of `size` pixels from the origin."""
  height, width = residual.shape
  padded = np.zeros((-(-height // size) * size, -(-width // size) * size))
  padded[:height, :width] = residual
  return padded.reshape(padded.shape[0] // size, size, padded.shape[1] // size, size).sum((0, 2))


def _correlations(grids: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """float [..., CODE_BITS, CELLS, CELLS]: each bit's normalised correlation under every roll.

  For a roll (ry, rx), cell (y, x) of the layout sits at grid position (y + ry, x + rx), cyclic;
  a bit's correlation is sum_j s_j v_j / sqrt(sum_j v_j^2) over its cells j (0 when all v_j are).

  Args:
    grids: float [..., CELLS, CELLS], the box-filtered residual at each cell position.
    masks: float [CODE_BITS, CELLS, CELLS], a bit's keyed signs on its cells, 0 elsewhere.
  """
  spectrum = np.fft.rfft2(grids)[..., None, :, :]
  weights = np.conj(np.fft.rfft2(masks))
  cells = (CELLS, CELLS)
  numerator = np.fft.irfft2(spectrum * weights, s=cells)
  energy = np.fft.irfft2(np.fft.rfft2(grids ** 2)[..., None, :, :] * np.conj(
      np.fft.rfft2(np.abs(masks))), s=cells)
  energy = np.maximum(energy, 0.0)  # FFT round-off around exact zeros
  floor = 1e-9 * max(float(np.max(energy)), 1e-30)
  return np.divide(numerator, np.sqrt(energy), out=np.zeros_like(numerator),
                   where=energy > floor)


def _masks(layout: _Layout, in_half: np.ndarray) -> np.ndarray:
  """float [CODE_BITS, CELLS, CELLS]: per bit, the keyed signs of its cells in `in_half`."""
  masks = np.zeros((CODE_BITS, CELLS * CELLS))
  cells = np.flatnonzero(in_half)
  masks[layout.bit[cells], cells] = layout.signs[cells]
  return masks.reshape(CODE_BITS, CELLS, CELLS)


def _native_correlations(grid: np.ndarray, layout: _Layout) -> np.ndarray:
  """float [CODE_BITS]: each bit's normalised correlation over all its cells at the origin (the
  hypothesis of an uncropped video), 0 for a bit whose cells are all 0."""
  values = grid.ravel()  # the layout's cells, row-major, at their own positions
  numerator = np.bincount(layout.bit, layout.signs * values, minlength=CODE_BITS)
  energy = np.bincount(layout.bit, values ** 2, minlength=CODE_BITS)
  return np.divide(numerator, np.sqrt(energy), out=np.zeros(CODE_BITS), where=energy > 0)


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """The full linear convolution of two 1-D arrays, through real FFTs of a power-of-two size."""
  size = len(a) + len(b) - 1
  n = 1 << (size - 1).bit_length()
  return np.fft.irfft(np.fft.rfft(a, n) * np.fft.rfft(b, n), n)[:size]


def _abs_sum_tail(grid: np.ndarray, layout: _Layout, observed: float) -> float:
  """P(sum_i |c_i| >= observed) over the keyed signs, for the cells' values of this video.

  Without this key's watermark the keyed signs are fair coins independent of the video, so given
  its cells' values each bit's |c_i| takes one of 2^k values (k cells) with equal probability,
  independently across bits: the tail is that of a convolution, exact whatever the video's
  noise. Each value is rounded up to a grid of _TAIL_STEP, which makes the p-value conservative.
  """
  values = grid.ravel()
  distribution = np.ones(1)
  for bit in range(CODE_BITS):
    weights = np.abs(values[layout.bit == bit])
    norm = math.sqrt(float(np.sum(weights ** 2)))
    if norm == 0:
      continue
    count = len(weights)
    signs = 1 - 2 * ((np.arange(2 ** count)[:, None] >> np.arange(count)) & 1)  # [2^k, k]
    levels = np.ceil(np.abs(signs @ (weights / norm)) / _TAIL_STEP - 1e-9).astype(np.int64)
    distribution = _convolve(distribution, np.bincount(levels) / 2 ** count)
    distribution = np.maximum(distribution, 0.0)  # FFT round-off around exact zeros
  start = max(0, math.ceil(observed / _TAIL_STEP - 1e-6))
  return float(min(1.0, np.sum(distribution[start:])))


def detect(frames: np.ndarray, key: bytes) -> Detection:
  """Looks for the watermark of `key` in a video (any size, crop, length).

  Two tests, each with a calibrated p-value, combined by Bonferroni (twice the smaller):
    * native: the cells at the origin with the frame size's cell (`cell_size`), as `embed` lays
      them on an uncropped video. The bits are unknown, so the statistic is sum_i |c_i| over the
      bits' correlations (each bit's sign decoded from all its cells), and its p-value is exact
      (`_abs_sum_tail`). This is the one that finds the pattern on small, busy videos, where a
      search over offsets would lose it among the hypotheses.
    * search: every cell size and cyclic shift, calibrated by the A / B halves (module
      docstring); it finds cropped videos.
  The bits are read at the hypothesis of the smaller p-value.

  Args:
    frames: uint8 [T, H, W, 3] (an image is a one-frame video).
    key: the watermark key the video was marked with.

  Returns:
    A `Detection`: watermarked, a calibrated p_value, the payload when it decodes.
  """
  frames = _check_frames(frames, "watermark.detect")
  layout = _layout(key)
  masks_a, masks_b = _masks(layout, layout.half_a), _masks(layout, ~layout.half_a)
  _, height, width, _ = frames.shape
  native_cell = cell_size(height, width)
  native = None  # the cells' grid [CELLS, CELLS] at the origin with native_cell
  best = None  # (selection score, cell, phase y, phase x, roll y, roll x, grid [CELLS, CELLS])
  for cell in CELL_SIZES:
    if 8 * cell > min(height, width):  # fewer than 8 cells across: too little to find
      continue
    folded = _fold(_residual(frames, cell), CELLS * cell)
    # Sum over the cell whose top-left pixel is here, cyclic (the tile repeats).
    boxed = sum(np.roll(folded, (-dy, -dx), axis=(0, 1))
                for dy in range(cell) for dx in range(cell))
    # Per phase (the grid's origin modulo the cell) the cells' grid: [cell, cell, CELLS, CELLS].
    grids = boxed.reshape(CELLS, cell, CELLS, cell).transpose(1, 3, 0, 2)
    if cell == native_cell:
      native = grids[0, 0]
    selection = np.abs(_correlations(grids, masks_a)).sum(axis=-3)  # [cell, cell, CELLS, CELLS]
    index = np.unravel_index(int(np.argmax(selection)), selection.shape)
    if best is None or selection[index] > best[0]:
      phase_y, phase_x, roll_y, roll_x = (int(i) for i in index)
      best = (float(selection[index]), cell, phase_y, phase_x, roll_y, roll_x,
              grids[phase_y, phase_x])
  if best is None or native is None:
    raise ValueError(f"watermark.detect: frames of {height}x{width} are too small; need at "
                     f"least {8 * CELL_SIZES[0]} pixels on each side")
  _, cell, phase_y, phase_x, roll_y, roll_x, grid = best
  halves_a = _correlations(grid, masks_a)[:, roll_y, roll_x]
  halves_b = _correlations(grid, masks_b)[:, roll_y, roll_x]
  signs = np.sign(halves_a) * (halves_b != 0)
  norm = math.sqrt(float(np.sum(signs ** 2)))
  search_score = float(np.dot(signs, halves_b) / norm) if norm else 0.0
  search_p = 0.5 * math.erfc(search_score / math.sqrt(2.0))
  native_levels = _native_correlations(native, layout)
  native_p = _abs_sum_tail(native, layout, float(np.sum(np.abs(native_levels))))
  p_value = min(1.0, 2.0 * min(native_p, search_p))
  if native_p <= search_p:
    levels, cell, phase_y, phase_x, roll_y, roll_x = native_levels, native_cell, 0, 0, 0, 0
  else:
    # Both halves vote on each bit: the unnormalised sum over all its cells.
    levels = np.fft.irfft2(np.fft.rfft2(grid)[None] * np.conj(np.fft.rfft2(masks_a + masks_b)),
                           s=(CELLS, CELLS))[:, roll_y, roll_x]
  code = (levels > 0).astype(np.uint8)
  decoded = _decode(levels)
  # The grid starts at fold position phase + roll * cell: the crop's offset is minus that.
  tile = CELLS * cell
  offset = (-(phase_y + roll_y * cell) % tile, -(phase_x + roll_x * cell) % tile)
  watermarked = p_value < P_THRESHOLD
  return Detection(watermarked=watermarked, p_value=p_value,
                   score=float(np.clip(-special.ndtri(p_value), _MIN_SCORE, None)),
                   payload=decoded if watermarked else None,
                   bits=tuple(int(b) for b in code[:PAYLOAD_BITS]), cell=cell, offset=offset)
