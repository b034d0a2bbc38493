"""AR, autoregressive perturbations (Sandoval-Segura et al. 2022).

Each class owns an autoregressive (AR) process: per channel, a 3×3 window slides over the image
in raster order and every new value is a fixed linear combination of the 8 values already
generated in its window (the two rows above and the two values to its left). Each training
image gets fresh noise from its class's process, started from Gaussian noise. A simple
convolution, the process's own filter with −1 at the generated position, maps its noise to
exactly zero and every other class's noise to something large, so a network can read the class
off the noise: that is the shortcut. Because noise is regenerated per image, it cannot be
memorised as one pattern.

Filter layout ([C, 3, 3] per class), as in the authors' code: entry [2, 2] is the value being
generated and is 0; the other 8 entries (rows 0–1, and row 2 columns 0–1) multiply values above
or to the left in raster order, so the filter is causal; the 8 taps of each channel sum to 1.

Filters come from a random search, deterministic from the seed (the authors publish fixed
coefficient files found by a similar search):
1. draw single-channel filters from N(0, 1), zero the [2, 2] entry and divide by their sum;
2. keep the stable ones: three noise fields of size (S+4)×(S+4) from Gaussian starts, with
   S = the image side clamped to [32, 64], cropped to S×S, must stay finite with a root mean
   square of at most 50/sqrt(3072) ≈ 0.90 (the original's bound of 50 on the L2 norm of a
   3×32×32 field, per value);
3. group stable filters C at a time into candidate processes (max(256, 4 × classes) of them);
4. score every ordered pair (i, j) by the original's response, the sum of ReLU(conv(noise_j,
   filter_i with −1 at [2, 2])) with noise_j scaled to L2 norm 1 (averaged over two fields of
   process j; the original uses one), and greedily pick the classes' processes so that the
   smallest response between any two picked processes (in either direction) is as large as
   possible (the original accepts processes in sampling order when that smallest response
   exceeds a fixed 10).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain, islice
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from harness.api import (
    BuildContext,
    DataBundle,
    DataError,
    Params,
    Poison,
    PoisonContext,
    PoisonRecord,
    clamp_to_range,
    hookimpl,
)

#: the original crops 4 rows and columns off an (H+4)×(W+4) field
CROP = 4
#: per-value form of the original's stability bound (L2 norm ≤ 50 on a 3×32×32 field)
STABLE_RMS = 50 / math.sqrt(3 * 32 * 32)
#: fields filled at once; bounds memory and keeps the per-pixel updates cache-sized
CHUNK = 4096
SEARCH_ROUND = 1024
SEARCH_TRIALS = 3
#: noise fields per candidate whose responses are averaged (one in the original)
RESPONSE_FIELDS = 2
MAX_SEARCH_ROUNDS = 200
#: the authors' smallest accepted response between processes (3×32×32 fields of L2 norm 1)
AUTHORS_THRESHOLD = 10.0
#: share of the responses between random stable 3×32×32 processes below AUTHORS_THRESHOLD
#: (0.843 and 0.849 over all pairs of 300 processes, two seeds); other shapes use this quantile
RESPONSE_QUANTILE = 0.845
#: stable candidates whose responses set the threshold on shapes other than 3×32×32
CALIBRATION = 64


class ARParams(Params):
    norm: float | None = Field(
        default=None,
        gt=0,
        description="size of every perturbation; None: L2 1.0·sqrt(C·H·W/3072) (1.0 on 3×32×32), "
        "or 8/255 for norm_type linf",
    )
    norm_type: Literal["l2", "linf"] = Field(
        default="l2", description="l2 (the reference) or linf (the paper's weaker variant)"
    )
    search: Literal["max-min", "sequential"] = Field(
        default="max-min",
        description="how the classes' processes are picked from random stable ones: max-min "
        "(greedy, the smallest response between picked processes as large as possible) or "
        "sequential (the authors' rule: accept in sampling order when the response of every "
        "accepted process's filter to the new process's noise is at least `threshold`)",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        description="sequential search: the smallest accepted response (fields of L2 norm 1); "
        "None: the authors' 10 on 3×32×32, and the same quantile of random processes' responses "
        "on other shapes",
    )
    candidates: int | None = Field(
        default=None,
        gt=0,
        description="max-min search: candidate processes the classes' processes are picked from; "
        "None: max(256, 4 × classes)",
    )


def ar_fill(coeffs: Tensor, field: Tensor) -> Tensor:
    """Run the AR recursion over `field` [B, C, H2, W2] in raster order, in place of its values.

    Every position with row ≥ 2 and column ≥ 2 is replaced by the sum of coeffs[b, c] ([B, C, 3, 3])
    times the 3×3 window ending at it (entry [2, 2], the position itself, must be 0); rows 0–1
    and columns 0–1 keep their start values. All fields and channels advance together; only the
    pixels are looped over. The two rows above are added for a whole row at once, leaving two
    multiply-adds per pixel in the sequential part.
    """
    s = field.permute(2, 3, 0, 1).contiguous()  # [H2, W2, B, C]: one pixel is a contiguous block
    b = coeffs.to(s.dtype).permute(2, 3, 0, 1).contiguous()  # [3, 3, B, C]
    h2, w2 = s.shape[:2]
    pre = torch.empty_like(s[0, 2:])
    with _single_thread():
        for i in range(2, h2):
            torch.mul(s[i - 2, 0 : w2 - 2], b[0, 0], out=pre)
            for a in range(2):
                for t in range(3):
                    if a or t:
                        pre.addcmul_(s[i - 2 + a, t : t + w2 - 2], b[a, t])
            row = s[i]
            for j in range(2, w2):
                out = row[j]
                torch.addcmul(pre[j - 2], b[2, 0], row[j - 2], out=out)
                out.addcmul_(b[2, 1], row[j - 1])
    return s.permute(2, 3, 0, 1)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread for the duration (restoring the previous count afterwards).

    The raster scan issues thousands of tiny, memory-bound operations; splitting each across
    threads costs more in synchronisation than it saves, and on a busy machine waiting for a
    descheduled worker thread made the scan 20× slower (measured on 2 shared cores).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ar_noise(coeffs: Tensor, height: int, width: int, generator: torch.Generator) -> Tensor:
    """Fresh AR noise [B, C, height, width] for per-field coefficients `coeffs` [B, C, 3, 3].

    Gaussian start of (height+4)×(width+4), recursion, crop of the first 4 rows and columns
    (which only hold start values or values computed from them), as in the original.
    """
    out = torch.empty((coeffs.shape[0], coeffs.shape[1], height, width))
    for start in range(0, coeffs.shape[0], CHUNK):
        part = coeffs[start : start + CHUNK]
        field = torch.randn(
            (part.shape[0], part.shape[1], height + CROP, width + CROP), generator=generator
        )
        out[start : start + CHUNK] = ar_fill(part, field)[:, :, CROP:, CROP:]
    return out


def residual_filters(coeffs: Tensor) -> Tensor:
    """The filter that maps a process's own noise to 0: its coefficients with −1 at [2, 2]."""
    f = coeffs.clone()
    f[..., 2, 2] = -1.0
    return f


