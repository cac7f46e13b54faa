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
  * The pattern is added to R, G and B alike (luma, which yuv420p keeps at full resolution), with
    the largest amplitude whose PSNR meets `target_psnr` after dithered rounding and clipping
    (clipping on black backgrounds halves the error, so the amplitude rises there).
  * The detector takes luma and removes the host with a sigma filter (a local mean over the
    neighbours of similar value: the pattern averages out, the host's edges stay out), clips the
    residual, folds every frame and tile into one tile and sums each cell. It then searches every
    cell size and every cyclic shift of the grid (a crop moves the origin); per hypothesis each
    bit's normalised correlation sum_j s_j v_j / sqrt(sum_j v_j^2) over its cells' sums v_j and
    keyed signs s_j is N(0, 1) for a video without this watermark (exactly in mean and variance
    over random keys, since the signs are independent of the video).
  * Calibration with no multiplicity penalty: each bit's cells are split into two keyed halves,
    A and B. The search picks the hypothesis from the A halves only (the sum of |correlation|);
    the score is then z = sum_i sign(c_i^A) c_i^B / sqrt(bits) on the B halves, whose signs the
    search never saw, so z is N(0, 1) under the null however many hypotheses were searched, and
    `p_value` = P(N(0, 1) >= z). The bits are read from both halves at the chosen hypothesis; the
    payload is reported only when the video is watermarked (p < `P_THRESHOLD`) and its CRC holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
from scipy import ndimage

PAYLOAD_BYTES = 4  # the caller's payload: e.g. a checkpoint hash prefix and a generation counter
PAYLOAD_BITS = 8 * PAYLOAD_BYTES
CODE_BITS = PAYLOAD_BITS + 8  # payload + CRC-8
CELLS = 16  # cells per tile side: 256 cells, 6 or 7 per code bit
CELL_SIZES = (2, 4, 8)  # pixels per cell side; `cell_size` picks one by frame size
# Below this p-value a video counts as watermarked: the p-value is calibrated, so 1 false positive
# in 10000 unwatermarked videos is expected, and the "at most 1 in 1000" holds with margin.
P_THRESHOLD = 1e-4
DEFAULT_PSNR = 40.5  # dB of watermarked against original frames (the issue asks >= 40)
_MAX_AMPLITUDE = 12.0  # grey levels; only reached on nearly saturated videos
_CLIP_RESIDUAL = 3.0  # detector clips the residual at this many robust standard deviations
_DOMAIN = b"videogen-watermark-v1"


@dataclasses.dataclass(frozen=True)
class Detection:
  """What `detect` found in a video.

  Attributes:
    watermarked: p_value < P_THRESHOLD.
    p_value: probability that a video without this key's watermark scores at least `score`.
    score: the detection statistic, N(0, 1) for unwatermarked videos.
    payload: the PAYLOAD_BYTES embedded bytes when watermarked and their CRC-8 matches, else None.
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
  cells = (layout.signs * levels[layout.bit]).reshape(CELLS, CELLS)
  tile = np.kron(cells, np.ones((cell, cell))).astype(np.float32)  # [P, P], P = CELLS * cell
  reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]))
  return np.tile(tile, reps)[:height, :width]


def psnr(reference: np.ndarray, frames: np.ndarray) -> float:
  """dB of `frames` against `reference` (uint8 arrays of one shape); inf when equal."""
  mse = np.mean((reference.astype(np.float64) - frames.astype(np.float64)) ** 2)
  return float(10.0 * np.log10(255.0 ** 2 / mse)) if mse else math.inf


def embed(frames: np.ndarray, key: bytes, payload: bytes, *,
          target_psnr: float = DEFAULT_PSNR) -> np.ndarray:
  """Adds the keyed watermark carrying `payload` to a video.

  Args:
    frames: uint8 [T, H, W, 3]; apply before encoding (mp4, gif, png all carry it then).
    key: the secret watermark key, >= 16 bytes (see videogen.provenance.keys).
    payload: exactly PAYLOAD_BYTES bytes, the caller's choice.
    target_psnr: dB of the result against `frames`; the amplitude is the largest that meets it
      (higher: less visible, less robust).

  Returns:
    uint8 [T, H, W, 3], the watermarked frames.
  """
  frames = _check_frames(frames, "watermark.embed")
  _, height, width, _ = frames.shape
  wave = pattern(key, payload, height, width)[None, :, :, None]
  source = frames.astype(np.float32)
  # Rounding with a fixed dither keeps the mean change at amplitude * pattern for any amplitude,
  # so the PSNR budget is met exactly rather than in whole grey levels.
  dither = np.random.default_rng(0).random(frames.shape[1:], dtype=np.float32)
  limit = 255.0 ** 2 / 10.0 ** (target_psnr / 10.0)  # the largest mean squared error allowed

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


def _residual(frames: np.ndarray, cell: int) -> np.ndarray:
  """float32 [H, W]: every frame's luma minus its host estimate, clipped, summed over frames."""
  luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # [T, H, W]
  residual = luma - _host(luma, cell)
  # Clipping bounds what one pixel (a corner the filter missed) can add.
  bound = _CLIP_RESIDUAL * np.maximum(_robust_scale(residual), 0.5)
  return np.clip(residual, -bound, bound).sum(axis=0)


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


def detect(frames: np.ndarray, key: bytes) -> Detection:
  """Looks for the watermark of `key` in a video (any size, crop, length).

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
    selection = np.abs(_correlations(grids, masks_a)).sum(axis=-3)  # [cell, cell, CELLS, CELLS]
    index = np.unravel_index(int(np.argmax(selection)), selection.shape)
    if best is None or selection[index] > best[0]:
      phase_y, phase_x, roll_y, roll_x = (int(i) for i in index)
      best = (float(selection[index]), cell, phase_y, phase_x, roll_y, roll_x,
              grids[phase_y, phase_x])
  if best is None:
    raise ValueError(f"watermark.detect: frames of {height}x{width} are too small; need at "
                     f"least {8 * CELL_SIZES[0]} pixels on each side")
  _, cell, phase_y, phase_x, roll_y, roll_x, grid = best
  halves_a = _correlations(grid, masks_a)[:, roll_y, roll_x]
  halves_b = _correlations(grid, masks_b)[:, roll_y, roll_x]
  signs = np.sign(halves_a) * (halves_b != 0)
  norm = math.sqrt(float(np.sum(signs ** 2)))
  score = float(np.dot(signs, halves_b) / norm) if norm else 0.0
  p_value = 0.5 * math.erfc(score / math.sqrt(2.0))
  # Both halves vote on each bit: the unnormalised sum over all its cells.
  levels = np.fft.irfft2(np.fft.rfft2(grid)[None] * np.conj(np.fft.rfft2(masks_a + masks_b)),
                         s=(CELLS, CELLS))[:, roll_y, roll_x]
  code = (levels > 0).astype(np.uint8)
  payload = np.packbits(code[:PAYLOAD_BITS]).tobytes()
  # The grid starts at fold position phase + roll * cell: the crop's offset is minus that.
  tile = CELLS * cell
  offset = (-(phase_y + roll_y * cell) % tile, -(phase_x + roll_x * cell) % tile)
  watermarked = p_value < P_THRESHOLD
  crc_ok = _crc8(payload) == int(np.packbits(code[PAYLOAD_BITS:])[0])
  return Detection(watermarked=watermarked, p_value=p_value, score=score,
                   payload=payload if watermarked and crc_ok else None,
                   bits=tuple(int(b) for b in code[:PAYLOAD_BITS]), cell=cell, offset=offset)
