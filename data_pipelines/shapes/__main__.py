"""`python -m data_pipelines.shapes --num 16 --out DIR`: see `data_pipelines.shapes.preview`."""

from __future__ import annotations

import sys

from data_pipelines.shapes import preview

if __name__ == "__main__":
  sys.exit(preview.main())
