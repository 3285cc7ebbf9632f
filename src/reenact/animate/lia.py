"""LIA, the Latent Image Animator (Wang et al., ICLR 2022, arXiv 2203.09043).

The generator below has the same module tree, parameter names and shapes as the
official `networks.generator.Generator(size, style_dim, motion_dim,
channel_multiplier)`, so the released vox.pt / taichi.pt / ted.pt (`ckpt['gen']`)
load with strict=True. The arithmetic is the same too; only the way it is laid out
differs where that is exact:

* blurs are depthwise convolutions (the reference reshapes every channel into its
  own image), upsampling is a strided depthwise transposed convolution;
* a modulated convolution scales the input channels, convolves with the shared
  weight and scales the output channels (StyleGAN2's non-fused form), instead of
  one grouped convolution per sample, so a batch of frames is one ordinary conv;
* the flow grid is a buffer built once, not a numpy array moved with `.cuda()`.

`Animator` is the fast inference path: the source is encoded once (latent, skip
features, motion magnitudes), the direction basis Q is computed once, the five
linear layers of the motion network are folded into one affine map, all modulation
styles and demodulation factors of a frame come from two matrix products, and
driver frames go through in batches (channels_last, fp32 or bf16).

`LiaBackend` plugs the animator into the `reenact animate` pipeline.

Weights of the official model are CC BY-NC 4.0 (non-commercial use only).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reenact.animate.base import DriverFrame, SourceFace
from reenact.errors import ReenactError
from reenact.face.align import CropConfig
from reenact.files import atomic_write

log = logging.getLogger(__name__)

SQRT2 = math.sqrt(2)
BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


@dataclass(frozen=True)
class LiaConfig:
    """Generator hyper-parameters; the defaults are the released checkpoints'.

    `max_channels` caps every layer's width (512 in the paper); smaller values give
    the tiny models used in tests. The key names do not change with it.
    """

    size: int = 256
    style_dim: int = 512
    motion_dim: int = 20
    channel_multiplier: int = 1
    max_channels: int = 512

    def enc_channels(self, res: int) -> int:
        return min(self.max_channels, BASE_CHANNELS[res])

    def dec_channels(self, res: int) -> int:
        mult = self.channel_multiplier if res >= 64 else 1
        return min(self.max_channels, BASE_CHANNELS[res] * mult)


# ----------------------------------------------------------------------------- layers


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A (C, 1, kh, kw) depthwise weight; flipped, since upfirdn2d convolves."""
    return torch.flip(kernel, [0, 1]).to(like.dtype).expand(channels, 1, *kernel.shape).contiguous()


class Blur(nn.Module):
    """FIR low-pass filter with padding (pad0, pad1), as upfirdn2d(up=1, down=1)."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * upsample_factor**2
        self.register_buffer("kernel", kernel)
        self.pad = pad

    def forward(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        c = x.shape[1]
        p0, p1 = self.pad
        if p0 != p1:
            x, p0 = F.pad(x, [p0, p1, p0, p1]), 0
        return F.conv2d(x, depthwise(self.kernel, c, x), padding=p0, stride=stride, groups=c)


class Upsample(nn.Module):
    """2x FIR upsampling, as upfirdn2d(up=2, pad=(2, 1)) with a [1,3,3,1] kernel."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k = x.shape[1], self.kernel.shape[0]
        # zero insertion then correlation with the flipped kernel == transposed conv
        # with the kernel itself, cropped by k - 1 - pad0 on each side
        crop = k - 1 - self.pad[0]
        assert crop == k - 1 - (self.pad[1] + self.factor - 1), "asymmetric upsample padding"
        w = self.kernel.to(x.dtype).expand(c, 1, k, k).contiguous()
        return F.conv_transpose2d(x, w, stride=self.factor, padding=crop, groups=c)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    return F.leaky_relu(x + bias, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int, negative_slope: float = 0.2, scale: float = SQRT2):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channel, 1, 1))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class ScaledLeakyReLU(nn.Module):
    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)