def random_channel_filters(n: int, generator: torch.Generator) -> Tensor:
    """n single-channel causal filters [n, 3, 3]: N(0, 1) taps, [2, 2] = 0, taps summing to 1."""
    b = torch.randn((n, 3, 3), generator=generator, dtype=torch.float64)
    b[:, 2, 2] = 0
    return (b / b.sum(dim=(1, 2), keepdim=True)).to(torch.float32)


def _windows(x: Tensor) -> Tensor:
    """The 3×3 windows of x [B, C, H, W] as [B, C·9, (H−2)·(W−2)], in (channel, row, column) order.

    Same result as F.unfold(x, 3); built from nine shifted slices because unfold's im2col was
    slower by an order of magnitude on a busy 2-core machine.
    """
    h, w = x.shape[2] - 2, x.shape[3] - 2
    shifted = [x[:, :, a : a + h, b : b + w] for a in range(3) for b in range(3)]
    return torch.stack(shifted, dim=2).reshape(x.shape[0], x.shape[1] * 9, h * w)


def responses(filters: Tensor, signal: Tensor) -> Tensor:
    """The original's response of each residual filter [K, C, 3, 3] to each field [B, C, S, S].

    The sum of ReLU over the valid convolution's output, [B, K]; the original scales the field to
    L2 norm 1 first (the caller does).
    """
    return F.relu(F.conv2d(signal, filters)).sum(dim=(2, 3))


