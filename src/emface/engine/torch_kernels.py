"""The engine's chunk kernels in PyTorch, for NVIDIA GPUs (and the CPU, for tests).

The same computation as `kernels` (numpy) and `_numba_kernels`: spectra, the
pruned inverse FFT for ``x ⋆ F``, box sums from summed-area tables, logits,
the posterior in the log domain, and the M-step sums N, S_F (crops for hard
EM, the frequency domain for soft EM) and XC. Correlations run in the plan's
precision (float32 by default on the GPU); summed-area tables, logits and all
sums are float64.

Chunks that do not fit in device memory stream from host memory: the raw
block is copied into a pinned buffer and sent with ``non_blocking=True`` on a
side stream, so the next block's copy overlaps this block's compute. Spectra
are cached on the device while they fit the budget.

Optional: ``pip install 'emface[gpu]'``.
"""

from __future__ import annotations

import math

import numpy as np

from .stats import _finish_stats

__all__ = ["chunk_stats_torch", "device_plan", "TorchChunkCache"]


def _torch():
    import torch

    return torch


class TorchChunkCache:
    """Per-chunk device state: the spectra (when kept) and the constants."""

    def __init__(self):
        self.spectra = None
        self.sq = None


def device_plan(plan, device):
    """Move what the E-step needs from a `Plan` to the device once per iteration."""
    torch = _torch()
    key = ("torch", str(device))
    cached = getattr(plan, "_device_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    rdt = torch.float32 if plan.dtype == np.float32 else torch.float64
    H, W = plan.image_shape
    p = plan.params
    d = dict(
        rdt=rdt,
        cdt=torch.complex64 if rdt == torch.float32 else torch.complex128,
        logA=torch.as_tensor(plan.logA, device=device, dtype=torch.float64),
        box_b2=torch.as_tensor(plan.box_b2, device=device, dtype=torch.float64),
        B=torch.as_tensor(p.background, device=device, dtype=torch.float64),
        F=torch.as_tensor(p.face, device=device, dtype=rdt),
        fhat_conj=torch.conj(torch.fft.rfft2(torch.as_tensor(p.face, device=device, dtype=rdt), s=(H, W))),
    )
    plan._device_cache = (key, d)
    return d


def _to_device(chunk, device, rdt):
    """The chunk's raw block on the device in working units (pinned, non-blocking copy)."""
    torch = _torch()
    x = torch.from_numpy(np.ascontiguousarray(chunk.data))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    return (x.to(rdt) - chunk.offset) * chunk.inv_scale


def _sat(z):
    torch = _torch()
    s = torch.cumsum(torch.cumsum(z.to(torch.float64), dim=-2), dim=-1)
    return torch.nn.functional.pad(s, (1, 0, 1, 0))


def _box(z, h, w):
    s = _sat(z)
    return s[..., h:, w:] - s[..., :-h, w:] - s[..., h:, :-w] + s[..., :-h, :-w]


def _coverage(q, h, w):
    torch = _torch()
    P, Q = q.shape[-2:]
    H, W = P + h - 1, Q + w - 1
    s = _sat(q)
    dev = q.device
    rows = torch.arange(H, device=dev)
    cols = torch.arange(W, device=dev)
    r_hi = torch.clamp(rows, max=P - 1) + 1
    r_lo = torch.clamp(rows - h + 1, min=0)
    c_hi = torch.clamp(cols, max=Q - 1) + 1
    c_lo = torch.clamp(cols - w + 1, min=0)

    def g(r, c):
        return s[..., r[:, None], c[None, :]]

    return g(r_hi, c_hi) - g(r_lo, c_hi) - g(r_hi, c_lo) + g(r_lo, c_lo)


def _correlate(xhat, fhat_conj, P, Q, W):
    torch = _torch()
    y = xhat * fhat_conj
    z = torch.fft.ifft(y, dim=-2)[..., :P, :]
    return torch.fft.irfft(z, n=W, dim=-1)[..., :Q]


def chunk_stats_torch(chunk, plan, device, output=None):
    """E-step and M-step sums of one chunk on a torch device; returns (Stats, out or None)."""
    torch = _torch()
    device = torch.device(device)
    d = device_plan(plan, device)
    P, Q = plan.grid_shape
    H, W = plan.image_shape
    h, w = plan.face_shape
    n = chunk.n
    cache = chunk.cache
    tc = getattr(cache, "torch", None)
    if tc is None:
        tc = TorchChunkCache()
        cache.torch = tc
    x = _to_device(chunk, device, d["rdt"])
    if tc.spectra is not None and tc.spectra.dtype == d["cdt"]:
        xhat = tc.spectra
    else:
        xhat = torch.fft.rfft2(x)
        if plan.cache_spectra and cache.keep_spectra:
            tc.spectra = xhat
    if cache.SX is None:
        x64 = x.to(torch.float64)
        cache.sq = (x64 * x64).sum(dim=(1, 2)).cpu().numpy()
        cache.SX = x64.sum(dim=0).cpu().numpy()
        cache.SXX = float(cache.sq.sum())
    corr = _correlate(xhat, d["fhat_conj"], P, Q, W).to(torch.float64)
    x64 = x.to(torch.float64)
    B = d["B"]
    xb = _box(x64 * B, h, w)
    L = plan.face_sq - 2.0 * corr + 2.0 * xb - d["box_b2"]
    logits = torch.where(torch.isinf(d["logA"]), d["logA"].expand_as(L), d["logA"] - L * plan.inv2s2)
    resid = x64 - B
    base = plan.log_const - (resid * resid).sum(dim=(1, 2)) * plan.inv2s2
    flat = logits.reshape(n, -1)
    mx, arg = flat.max(dim=1)
    if output == "log_joint":
        out = (logits + base[:, None, None]).cpu().numpy()
        ll = (mx + base).cpu().numpy()
        nanv = np.full(n, np.nan)
        argn = arg.cpu().numpy()
        stats = _finish_stats(chunk, plan, np.zeros((P, Q)), np.zeros((h, w)), None, np.zeros((H, W)), ll, argn,
                              nanv, nanv)
        return stats, out
    if plan.hard:
        q = torch.zeros_like(flat)
        q[torch.arange(n, device=device), arg] = 1.0
        q = q.reshape(n, P, Q)
        ll = mx + base
        maxp = torch.ones(n, dtype=torch.float64, device=device)
        ent = torch.zeros(n, dtype=torch.float64, device=device)
        rows, cols = arg // Q, arg % Q
        ai = torch.arange(h, device=device)
        bj = torch.arange(w, device=device)
        crops = x64[torch.arange(n, device=device)[:, None, None], rows[:, None, None] + ai[None, :, None],
                    cols[:, None, None] + bj[None, None, :]]
        S_F = crops.sum(dim=0).cpu().numpy()
        S_F_hat = None
    else:
        lse = torch.logsumexp(flat, dim=1)
        qf = torch.exp(flat - lse[:, None])
        pos = qf > 0
        ent = torch.clamp(lse - torch.where(pos, qf * torch.where(pos, flat, torch.zeros_like(flat)),
                                            torch.zeros_like(flat)).sum(dim=1), min=0.0)
        maxp = qf.max(dim=1).values
        ll = lse + base
        q = qf.reshape(n, P, Q)
        qhat = torch.fft.rfft2(q.to(d["rdt"]), s=(H, W))
        S_F_hat = (xhat * torch.conj(qhat)).to(torch.complex128).sum(dim=0).cpu().numpy()
        S_F = np.zeros((h, w))
    N = q.sum(dim=0).cpu().numpy()
    XC = (x64 * _coverage(q, h, w)).sum(dim=0).cpu().numpy()
    stats = _finish_stats(chunk, plan, N, S_F, S_F_hat, XC, ll.cpu().numpy(), arg.cpu().numpy(),
                          maxp.cpu().numpy(), ent.cpu().numpy())
    return stats, (q.cpu().numpy() if output == "q" else None)


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