class EqualConv2d(nn.Module):
    """Conv with equalized learning rate: weight ~ N(0, 1) scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, b) with forward(x) = x @ A.T + b (when there is no activation)."""
        bias = self.bias * self.lr_mul if self.bias is not None else torch.zeros_like(self.weight[:, 0])
        return self.weight * self.scale, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class ConvLayer(nn.Sequential):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU(0.2))
        super().__init__(*layers)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample and self[1].weight.shape[-1] == 1:
            # blur then a 1x1 stride-2 conv: only every other blurred pixel is used
            x = self[0](x, stride=2)
            conv = self[1]
            x = F.conv2d(x, conv.weight * conv.scale, bias=conv.bias)
            return self[2](x) if len(self) > 2 else x
        return super().forward(x)


class ResBlock(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


# ----------------------------------------------------------------------------- encoder


class EncoderApp(nn.Module):
    """Appearance encoder: image -> (latent z, skip features from 8 px up to `size` px)."""

    def __init__(self, cfg: LiaConfig):
        super().__init__()
        log_size = int(math.log2(cfg.size))
        self.convs = nn.ModuleList([ConvLayer(3, cfg.enc_channels(cfg.size), 1)])
        in_channel = cfg.enc_channels(cfg.size)
        for i in range(log_size, 2, -1):
            out_channel = cfg.enc_channels(2 ** (i - 1))
            self.convs.append(ResBlock(in_channel, out_channel))
            in_channel = out_channel
        self.convs.append(EqualConv2d(in_channel, cfg.style_dim, 4, padding=0, bias=False))

    def forward(self, x: torch.Tensor, features: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        res = []
        for conv in self.convs:
            x = conv(x)
            if features:
                res.append(x)
        return x.flatten(1), res[::-1][2:]


class Encoder(nn.Module):
    def __init__(self, cfg: LiaConfig):
        super().__init__()
        self.net_app = EncoderApp(cfg)
        dims = [cfg.style_dim] * 5 + [cfg.motion_dim]
        self.fc = nn.Sequential(*[EqualLinear(a, b) for a, b in zip(dims[:-1], dims[1:])])

    def enc_motion(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net_app(x, features=False)[0])

    def motion_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The five linear layers (no activations) folded into one map: alpha = z @ A.T + b."""
        a, b = None, None
        for layer in self.fc:
            w, c = (t.double() for t in layer.affine())
            a, b = (w, c) if a is None else (w @ a, w @ b + c)
        return a.float(), b.float()

    def forward(self, source: torch.Tensor, target: torch.Tensor | None, h_start: torch.Tensor | None = None):
        h_source, feats = self.net_app(source)
        if target is None:
            return h_source, None, feats
        h_motion_target = self.fc(self.net_app(target, features=False)[0])
        if h_start is not None:
            return h_source, [h_motion_target, self.fc(h_source), h_start], feats
        return h_source, [h_motion_target], feats


# ----------------------------------------------------------------------------- decoder


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def demod(self, style: torch.Tensor) -> torch.Tensor | None:
        """Per-sample output scaling: rsqrt(sum_i,k (scale w s)^2 + 1e-8), shape (B, out)."""
        if not self.demodulate:
            return None
        w2 = (self.scale * self.weight[0]).pow(2).sum([2, 3])  # (out, in)
        return torch.rsqrt(style.pow(2) @ w2.T + 1e-8)

    def conv(self, x: torch.Tensor, s: torch.Tensor, d: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        """conv(x, scale*w*s*d) computed as d * conv(x*s, scale*w); `weight` is scale*w (out, in, k, k)."""
        x = x * s[:, :, None, None]
        if self.upsample:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            if d is not None:
                x = x * d[:, :, None, None]  # before the blur: it is linear and per channel
            return self.blur(x)
        x = F.conv2d(x, weight, padding=self.padding)
        return x * d[:, :, None, None] if d is not None else x

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)
        return self.conv(x, s, self.demod(s), self.scale * self.weight[0])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return image if noise is None else image + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()  # in the checkpoints, never used (no noise is given)
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.activate(self.conv(x, style))


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, upsample: bool = True, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ConvLayer(in_channel, 3, 1)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x) + self.bias
        return out if skip is None else out + self.upsample(skip)


def identity_grid(size: int) -> torch.Tensor:
    """(1, size, size, 2) sampling grid, x then y, from -1 to 1 (np.linspace, as the reference)."""
    xs = np.stack(np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size)), 2)
    return torch.from_numpy(xs).float()[None]


def warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """grid_sample(feat, flow); a single source feature map serves a whole batch of flows."""
    if feat.shape[0] == flow.shape[0]:
        return F.grid_sample(feat, flow, align_corners=False)
    b, h, w, _ = flow.shape
    out = F.grid_sample(feat, flow.reshape(1, b * h, w, 2), align_corners=False)  # (1, C, B*H, W)
    return out.view(feat.shape[1], b, h, w).transpose(0, 1)


class ToFlow(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, size: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.register_buffer("grid", identity_grid(size), persistent=False)

    def warp_step(self, out: torch.Tensor, x: torch.Tensor, feat: torch.Tensor, skip: torch.Tensor | None):
        """Flow logits `out` (B, 3, H, W) -> (warped features, next decoder input, logits).

        The flow and the sampling run in the features' precision (fp32 when the animator runs in bf16:
        a bf16 sampling grid would be off by up to a pixel at 256 px).
        """
        out = out.to(feat.dtype) + self.bias.to(feat.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        flow = torch.tanh(out[:, 0:2]).permute(0, 2, 3, 1) + self.grid.to(feat.dtype)
        mask = torch.sigmoid(out[:, 2:3])
        feat_warp = warp(feat, flow) * mask
        feat_warp = feat_warp.to(x.dtype)
        return feat_warp, feat_warp + x * (1.0 - mask.to(x.dtype)), out

    def forward(self, x: torch.Tensor, style: torch.Tensor, feat: torch.Tensor, skip: torch.Tensor | None = None):
        return self.warp_step(self.conv(x, style), x, feat, skip)


class Direction(nn.Module):
    """Learned motion dictionary; its orthonormalised columns are the motion directions."""

    def __init__(self, style_dim: int, motion_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(style_dim, motion_dim))

    def basis(self) -> torch.Tensor:
        """Q of the QR decomposition of weight + 1e-8, exactly as the reference (Householder, LAPACK signs)."""
        return torch.linalg.qr(self.weight + 1e-8)[0]

    def forward(self, alpha: torch.Tensor | None) -> torch.Tensor:
        q = self.basis()
        return q if alpha is None else alpha @ q.T


class Synthesis(nn.Module):
    def __init__(self, cfg: LiaConfig, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.size, self.style_dim, self.motion_dim = cfg.size, cfg.style_dim, cfg.motion_dim
        self.direction = Direction(cfg.style_dim, cfg.motion_dim)
        c4 = cfg.dec_channels(4)
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, cfg.style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(c4, upsample=False)  # in the checkpoints, never used
        self.log_size = int(math.log2(cfg.size))
        self.convs, self.to_rgbs, self.to_flows = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        in_channel = c4
        for i in range(3, self.log_size + 1):
            out_channel = cfg.dec_channels(2**i)
            self.convs.append(StyledConv(in_channel, out_channel, 3, cfg.style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, cfg.style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel))
            self.to_flows.append(ToFlow(out_channel, cfg.style_dim, 2**i))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2

    def latent(self, wa: torch.Tensor, alpha: list[torch.Tensor] | None) -> torch.Tensor:
        if alpha is None:
            return wa
        if len(alpha) > 1:  # relative: z_s + D(a_target) - D(a_start) + D(a_source)
            return wa + (self.direction(alpha[0]) - self.direction(alpha[2])) + self.direction(alpha[1])
        return wa + self.direction(alpha[0])

    def forward(self, wa: torch.Tensor, alpha: list[torch.Tensor] | None, feats: list[torch.Tensor]):
        z = self.latent(wa, alpha)  # the 14 style vectors of the reference are all this one
        out = self.conv1(self.input(z.shape[0]), z)
        skip = skip_flow = None
        for conv1, conv2, to_rgb, to_flow, feat in zip(self.convs[::2], self.convs[1::2], self.to_rgbs,
                                                       self.to_flows, feats):
            out = conv2(conv1(out, z), z)
            out_warp, out, skip_flow = to_flow(out, z, feat, skip_flow)
            skip = to_rgb(out_warp, skip)
        return skip


class Generator(nn.Module):
    """LIA generator; `Generator(LiaConfig())` has the released checkpoints' keys and shapes."""

    def __init__(self, cfg: LiaConfig = LiaConfig()):
        super().__init__()
        self.cfg = cfg
        self.enc = Encoder(cfg)
        self.dec = Synthesis(cfg)

    def forward(self, img_source: torch.Tensor, img_drive: torch.Tensor | None,
                h_start: torch.Tensor | None = None) -> torch.Tensor:
        """The reference's forward: absolute motion, or relative when `h_start` (motion of the first frame) is given."""
        wa, alpha, feats = self.enc(img_source, img_drive, h_start)
        return self.dec(wa, alpha, feats)


# ----------------------------------------------------------------------------- weights


def deterministic_weights(cfg: LiaConfig = LiaConfig()) -> dict[str, torch.Tensor]:
    """A full state dict filled by a formula keyed by each tensor's name (for tests and demos).

    For a tensor named N of shape S: seed = first 8 bytes of sha256(N) read as a little-endian
    integer, masked to 63 bits; x = torch.randn(S, generator=torch.Generator().manual_seed(seed)).
    Weights (and `dec.input.input`, `dec.direction.weight`) are x (the equalized-lr layers scale
    them by 1/sqrt(fan_in) themselves), except the flow heads `dec.to_flows.*.conv.weight`, which
    are 0.1 x; modulation biases are 1 + 0.1 x; other biases 0.1 x; `noise.weight` is 0; the fixed
    blur `kernel` buffers keep their constructed values.

    Why 0.1 for the flow heads: a trained LIA warps by small displacements. With unit-variance
    flow heads the six chained warps amplify float32 rounding chaotically (the official code's
    own fp32 and fp64 outputs then differ by 2.5e-3); at 0.1 they differ by 5e-5.
    """
    state = Generator(cfg).state_dict()
    out = {}
    for name, ref in state.items():
        if name.endswith("kernel"):
            out[name] = ref.clone()
            continue
        seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & (2**63 - 1)
        x = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed))
        if name.endswith("noise.weight"):
            x = torch.zeros_like(x)
        elif name.startswith("dec.to_flows.") and name.endswith("conv.weight"):
            x = 0.1 * x
        elif name.endswith("modulation.bias"):
            x = 1 + 0.1 * x
        elif name.endswith("bias"):
            x = 0.1 * x
        out[name] = x
    return out


