"""The official GeoDTR training step, for the benchmarks that time it beside ours (``gpu_bench``,
``official_bench``). Imports PyTorch: run only by an interpreter that has it; the project never depends on it.

The model is ``GeoDTR.py`` of a checkout of the official code (``--reference``), built with random weights
(torchvision's ResNet-34 without its ImageNet download), trained as its ``train.py`` does: counterfactual
forward, soft-margin triplet loss (weight 10) + counterfactual loss, ``clip_grad_norm_`` 1.0, AdamW (lr 1e-4,
weight decay 0.03, eps 1e-6).

As a script (``official_bench``'s child): ``python _official_geodtr.py REFERENCE BATCHES.npz STEPS THREADS
[BREAKDOWN]`` prints one JSON line: first step seconds (from before ``import torch``), the median of STEPS
further steps, the losses, the peak RSS, and with BREAKDOWN 1 the median forward and forward + backward alone.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

REFERENCE_SIZE = (122, 671)  # the official layout extractor is sized for it (8 x 42 = 336 positions)


def official_step(ref_dir: str, batch: int, precision: str = "off", device: str = "cpu", seed: int = 0):
    """(step, set_batch): ``step()`` runs one training step on the current batch and returns its loss;
    ``set_batch(aerial, ground)`` (NCHW float32 tensors or arrays in [-1, 1]) sets the batch. Before any
    set_batch, a random batch of the paper size is used."""
    import torch
    import torchvision.models as tv

    torch.manual_seed(seed)
    original = tv.resnet34
    tv.resnet34 = lambda *a, **k: original(weights=None)  # the checkout asks for ImageNet weights: no download
    sys.path.insert(0, os.path.abspath(ref_dir))
    try:
        from GeoDTR import GeoDTR
        from utils import CFLoss, softMarginTripletLoss

        model = GeoDTR(n_des=8, tr_heads=4, tr_layers=2, dropout=0.3, d_hid=2048, is_polar=True)
    finally:
        sys.path.pop(0)
        tv.resnet34 = original
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.03, eps=1e-6)
    h, w = REFERENCE_SIZE
    g = torch.Generator().manual_seed(seed)
    current = {"sat": (torch.rand(batch, 3, h, w, generator=g) * 2 - 1).to(device),
               "grd": (torch.rand(batch, 3, h, w, generator=g) * 2 - 1).to(device)}
    use_bf16 = precision == "bfloat16"

    def set_batch(aerial, ground):
        current["sat"] = torch.as_tensor(aerial).to(device)
        current["grd"] = torch.as_tensor(ground).to(device)

    def step():
        opt.zero_grad()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            s, gr, fs, fg = model(current["sat"], current["grd"], True)
            loss = softMarginTripletLoss(sate_vecs=s, pano_vecs=gr, loss_weight=10.0)
            loss = loss + (CFLoss(s, fs) + CFLoss(gr, fg)) / 2.0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    def forward():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            s, gr, fs, fg = model(current["sat"], current["grd"], True)
            loss = softMarginTripletLoss(sate_vecs=s, pano_vecs=gr, loss_weight=10.0)
            return loss + (CFLoss(s, fs) + CFLoss(gr, fg)) / 2.0

    def forward_backward():
        opt.zero_grad()
        forward().backward()

    step.forward, step.forward_backward = forward, forward_backward  # the breakdown's parts (no update)
    return step, set_batch


def _child(ref_dir, batches_path, steps, threads, breakdown=False):
    t0 = time.perf_counter()  # the first step counts from here, before import torch (ours: before import keras)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    with np.load(batches_path) as z:
        aerial, ground = z["aerial"], z["ground"]  # (S, B, H, W, 3) NHWC, as the Keras side reads them
    step, set_batch = official_step(ref_dir, aerial.shape[1])
    losses, times = [], []
    for i in range(steps + 1):
        set_batch(np.ascontiguousarray(aerial[i % len(aerial)].transpose(0, 3, 1, 2)),
                  np.ascontiguousarray(ground[i % len(ground)].transpose(0, 3, 1, 2)))
        t = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - (t0 if i == 0 else t))
    out = {"side": "official", "first_step_s": times[0], "step_s": float(np.median(times[1:])),
           "steps": steps, "losses": losses, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "threads": threads}
    if breakdown:
        for name, fn in (("forward_s", step.forward), ("forward_backward_s", step.forward_backward)):
            fn()
            took = []
            for _ in range(steps):
                t = time.perf_counter()
                fn()
                took.append(time.perf_counter() - t)
            out[name] = float(np.median(took))
    return out


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                            len(sys.argv) > 5 and sys.argv[5] == "1")))
