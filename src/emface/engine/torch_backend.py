"""The engine on a torch device (an NVIDIA GPU, or the CPU in tests).

The formulas are the shared array-API kernels of `emface.engine.kernels`; this
module only moves things: θ's per-iteration arrays to the device once per
plan, each chunk to the device in working units (one synchronous copy from
pinned host memory on CUDA), and the chunk's spectra, which stay cached on the
device while the budget allows. Correlations run in the plan's precision
(float32 by default on a GPU); summed-area tables, logits and sums are float64.

Optional: ``pip install 'emface[gpu]'``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import kernels

__all__ = ["device_plan", "to_device", "device_spectra", "peak_bandwidth_gbs"]


def _torch():
    import torch

    return torch


def device_plan(plan):
    """The plan's arrays as tensors on ``plan.device``, made once per plan."""
    torch = _torch()
    if plan.device_arrays is not None:
        return plan.device_arrays
    dev = torch.device(plan.device)
    cdt = torch.complex64 if plan.dtype == np.float32 else torch.complex128

    def f64(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float64), device=dev)

    arrs = SimpleNamespace(
        lam=f64(plan.lam),
        logA=f64(plan.logA),
        box_b2=f64(plan.box_b2),
        face_sq=f64(plan.face_sq),
        background=f64(plan.params.background),
        filters=torch.as_tensor(plan.filters, device=dev).to(cdt),
        faces_w=f64(plan.faces_w),
        idft_rows=None if plan.idft_rows is None else torch.as_tensor(plan.idft_rows, device=dev).to(cdt),
    )
    plan.device_arrays = arrs
    return arrs


def to_device(chunk, plan):
    """The chunk's raw block on the device, in working units and the plan's precision."""
    torch = _torch()
    dev = torch.device(plan.device)
    rdt = torch.float32 if plan.dtype == np.float32 else torch.float64
    x = torch.from_numpy(np.ascontiguousarray(chunk.data))
    x = x.pin_memory().to(dev) if dev.type == "cuda" else x.to(dev)
    x = x.permute(0, 3, 1, 2).contiguous()  # (n, Ch, H, W): channels first, as the kernels take them
    return (x.to(rdt) - chunk.offset) * chunk.inv_scale


def device_spectra(chunk, plan, x):
    """The chunk's spectra on the device, from the chunk's cache when kept there."""
    c = chunk.cache
    key = (str(plan.device), plan.dtype.name)
    if c.spectra is not None and c.key == key:
        return c.spectra
    sp = kernels.spectra(x)
    if plan.cache_spectra and c.keep_spectra:
        c.spectra, c.key = sp, key
    return sp


def peak_bandwidth_gbs(device="cuda"):  # pragma: no cover - GPU only
    """The card's theoretical memory bandwidth (GB/s), from its properties when torch reports them."""
    torch = _torch()
    props = torch.cuda.get_device_properties(device)
    clock = getattr(props, "memory_clock_rate", None)
    width = getattr(props, "memory_bus_width", None)
    if clock and width:
        return 2 * clock * 1e3 * width / 8 / 1e9
    name = props.name.lower()
    return 4800.0 if "h200" in name else (3350.0 if "h100" in name else math.nan)
