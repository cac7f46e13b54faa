"""How much of the latents' spatial power is fine detail: per run, the share of each latent
frame's power (per channel, its spatial mean removed) at frequencies of a quarter cycle per
position or more, over the first 2,000 clips of the run's latent cache.

    python docs/studies/latent_spectrum.py runs/tiny runs/R ...
"""
import os
import sys

import numpy as np


def main(workdirs: list[str]) -> None:
  for workdir in workdirs:
    path = os.path.join(workdir, "latent_cache", "bucket0_latents.npy")
    if not os.path.exists(path):
      sys.exit(f"{workdir}/latent_cache/bucket0_latents.npy is missing: build the cache with "
               f"python -m videogen.main cache_latents --workdir={workdir} --config=...")
    x = np.load(path, mmap_mode="r")[:2000].astype(np.float32)  # [n, t, h, w, C]
    x = x - x.mean(axis=(2, 3), keepdims=True)
    power = np.abs(np.fft.fft2(x, axes=(2, 3))) ** 2
    fy = np.abs(np.fft.fftfreq(x.shape[2]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[3]))[None, :]
    fine = (np.maximum(fy, fx) >= 0.25)[None, None, :, :, None]
    share = (power * fine).sum() / power.sum()
    print(f"{workdir}: latents {x.shape}, std {x.std():.3f}, fine-detail power share {share:.3f}")


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit("usage: python docs/studies/latent_spectrum.py WORKDIR [WORKDIR ...]")
  main(sys.argv[1:])
