"""The fixed vocabulary of the procedural world: every word a caption or a prompt may use.

The renderer draws with these colours, the captions name them, and the analyzer reads them back from
pixels, so all three agree by construction.
"""

from __future__ import annotations

import math

# colour name -> sRGB uint8. Chosen far apart in RGB so that the analyzer separates them exactly.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 235),
    "yellow": (240, 225, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 220, 225),
    "white": (250, 250, 250),
    "orange": (250, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
# background name -> sRGB uint8. Neither is close to any object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (110, 110, 110),
}
# direction name -> unit vector (dx, dy) in image coordinates: x to the right, y downwards.
_DIAGONAL = 1.0 / math.sqrt(2.0)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-_DIAGONAL, -_DIAGONAL),
    "up-right": (_DIAGONAL, -_DIAGONAL),
    "down-left": (-_DIAGONAL, _DIAGONAL),
    "down-right": (_DIAGONAL, _DIAGONAL),
}
STATIC = "static"
MOTIONS: tuple[str, ...] = tuple(DIRECTIONS) + (STATIC,)
EDGES: tuple[str, ...] = ("left", "right", "top", "bottom")
