"""Per-channel mean and standard deviation of a workdir's cached clip latents, as the flags of
docs/studies/latent_channel_scaling.patch that scale every channel to a standard deviation of 2.

    python docs/studies/latent_channels.py runs/tiny

(docs/learning_curve.md, "Per-channel latent scaling").
"""
import os
import sys

import numpy as np

TARGET_STD = 2.0  # the tiny preset's scale_factor of 0.28 brings the latents' std of about 7 to 2

latents = np.load(os.path.join(sys.argv[1], "latent_cache", "bucket0_latents.npy"), mmap_mode="r")
channels = np.asarray(latents, np.float64).reshape(-1, latents.shape[-1])
mean, std = channels.mean(axis=0), channels.std(axis=0)
print("std per channel:", " ".join(f"{s:.2f}" for s in std))
shift = ", ".join(str(v) for v in np.round(mean, 3))
scale = ", ".join(str(v) for v in np.round(TARGET_STD / std, 4))
print(f"--config.autoencoder.channel_shift='({shift})'",
      f"--config.autoencoder.channel_scale='({scale})'")