def stable_processes(
    channels: int, side: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Random stable C-channel processes in sampling order, each with its last trial field.

    Yields (filters [C, 3, 3], field [C, S, S] scaled to L2 norm 1). A process draws its C
    channel filters (N(0, 1) taps, [2, 2] = 0, each channel divided by its sum) and generates
    SEARCH_TRIALS fields of (S+4)×(S+4) cropped to S×S; it is stable when every field is finite
    with an L2 norm of at most 50 (on 3×32×32; the same per-value size on other sizes), the
    original's test. Channels never mix in the recursion, so a field's squared norm is the sum of
    its channels' and no channel of a stable process can exceed the bound alone: channels are
    drawn and tested one by one, the failing ones dropped, and the rest grouped C at a time in
    order before the joint test. That rejects exactly the processes the original rejects, from
    the same distribution, at a fraction of the cost.
    """
    bound = STABLE_RMS * math.sqrt(channels * side * side)
    for _ in range(MAX_SEARCH_ROUNDS):
        b = random_channel_filters(SEARCH_ROUND, generator)
        trials = b.repeat_interleave(SEARCH_TRIALS, dim=0)[:, None]  # [R·T, 1, 3, 3]
        noise = ar_noise(trials, side, side, generator).reshape(SEARCH_ROUND, SEARCH_TRIALS, -1)
        sq = noise.pow(2).sum(dim=2)  # [R, T]: squared norm of each channel's field
        ok = (torch.isfinite(sq) & (sq <= bound**2)).all(dim=1)
        kept = int(ok.sum()) // channels * channels
        b, sq = b[ok][:kept], sq[ok][:kept]
        last = noise[ok][:kept, -1].reshape(-1, channels, side, side)
        joint = sq.reshape(-1, channels, SEARCH_TRIALS).sum(dim=1)  # [P, T]
        for i in torch.nonzero((joint <= bound**2).all(dim=1)).flatten().tolist():
            field = last[i]
            yield b[i * channels : (i + 1) * channels], field / field.norm().clamp_min(1e-12)


def search_sequential(
    classes: int,
    channels: int,
    side: int,
    threshold: float | None,
    generator: torch.Generator,
    progress: Callable[[str, float], None] = lambda message, fraction: None,
) -> Tensor:
    """`classes` AR processes [classes, C, 3, 3] accepted in sampling order, as the authors did.

    Candidates come from `stable_processes`. The first is accepted; a later one is accepted when
    the residual filter of every accepted process responds to its last field (L2 norm 1) with
    at least `threshold`. None: the authors' 10 on 3×32×32; on other shapes, where responses
    are on another scale, the RESPONSE_QUANTILE quantile of the responses between the first
    CALIBRATION stable candidates (which then stay first in line).
    """
    stream = stable_processes(channels, side, generator)
    if threshold is None and (channels, side) == (3, 32):
        threshold = AUTHORS_THRESHOLD
    elif threshold is None:
        first = list(islice(stream, CALIBRATION))
        b = torch.stack([process for process, _ in first])
        r = responses(residual_filters(b), torch.stack([field for _, field in first]))
        threshold = float(r[~torch.eye(len(first), dtype=torch.bool)].quantile(RESPONSE_QUANTILE))
        stream = chain(first, stream)
    accepted: list[Tensor] = []
    for process, field in stream:
        if accepted:
            f = residual_filters(torch.stack(accepted))
            if float(responses(f, field[None]).min()) < threshold:
                continue
        accepted.append(process)
        progress("searching AR processes", 0.75 * len(accepted) / classes)
        if len(accepted) == classes:
            return torch.stack(accepted)
    raise RuntimeError(
        f"AR search accepted only {len(accepted)} of {classes} processes with response ≥ "
        f"{threshold:.3g} in {MAX_SEARCH_ROUNDS * SEARCH_ROUND} channel draws; lower the threshold"
    )


def search_processes(
    classes: int,
    channels: int,
    side: int,
    candidates: int,
    generator: torch.Generator,
    progress: Callable[[str, float], None] = lambda message, fraction: None,
) -> Tensor:
    """`classes` AR processes [classes, C, 3, 3] picked by the random search in the module doc."""
    needed = max(candidates, classes) * channels
    stable: list[Tensor] = []
    found = 0
    for _ in range(MAX_SEARCH_ROUNDS):
        b = random_channel_filters(SEARCH_ROUND, generator)
        trials = b.repeat_interleave(SEARCH_TRIALS, dim=0)[:, None]  # [R·T, 1, 3, 3]
        noise = ar_noise(trials, side, side, generator).reshape(SEARCH_ROUND, SEARCH_TRIALS, -1)
        rms = noise.pow(2).mean(dim=2).sqrt()
        ok = (torch.isfinite(rms) & (rms <= STABLE_RMS)).all(dim=1)
        stable.append(b[ok])
        found += int(ok.sum())
        progress("searching stable AR filters", min(found / needed, 1.0) * 0.5)
        if found >= needed:
            break
    else:
        raise RuntimeError(f"AR search found only {found} of {needed} stable filters")
    pool = torch.cat(stable)[:needed].reshape(-1, channels, 3, 3)  # [P, C, 3, 3]
    p = pool.shape[0]
    # response of every filter on noise of every candidate (L2-normalised), averaged over fields
    filters = residual_filters(pool).flatten(1)  # [P, C·9], (channel, row, col) as _windows
    response = torch.zeros((p, p))
    for _ in range(RESPONSE_FIELDS):
        signal = ar_noise(pool, side, side, generator)
        signal = signal / signal.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        patches = _windows(signal)  # [P, C·9, L]
        step = max(1, 2**24 // (p * patches.shape[2]))
        for i in range(0, p, step):
            out = torch.einsum("ik,jkl->ijl", filters[i : i + step], patches)
            response[i : i + step] += F.relu(out).sum(dim=2) / RESPONSE_FIELDS
    progress("picking distinguishable processes", 0.75)
    mutual = torch.minimum(response, response.T)
    picked = [0]
    closest = mutual[0].clone()  # smallest response of each candidate to the picked ones
    closest[0] = -1.0
    for _ in range(classes - 1):
        nxt = int(torch.argmax(closest))
        picked.append(nxt)
        closest = torch.minimum(closest, mutual[nxt])
        closest[picked] = -1.0
    return pool[picked]


class AR(Poison):
    """Sample-wise noise from one autoregressive process per class, fixed L2 (or L∞) size."""

    def __init__(self, params: ARParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        self._filters: dict[tuple, Tensor] = {}  # the search is the costly part; run it once

    def norm(self, data: DataBundle) -> float:
        if self.params.norm is not None:
            return self.params.norm
        if self.params.norm_type == "linf":
            return 8 / 255
        c, h, w = data.input_shape
        return math.sqrt(c * h * w / 3072)

    def filters(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        """The classes' processes [classes, C, 3, 3] (layout in the module doc)."""
        if not data.is_image or data.value_range is None:
            raise DataError(
                f"ar perturbs images; data set {data.name!r} has inputs of shape "
                f"{data.input_shape} and value range {data.value_range} (expected [C, H, W] pixels)"
            )
        c, h, w = data.input_shape
        side = min(max(h, w, 32), 64)
        k = data.num_classes
        key = (ctx.seed, k, c, side)
        if key not in self._filters:
            if self.params.search == "sequential":
                self._filters[key] = search_sequential(
                    k, c, side, self.params.threshold, ctx.generator(salt=31), ctx.progress
                )
            else:
                candidates = self.params.candidates or max(256, 4 * k)
                self._filters[key] = search_processes(
                    k, c, side, candidates, ctx.generator(salt=31), ctx.progress
                )
        return self._filters[key].clone()

    def perturbations(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        """δ for every training image, scaled to `norm` exactly (before any clipping)."""
        coeffs = self.filters(data, ctx)
        _, h, w = data.input_shape
        ctx.progress("generating AR noise", 0.8)
        noise = ar_noise(coeffs[data.train.y], h, w, ctx.generator(salt=32))
        flat = noise.flatten(1)
        size = flat.norm(dim=1) if self.params.norm_type == "l2" else flat.abs().amax(dim=1)
        if not bool(torch.isfinite(size).all()):
            raise RuntimeError("AR noise diverged; try another seed")
        ctx.progress("done", 1.0)
        return noise * (self.norm(data) / size.clamp_min(1e-12)).view(-1, 1, 1, 1)

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        return clamp_to_range(data.train.x + self.perturbations(data, ctx), data.value_range)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="ar",
            factory=AR,
            params=ARParams,
            description="autoregressive perturbations: fresh per-image noise from one causal AR process per class",
            paper="Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein, Jacobs: Autoregressive Perturbations for Data Poisoning, NeurIPS 2022",
            deviations=(
                "The processes are found by a seeded random search at run time instead of the "
                "authors' published coefficient files: by default a greedy max-min pick of the "
                "response between processes (stability per channel first); `search: sequential` "
                "uses the authors' rule (accept in sampling order when every response is at "
                "least 10), which bites harder: on 5,000 CIFAR-10 images a ResNet-18 w16 falls "
                "to chance with it and to 0.36 with max-min (clean 0.66); on 2,000 images "
                "neither, nor the published files, bites, even at 60 epochs (docs/ar.md).",
                "Stability is required of every channel (root mean square ≤ 50/sqrt(3072)), "
                "not of the 3-channel L2 norm ≤ 50, so channels can be searched independently; "
                "the search runs on fields of side clamped to [32, 64].",
                "The default L2 norm is scaled with the number of pixel values, "
                "1.0·sqrt(C·H·W/3072), which is the original 1.0 on 3×32×32.",
                "Images with other than 3 channels get one filter per channel, like the "
                "original's 3.",
            ),
        )
    ]
