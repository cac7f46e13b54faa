"""The study patches in docs/studies still apply to the code, so each study's commands still run.

A patch adds an option that was measured and left out of the code (docs/learning_curve.md says
which and why); a change to the lines it touches would otherwise leave it behind unnoticed.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATCHES = sorted((ROOT / "docs" / "studies").glob("*.patch"))


def test_there_are_patches_to_check():
  assert {p.name for p in PATCHES} >= {"motion_channels.patch", "mixed_noise.patch",
                                      "content_weights.patch", "autoguidance.patch",
                                      "edge_loss.patch", "scale_equivariance.patch",
                                      "stochastic_sampler.patch", "contrastive_flow.patch",
                                      "representation_alignment.patch",
                                      "latent_channel_scaling.patch", "guidance_interval.patch"}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_the_patch_applies_to_the_code(patch):
  result = subprocess.run(["git", "apply", "--check", str(patch)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, f"{patch.name} no longer applies: {result.stderr}"
