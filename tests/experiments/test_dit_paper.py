"""experiments/dit_paper.py: the DiT paper's models, and their size and cost against its Table 4."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from videogen import experiment as experiment_lib
from videogen.evaluate import summary

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Peebles & Xie, "Scalable Diffusion Models with Transformers", Table 4: parameters (millions)
# and "Gflops" (one forward pass at 256x256, counted as multiply-adds) of the 12 models.
PAPER = {
    "s8": (33, 0.36), "s4": (33, 1.41), "s2": (33, 6.06),
    "b8": (131, 1.42), "b4": (130, 5.56), "b2": (130, 23.01),
    "l8": (459, 5.01), "l4": (458, 19.70), "l2": (458, 80.71),
    "xl8": (676, 7.39), "xl4": (675, 29.05), "xl2": (675, 118.64),
}


def _load_experiment_file():
  spec = importlib.util.spec_from_file_location("dit_paper", ROOT / "experiments" / "dit_paper.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def dit_paper():
  return _load_experiment_file()


def test_variants_are_the_twelve_paper_models(dit_paper):
  assert sorted(dit_paper.VARIANTS) == sorted(PAPER)
  with pytest.raises(ValueError, match="unknown DiT paper variant 'xl3'"):
    dit_paper.get_config("xl3")


@pytest.mark.parametrize("variant", sorted(PAPER))
def test_params_and_gmacs_match_the_paper(dit_paper, variant):
  experiment = experiment_lib.validate(dit_paper.get_config(variant))
  costs = summary.measure(experiment.dit, experiment.text_encoder, with_flops=False)
  totals = summary.totals(costs)
  paper_params, paper_gmacs = PAPER[variant]
  assert round(totals["params"] / 1e6) == paper_params
  # Our count is every matmul's multiply-adds, read from the traced program. The paper's counter
  # charges slightly differently beyond the matmuls (norms, the patch-embedding convolution), so
  # its figures sit within its last digit plus 0.02% of ours (at most 0.019 GMACs, for XL/2).
  assert abs(totals["gmacs"] - paper_gmacs) <= 0.005 + 2e-4 * paper_gmacs


def test_dit_xl2_exact_figures(dit_paper):
  experiment = experiment_lib.validate(dit_paper.get_config("xl2"))
  costs = {c.name: c for c in summary.measure(experiment.dit, experiment.text_encoder,
                                              with_flops=False)}
  # 1001 x 1152 label embedding (1000 classes + null), the rest in the transformer.
  assert costs["text_encoder"].params == 1_153_152
  assert costs["dit"].params + costs["text_encoder"].params == 674_834_720
  assert costs["dit"].macs == 118_621_421_568


def test_summary_command_prints_the_json_last(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "summary",
       "--config=experiments/dit_paper.py:s8"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  last = json.loads(result.stdout.strip().splitlines()[-1])
  assert last["params"] == 33_142_016
  assert last["gmacs"] == pytest.approx(0.357974, abs=1e-6)
  assert 2 * last["gmacs"] < last["gflops"] < 2.2 * last["gmacs"]