def _namespace_safe_load(path: Path) -> dict:
    # The official trainer pickles its argparse.Namespace under 'args'. Allow exactly that class
    # (plain attributes, no custom reduce) on top of torch's weights-only unpickler.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The generator weights in a checkpoint (.pt/.pth or .safetensors), and its training args if any."""
    path = Path(path)
    if not path.is_file():
        raise ReenactError("checkpoint not found", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: dict = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ReenactError(f"not a readable safetensors file (truncated or corrupt?): {exc}", path) from exc
    else:
        try:
            obj = _namespace_safe_load(path)
        except __import__("pickle").UnpicklingError as exc:
            raise ReenactError(
                "checkpoint holds Python objects that are not safe to load (only tensors, plain "
                f"containers and argparse.Namespace are accepted): {str(exc).splitlines()[0]}", path) from exc
        except Exception as exc:  # the unpickler raises anything on bytes that are not a checkpoint
            detail = (str(exc).splitlines() or [""])[0]
            raise ReenactError(f"cannot read checkpoint (truncated or not a PyTorch file?): "
                               f"{type(exc).__name__}{': ' + detail if detail else ''}", path) from exc
    if not isinstance(obj, dict):
        raise ReenactError(f"expected a dict of tensors, found {type(obj).__name__}", path)
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
    if "gen" in obj and isinstance(obj["gen"], dict):
        state = obj["gen"]
    elif any(k.startswith("gen.") for k in obj):
        state = {k[4:]: v for k, v in obj.items() if k.startswith("gen.")}
    else:
        state = obj
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if "dec.direction.weight" not in state or "enc.net_app.convs.0.0.weight" not in state:
        raise ReenactError("not a LIA generator checkpoint (no 'gen' weights with LIA's layer names)", path)
    return state, args


def infer_config(state: dict[str, torch.Tensor], args: dict | None = None) -> LiaConfig:
    """The generator configuration a state dict was made with."""
    args = args or {}
    direction = state["dec.direction.weight"]
    if direction.ndim != 2:
        raise ReenactError(f"not a LIA generator: weight dec.direction.weight has shape {tuple(direction.shape)}, "
                           "expected 2-D (style_dim, motion_dim)")
    style_dim, motion_dim = direction.shape
    n_flows = len({k.split(".")[2] for k in state if k.startswith("dec.to_flows.")})
    if not 4 <= n_flows + 2 <= 10:
        raise ReenactError(f"not a LIA generator: {n_flows} flow heads (dec.to_flows.*), expected 4 to 8")
    size = 2 ** (n_flows + 2)
    for name, ndim in (("dec.input.input", 4), (f"dec.to_rgbs.{n_flows - 1}.conv.0.weight", 4)):
        if name not in state or state[name].ndim != ndim:
            found = f"has shape {tuple(state[name].shape)}" if name in state else "is missing"
            raise ReenactError(f"not a LIA generator of size {size}: weight {name} {found}, expected {ndim}-D")
    c4 = state["dec.input.input"].shape[1]
    c_top = state[f"dec.to_rgbs.{n_flows - 1}.conv.0.weight"].shape[1]
    mult = int(args.get("channel_multiplier", max(1, c_top // BASE_CHANNELS.get(size, c_top))))
    return LiaConfig(size=size, style_dim=int(style_dim), motion_dim=int(motion_dim),
                     channel_multiplier=mult, max_channels=int(args.get("max_channels", c4)))


def load_generator(path: str | Path, cfg: LiaConfig | None = None) -> Generator:
    """A LIA generator with a checkpoint's weights (strict), or the deterministic ones for 'deterministic'."""
    if str(path) == "deterministic":
        cfg = cfg or LiaConfig()
        gen = Generator(cfg)
        gen.load_state_dict(deterministic_weights(cfg), strict=True)
        return gen.eval()
    state, args = read_state_dict(path)
    if cfg is None:
        try:
            inferred = infer_config(state, args)
        except ReenactError as exc:
            raise ReenactError(exc.message, path) from None
        # The sizes are read from a few tensors; when one of those is the damaged one, the released
        # layout of that size fits all the others, so the wrong-shape message names the right tensor.
        candidates = [inferred, replace(inferred, style_dim=LiaConfig.style_dim, motion_dim=LiaConfig.motion_dim)]
        fc = sorted(int(k.split(".")[2]) for k in state if re.fullmatch(r"enc\.fc\.\d+\.weight", k))
        if fc and state[f"enc.fc.{fc[0]}.weight"].ndim == 2 and state[f"enc.fc.{fc[-1]}.weight"].ndim == 2:
            candidates.append(replace(inferred, style_dim=int(state[f"enc.fc.{fc[0]}.weight"].shape[1]),
                                      motion_dim=int(state[f"enc.fc.{fc[-1]}.weight"].shape[0])))
    else:
        candidates = [cfg]
    best = None
    for candidate in candidates:
        try:
            with torch.device("meta"):  # shapes only, no memory
                shapes = {k: v.shape for k, v in Generator(candidate).state_dict().items()}
        except Exception as exc:  # noqa: BLE001 - sizes no generator can have (any error of the layers)
            if best is None and candidate is candidates[-1]:
                raise ReenactError(f"not a LIA generator: {candidate} cannot be built ({exc})", path) from None
            continue
        wrong = [k for k in shapes if k in state and state[k].shape != shapes[k]]
        if best is None or len(wrong) < len(best[2]):
            best = (candidate, shapes, wrong)
    cfg, shapes, wrong = best
    missing, unexpected = shapes.keys() - state.keys(), state.keys() - shapes.keys()
    if missing or unexpected:
        raise ReenactError(f"not a LIA generator of size {cfg.size}: {len(missing)} missing keys "
                           f"(e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected "
                           f"(e.g. {sorted(unexpected)[:2]})", path)
    if wrong:
        k = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ReenactError(f"weight {k} has shape {tuple(state[k].shape)}, expected {tuple(shapes[k])}{more}", path)
    gen = Generator(cfg)
    gen.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return gen.eval()


def atomic_save(obj: dict, path: str | Path) -> None:
    """torch.save (or safetensors save_file for .safetensors) into a temp file beside `path`, then rename."""
    path = Path(path)
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(obj, str(tmp))
        else:
            torch.save(obj, tmp)


def save_generator(gen: Generator, path: str | Path) -> None:
    """Write generator weights: .safetensors, or a torch file in the official layout {'gen', 'args'}."""
    state = {k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}
    if Path(path).suffix == ".safetensors":
        atomic_save(state, path)
    else:
        atomic_save({"gen": state, "args": argparse.Namespace(**asdict(gen.cfg))}, path)


# ----------------------------------------------------------------------------- fast inference


def _bake(gen: Generator) -> Generator:
    """Multiply the equalized-lr scales into the weights (inference copy only)."""
    for m in gen.modules():
        if isinstance(m, (EqualConv2d, EqualLinear)) and m.scale != 1:
            m.weight.data.mul_(m.scale)
            m.scale = 1.0
            if isinstance(m, EqualLinear) and m.bias is not None:
                m.bias.data.mul_(m.lr_mul)
                m.lr_mul = 1.0
    return gen


class Animator:
    """Batched LIA inference with the source encoded once.

    `set_source(img)` caches z_s, the skip features and alpha_s; `set_reference(img)` caches the
    reference motion (relative mode, None: absolute); `__call__(imgs)` animates a batch of driver
    images. Images are float tensors (B, 3, S, S) in [-1, 1]; outputs are the raw RGB (fp32).

    Exact rewrites that make it fast (besides caching and batching):
    * the scales of equalized-lr layers are multiplied into the weights once, and the sqrt(2)
      gains of the activations and the 1/sqrt(2) of the residual sums into the next weights;
    * a styled conv computes sqrt(2) d * lrelu(conv(s x) + b / d) instead of
      sqrt(2) lrelu(d conv(s x) + b): leaky ReLU is positively homogeneous and d > 0, so the
      per-sample factors (demodulation d, gain, next style) merge into one multiply per layer;
    * the flow heads (1x1, 3 outputs) are per-sample matrix products; the warp samples the one
      cached source feature map for the whole batch; elementwise work is done in place.
    """

    def __init__(self, gen: Generator, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 channels_last: bool = True):
        self.device, self.dtype = torch.device(device), dtype
        self.mf = torch.channels_last if channels_last else torch.contiguous_format
        with torch.no_grad():
            g = copy.deepcopy(gen).float().cpu().eval().requires_grad_(False)
            # motion map and direction basis in fp32 on the CPU, once (the same Q on every device)
            self.q = g.dec.direction.basis().detach().clone()
            self.motion_a, self.motion_b = (t.detach().clone() for t in g.enc.motion_affine())
            _bake(g)
            self._prepare_encoder(g.enc.net_app)
            self._prepare_decoder(g.dec)
        g.to(self.device, dtype=dtype)
        for f in g.dec.to_flows:  # the flow grid stays fp32
            f.grid = f.grid.float()
        self.gen = g
        self.q, self.motion_a, self.motion_b = (t.to(self.device) for t in (self.q, self.motion_a, self.motion_b))
        self.source = None
        self.base = None

    def _w(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach().to(self.device, self.dtype)
        return w.contiguous(memory_format=self.mf) if w.dim() == 4 else w.contiguous()

    def _prepare_encoder(self, net: EncoderApp) -> None:
        first, blocks, last = net.convs[0], net.convs[1:-1], net.convs[-1]
        self.e_first = (self._w(first[0].weight), self._w(first[1].bias.flatten()))
        self.e_blocks = []
        c = SQRT2  # the stored activations are the true ones divided by c
        for blk in blocks:
            self.e_blocks.append(dict(
                w1=self._w(blk.conv1[0].weight * c), b1=self._w(blk.conv1[1].bias.flatten()),
                blur=blk.conv2[0].to(self.device), w2=self._w(blk.conv2[1].weight * SQRT2),
                b2=self._w(blk.conv2[2].bias.flatten()), skip_blur=blk.skip[0].to(self.device),
                ws=self._w(blk.skip[1].weight * c / SQRT2)))
            c = 1.0
        self.e_last = self._w(last.weight)

    def _prepare_decoder(self, dec: Synthesis) -> None:
        styled = [dec.conv1] + list(dec.convs)
        mods = [m.conv for m in styled] + [f.conv for f in dec.to_flows]
        # every modulation of a frame in one matrix product; squared weights for demodulation
        self.mod_w = torch.cat([m.modulation.weight for m in mods]).float().to(self.device)
        self.mod_b = torch.cat([m.modulation.bias for m in mods]).float().to(self.device)
        self.splits = [m.in_channel for m in mods]
        self.w2 = [(m.conv.scale * m.conv.weight[0]).pow(2).sum([2, 3]).T.contiguous().to(self.device)
                   for m in styled]
        self.d_w = [self._w((m.conv.scale * m.conv.weight[0]).transpose(0, 1) if m.conv.upsample
                            else m.conv.scale * m.conv.weight[0]) for m in styled]
        self.d_bias = [m.activate.bias.flatten().float().to(self.device) for m in styled]
        self.d_blur = [m.conv.blur.to(self.device) if m.conv.upsample else None for m in styled]
        self.f_w = [(f.conv.scale * f.conv.weight[0, :, :, 0, 0]).float().to(self.device) for f in dec.to_flows]
        self.const = self._w(dec.input.input)

    def _image(self, img: torch.Tensor) -> torch.Tensor:
        return img.to(self.device, self.dtype).contiguous(memory_format=self.mf)

    @torch.inference_mode()
    def latents(self, imgs: torch.Tensor) -> torch.Tensor:
        """The appearance latents z (B, style_dim) of driver frames, fp32 (fast encoder, no features)."""
        w, b = self.e_first
        h = F.leaky_relu(F.conv2d(self._image(imgs), w, b), 0.2, inplace=True)
        for blk in self.e_blocks:
            h1 = F.leaky_relu(F.conv2d(h, blk["w1"], blk["b1"], padding=1), 0.2, inplace=True)
            a = F.leaky_relu(F.conv2d(blk["blur"](h1), blk["w2"], blk["b2"], stride=2), 0.2, inplace=True)
            # skip: blur then a 1x1 stride-2 conv, so the blur is only evaluated where it is read
            h = a.add_(F.conv2d(blk["skip_blur"](h, stride=2), blk["ws"]))
        return F.conv2d(h, self.e_last).flatten(1).float()

    def motion(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.motion_a.T + self.motion_b

    @torch.inference_mode()
    def set_source(self, img: torch.Tensor) -> None:
        z, feats = self.gen.enc.net_app(self._image(img[:1]))
        self.source = (z.float(), [f.float().contiguous(memory_format=torch.channels_last) for f in feats])
        self.alpha_source = self.motion(z.float())
        self.base = z.float()

    @torch.inference_mode()
    def set_reference(self, img: torch.Tensor | None) -> None:
        """Relative motion from this driver frame (None: absolute motion)."""
        z = self.source[0]
        if img is None:
            self.base = z
        else:
            alpha_start = self.motion(self.latents(img[:1]))
            self.base = z + (self.alpha_source - alpha_start) @ self.q.T

    @torch.inference_mode()
    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        z = self.base + self.motion(self.latents(imgs)) @ self.q.T  # (B, style_dim) fp32
        return self.decode(z)

    def _styled(self, k: int, h: torch.Tensor, scale: torch.Tensor, style: torch.Tensor) -> tuple:
        """Styled conv k on activations (true = scale * h): returns (h', scale') likewise."""
        d = torch.rsqrt(style.pow(2) @ self.w2[k] + 1e-8)  # (B, out) fp32, > 0
        x = h.mul_((style * scale).to(self.dtype)[:, :, None, None])
        if self.d_blur[k] is not None:
            x = self.d_blur[k](F.conv_transpose2d(x, self.d_w[k], stride=2))
        else:
            x = F.conv2d(x, self.d_w[k], padding=1)
        x = F.leaky_relu(x.add_((self.d_bias[k] / d).to(self.dtype)[:, :, None, None]), 0.2, inplace=True)
        return x, SQRT2 * d

    def _flow_step(self, to_flow: ToFlow, logits: torch.Tensor, x: torch.Tensor, feat: torch.Tensor,
                   skip: torch.Tensor | None) -> tuple:
        """ToFlow.warp_step, in place: flow and warp in fp32, x overwritten by the next input."""
        out = logits.float() + to_flow.bias.float()
        if skip is not None:
            out += to_flow.upsample(skip)
        flow = torch.tanh(out[:, 0:2]).permute(0, 2, 3, 1).add_(to_flow.grid)
        mask = torch.sigmoid(out[:, 2:3])
        feat_warp = warp(feat, flow).mul_(mask).to(self.dtype)
        x.mul_((1.0 - mask).to(self.dtype)).add_(feat_warp)
        return feat_warp, x, out

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        dec, feats = self.gen.dec, self.source[1]
        b = z.shape[0]
        styles = torch.split(z @ self.mod_w.T + self.mod_b, self.splits, dim=1)
        n = len(self.d_w)
        h = self.const.expand(b, -1, -1, -1).contiguous(memory_format=self.mf)
        h, m = self._styled(0, h, torch.ones_like(styles[0]), styles[0])
        skip = skip_flow = None
        for j, (to_rgb, to_flow, feat) in enumerate(zip(dec.to_rgbs, dec.to_flows, feats)):
            h, m = self._styled(1 + 2 * j, h, m, styles[1 + 2 * j])
            h, m = self._styled(2 + 2 * j, h, m, styles[2 + 2 * j])
            # flow head: 1x1 modulated conv (no demodulation) as per-sample matrix products
            wf = (self.f_w[j][None] * (styles[n + j] * m)[:, None, :]).to(self.dtype)  # (B, 3, C)
            _, c, hh, ww = h.shape
            hv = h.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
            logits = torch.bmm(hv, wf.transpose(1, 2)).view(b, hh, ww, 3).permute(0, 3, 1, 2)
            x = h.mul_(m.to(self.dtype)[:, :, None, None])  # the true activations
            out_warp, x, skip_flow = self._flow_step(to_flow, logits, x, feat, skip_flow)
            skip = to_rgb(out_warp, skip)
            h, m = x, torch.ones_like(m)
        return skip.float()


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [-1, 1] -> (B, S, S, 3) uint8, by clamping (x + 1) / 2."""
    x = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB -> (B, 3, S, S) float in [-1, 1], as the reference: (x/255 - 0.5) * 2."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)) if not isinstance(images, np.ndarray)
                                              else images))
    return (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) * 2.0


# ----------------------------------------------------------------------------- backend


class LiaBackend:
    """The LIA backend for `reenact animate --backend lia --checkpoint PATH_OR_NAME`."""

    name = "lia"
    needs_driver_images = True
    sizes = (256, 512)  # the published checkpoints are 256; a 512 model trained here works at 512
    crop = CropConfig()

    @classmethod
    def auto_size(cls, face_side: float, options: dict) -> int:
        return 256

    def __init__(self, size: int = 256, checkpoint: str | Path | None = None, motion: str = "relative",
                 dtype: str | torch.dtype = "float32", device: str | None = None, **unknown: object):
        from reenact.models import resolve_checkpoint

        if unknown:
            raise ReenactError(f"unknown LIA backend option(s): {', '.join(sorted(unknown))} (it takes checkpoint, "
                               "motion, dtype and device)")
        motion = "relative" if motion == "all" else motion  # --motion all: the whole motion, LIA's default mode
        if motion not in ("relative", "absolute"):
            raise ReenactError(f"--motion {motion!r}: LIA transfers the whole motion only; choose all (= relative) "
                               "or absolute (regions are for the landmark and liveportrait backends)")
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                     "bf16": torch.bfloat16}.get(dtype)
            if dtype is None:
                raise ReenactError("dtype must be float32 or bfloat16")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        ckpt = resolve_checkpoint(checkpoint or "vox")
        gen = load_generator(ckpt)
        if gen.cfg.size != size:
            raise ReenactError(f"this checkpoint works at {gen.cfg.size} px, not {size} (use --size "
                               f"{gen.cfg.size})", None if ckpt == "deterministic" else ckpt)
        self.size, self.motion = size, motion
        self.animator = Animator(gen, device=device, dtype=dtype)
        log.info("LIA: %s, %s motion, %s on %s", ckpt, motion, dtype, device)

    def paste_mask(self) -> None:
        return None  # the whole face may change: the pipeline's feathered, colour-matched mask

    def prepare(self, source: SourceFace, reference: DriverFrame) -> None:
        self.animator.set_source(to_tensor(source.image[None]))
        relative = self.motion == "relative" and reference is not None and reference.image is not None
        self.animator.set_reference(to_tensor(reference.image[None]) if relative else None)

    def animate(self, frames: Sequence[DriverFrame]) -> np.ndarray:
        if not frames:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return to_uint8(self.animator(to_tensor([f.image for f in frames])))
