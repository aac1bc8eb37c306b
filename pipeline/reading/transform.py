"""Normalise and augment whole uint8 batches on the device they are on."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class DeviceTransform:
    """uint8 NHWC batch on the device -> normalised float NCHW, augmented.

    Augmentation is one ``affine_grid`` + ``grid_sample`` for the whole batch:
    a random horizontal flip, a random zoom-in of 1.0-1.15x (a small random
    resized crop) and a shift of up to 8% of the side, reflection-padded.
    Its random numbers come from a CPU generator seeded once, so a run is
    reproducible and the state can be checkpointed.

    Progressive resizing: with ``train_size`` set below the stored side,
    training batches (``augment=True``) are first downsampled to it with an
    antialiased bilinear resize (one pass over the whole batch), then
    augmented at that size; validation batches stay at the stored side.

    Args:
        mean, std: per-channel statistics in [0, 1] (from the manifest).
        device: where batches live.
        channels_last: keep the NHWC memory layout (faster convs on CUDA).
        seed: seeds the augmentation generator.
        augment: what ``augment=True`` applies: ``"flip-crop"`` (the above),
            None (nothing), or a callable on the normalised float NCHW batch
            that returns the augmented batch.
    """

    def __init__(self, mean, std, device="cpu", channels_last: bool = False, seed: int = 0,
                 augment="flip-crop") -> None:
        if not (augment in (None, "none", "flip-crop") or callable(augment)):
            raise ValueError(f"augment must be 'flip-crop', None or a callable, got {augment!r}")
        self.policy = None if augment == "none" else augment
        device = torch.device(device)
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        # x * scale - shift == (x / 255 - mean) / std, one fused pass
        self.scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        self.shift = (mean / std).view(1, 3, 1, 1).to(device)
        self.channels_last = channels_last
        self.generator = torch.Generator().manual_seed(seed)
        self.train_size: Optional[int] = None  # side of training batches (None: as stored); the trainer sets it

    def __call__(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last for free
        x = x.float() if self.channels_last else x.contiguous().float()
        x = x.mul_(self.scale).sub_(self.shift)
        if augment and self.train_size and self.train_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(self.train_size, self.train_size), mode="bilinear",
                                                antialias=True, align_corners=False)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        if augment and self.policy is not None:
            x = self._augment(x) if self.policy == "flip-crop" else self.policy(x)
        return x

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = self.generator
        flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        zoom = 1.0 / (1.0 + 0.15 * torch.rand(n, generator=g))  # sample 87-100% of the side
        shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 0.16   # +-8% of the side ([-1, 1] is 2 wide)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = zoom * flip
        theta[:, 1, 1] = zoom
        theta[:, :, 2] = shift
        theta = (theta.pin_memory() if x.device.type == "cuda" else theta).to(x.device, non_blocking=True)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection",
                                              align_corners=False)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
