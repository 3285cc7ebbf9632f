"""LivePortrait (Guo et al. 2024, arXiv 2407.03168; KwaiVGI/LivePortrait, MIT).

Implicit 3-D keypoints drive a warp of a 3-D appearance volume, which a SPADE decoder
renders at 512 px. The networks below have the official module trees, parameter names
and shapes (`src/modules/*.py`, `src/config/models.yaml`), so the official weights folder

    base_models/appearance_feature_extractor.pth   F: image -> 32x16x64x64 feature volume
    base_models/motion_extractor.pth               M: ConvNeXt-V2 tiny -> keypoints, pose, expression
    base_models/warping_module.pth                 W: dense motion + warp of the volume
    base_models/spade_generator.pth                G: SPADE decoder, 256 -> 512 px
    retargeting_models/stitching_retargeting_module.pth
        {'retarget_shoulder', 'retarget_mouth', 'retarget_eye'}: stitching, lip and eye MLPs
        (their keys carry DDP's `module.` prefix)

loads strictly with `torch.load(weights_only=True)`. The arithmetic follows the official
code; where it is laid out differently the result is the same to float rounding:

* spectral normalisation is evaluated as the official eval-mode forward does (stored u, v,
  no power iteration), once at load time for the fast path;
* `Animator` caches everything of the source (feature volume, keypoints, rotation, lip
  normalisation) and of the reference frame, runs driver frames in batches, and does the
  per-frame motion arithmetic of `LivePortraitPipeline.execute` on whole batches.

`LivePortraitBackend` plugs it into `reenact animate --backend liveportrait`.
"""

from __future__ import annotations

import logging
import math
import pickle
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reenact.animate.base import DriverFrame, SourceFace
from reenact.animate.regions import normalize_region
from reenact.errors import ReenactError
from reenact.face.align import CropConfig, crop_mask
from reenact.files import atomic_write
from reenact.models import resolve_liveportrait

log = logging.getLogger(__name__)

NUM_KP = 21
NUM_BINS = 66
# Expression keypoints the official animation_region modes copy from the driver.
LIP_KP = [6, 12, 14, 17, 19, 20]
EYE_KP = [11, 13, 15, 16, 18]
REGIONS = ("all", "exp", "pose", "lip", "eyes")
OFFICIAL_REGION = {"all": "all", "expression": "exp", "pose": "pose", "lips": "lip", "eyes": "eyes"}  # CLI -> official
LIP_NORMALIZE_THRESHOLD = 0.03


# ----------------------------------------------------------------------------- blocks (src/modules/util.py)


class SameBlock2d(nn.Module):
    def __init__(self, cin: int, cout: int, lrelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.lrelu = lrelu

    def forward(self, x):
        x = self.norm(self.conv(x))
        return F.leaky_relu(x) if self.lrelu else F.relu(x)


class DownBlock2d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class ResBlock3d(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, padding=1)
        self.conv2 = nn.Conv3d(c, c, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(c)
        self.norm2 = nn.BatchNorm3d(c)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(out))) + x


class DownBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout)

    def forward(self, x):
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm3d(cout)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=(1, 2, 2))
        return F.relu(self.norm(self.conv(x)))


class HourglassEncoder(nn.Module):
    def __init__(self, expansion: int, cin: int, blocks: int, max_features: int):
        super().__init__()
        ch = lambda i: min(max_features, expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(
            DownBlock3d(cin if i == 0 else ch(i), ch(i + 1)) for i in range(blocks))

    def forward(self, x):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, expansion: int, cin: int, blocks: int, max_features: int):
        super().__init__()
        ch = lambda i: min(max_features, expansion * 2 ** i)  # noqa: E731
        self.up_blocks = nn.ModuleList(
            UpBlock3d((1 if i == blocks - 1 else 2) * ch(i + 1), ch(i)) for i in reversed(range(blocks)))
        self.out_filters = expansion + cin
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips):
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    def __init__(self, expansion: int, cin: int, blocks: int, max_features: int):
        super().__init__()
        self.encoder = HourglassEncoder(expansion, cin, blocks, max_features)
        self.decoder = HourglassDecoder(expansion, cin, blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


class SNConv2d(nn.Module):
    """A conv under `torch.nn.utils.spectral_norm`, as its eval-mode forward computes it.

    State-dict keys are spectral_norm's: weight_orig, bias, weight_u, weight_v. The weight is
    weight_orig / sigma with sigma = u . (W v) from the stored vectors (no power iteration).
    """

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.empty(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.register_buffer("weight_u", torch.ones(cout))
        self.register_buffer("weight_v", torch.ones(cin * k * k))
        self.padding = padding
        self.baked: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        if self.baked is not None:
            return self.baked
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def forward(self, x):
        return F.conv2d(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype),
                        padding=self.padding)


def _phase_taps(p: int, f: int) -> list[tuple[int, list[int]]]:
    """For output phase p of an f-times nearest upsampling read by a 3-tap kernel: (input offset, kernel taps)."""
    groups: dict[int, list[int]] = {}
    for d in (-1, 0, 1):
        groups.setdefault((p + d) // f, []).append(d + 1)
    return sorted(groups.items())


def upsampled_conv3x3(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, f: int) -> torch.Tensor:
    """conv2d(interpolate(x, scale_factor=f, mode='nearest'), w, b, padding=1) for a 3x3 `w`, computed at x's
    resolution: each of the f*f output phases is a small conv of x whose taps are w's taps summed where they
    read the same input pixel (2.25 instead of 9 taps per output pixel at f = 4, 4 at f = 2)."""
    bsz, _, h, wd = x.shape
    out = x.new_empty(bsz, w.shape[0], h * f, wd * f)
    xp = F.pad(x, (1, 1, 1, 1))
    for py in range(f):
        rows = _phase_taps(py, f)
        kr = torch.stack([w[:, :, taps].sum(2) for _, taps in rows], 2)  # (O, I, len(rows), 3)
        r0, r1 = rows[0][0], rows[-1][0]
        for px in range(f):
            cols = _phase_taps(px, f)
            k = torch.stack([kr[..., taps].sum(3) for _, taps in cols], 3)
            c0, c1 = cols[0][0], cols[-1][0]
            window = xp[:, :, 1 + r0:1 + h + r1, 1 + c0:1 + wd + c1]
            out[:, :, py::f, px::f] = F.conv2d(window, k, b)
    return out


class SPADE(nn.Module):
    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x, seg, actv: torch.Tensor | None = None):
        """`actv`: mlp_shared(seg at x's size), when the caller computed it already."""
        normalized = F.instance_norm(x)
        if actv is None:
            if seg.shape[2:] != x.shape[2:]:
                seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
            actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        self.conv_0 = SNConv2d(fin, fmid, 3, padding=1)
        self.conv_1 = SNConv2d(fmid, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SNConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmid, label_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc)

    def norms(self) -> list[SPADE]:
        return [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])

    def forward(self, x, seg, actv: Sequence[torch.Tensor] | None = None):
        """`actv`: the mlp_shared outputs of norm_0, norm_1 (, norm_s), when the caller computed them already."""
        a0, a1, a_s = (list(actv) + [None])[:3] if actv is not None else (None, None, None)
        x_s = self.conv_s(self.norm_s(x, seg, a_s)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg, a0), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg, a1), 0.2))
        return x_s + dx


# ----------------------------------------------------------------------------- F: appearance feature extractor


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, image_channel=3, block_expansion=64, num_down_blocks=2, max_features=512,
                 reshape_channel=32, reshape_depth=16, num_resblocks=6):
        super().__init__()
        self.reshape_channel, self.reshape_depth = reshape_channel, reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        ch = lambda i: min(max_features, block_expansion * 2 ** i)  # noqa: E731
        self.down_blocks = nn.ModuleList(DownBlock2d(ch(i), ch(i + 1)) for i in range(num_down_blocks))
        self.second = nn.Conv2d(ch(num_down_blocks), max_features, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, x):  # (B, 3, 256, 256) in [0, 1] -> (B, 32, 16, 64, 64)
        out = self.first(x)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        return self.resblocks_3d(out.view(b, self.reshape_channel, self.reshape_depth, h, w))


# ----------------------------------------------------------------------------- M: motion extractor (ConvNeXt-V2)


class LayerNorm(nn.Module):
    """ConvNeXt's LayerNorm; channels_first normalises over dim 1 by hand, as the official one."""

    def __init__(self, dim: int, eps: float = 1e-6, channels_first: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps, self.channels_first = eps, channels_first

    def forward(self, x):
        if not self.channels_first:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, in_chans=3, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_kp=NUM_KP,
                 num_bins=NUM_BINS):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm(dims[0], channels_first=True))]
            + [nn.Sequential(LayerNorm(dims[i], channels_first=True), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
               for i in range(3)])
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtBlock(dims[i]) for _ in range(depths[i])])
                                    for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.fc_kp = nn.Linear(dims[-1], 3 * num_kp)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], num_bins)
        self.fc_yaw = nn.Linear(dims[-1], num_bins)
        self.fc_roll = nn.Linear(dims[-1], num_bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], 3 * num_kp)

    def forward(self, x) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean([-2, -1]))
        return {"pitch": self.fc_pitch(x), "yaw": self.fc_yaw(x), "roll": self.fc_roll(x), "t": self.fc_t(x),
                "exp": self.fc_exp(x), "scale": self.fc_scale(x), "kp": self.fc_kp(x)}


class MotionExtractor(nn.Module):
    def __init__(self, num_kp: int = NUM_KP, backbone: str = "convnextv2_tiny"):
        super().__init__()
        self.detector = ConvNeXtV2(num_kp=num_kp)

    def forward(self, x):
        return self.detector(x)


# ----------------------------------------------------------------------------- W: warping module


def make_coordinate_grid(d: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(d, h, w, 3) grid of (x, y, z) in [-1, 1], as the official one (right, down, in)."""
    lin = lambda n: 2 * (torch.arange(n, dtype=like.dtype, device=like.device) / (n - 1)) - 1  # noqa: E731
    z, y, x = torch.meshgrid(lin(d), lin(h), lin(w), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def kp2gaussian(kp: torch.Tensor, grid: torch.Tensor, variance: float = 0.01) -> torch.Tensor:
    """(B, K, 3) keypoints -> (B, K, d, h, w) Gaussians on the grid."""
    diff = grid[None, None] - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / variance)


class DenseMotionNetwork(nn.Module):
    def __init__(self, block_expansion=32, num_blocks=5, max_features=1024, num_kp=NUM_KP, feature_channel=32,
                 reshape_depth=16, compress=4, estimate_occlusion_map=True):
        super().__init__()
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, 7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, 1)
        self.norm = nn.BatchNorm3d(compress)
        self.num_kp = num_kp
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1, 7, padding=3)
                          if estimate_occlusion_map else None)

    def forward(self, feature, kp_driving, kp_source) -> dict[str, torch.Tensor]:
        feature = F.relu(self.norm(self.compress(feature)))
        b, c, d, h, w = feature.shape
        k = self.num_kp
        grid = make_coordinate_grid(d, h, w, kp_source)
        # sparse motions: identity (background) plus one translation per keypoint
        sparse = grid[None, None] - kp_driving[:, :, None, None, None, :] + kp_source[:, :, None, None, None, :]
        sparse = torch.cat([grid[None, None].expand(b, 1, d, h, w, 3), sparse], dim=1)  # (B, K+1, d, h, w, 3)
        feat = feature[:, None].expand(b, k + 1, c, d, h, w).reshape(b * (k + 1), c, d, h, w)
        deformed = F.grid_sample(feat, sparse.reshape(b * (k + 1), d, h, w, 3), align_corners=False)
        deformed = deformed.view(b, k + 1, c, d, h, w)
        heat = kp2gaussian(kp_driving, grid) - kp2gaussian(kp_source, grid)
        heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], dim=1)[:, :, None]
        x = torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w)
        prediction = self.hourglass(x)
        mask = F.softmax(self.mask(prediction), dim=1)  # (B, K+1, d, h, w)
        deformation = (sparse.permute(0, 1, 5, 2, 3, 4) * mask[:, :, None]).sum(dim=1).permute(0, 2, 3, 4, 1)
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return out


class WarpingNetwork(nn.Module):
    def __init__(self, num_kp=NUM_KP, block_expansion=64, max_features=512, num_down_blocks=2, reshape_channel=32,
                 estimate_occlusion_map=True, dense_motion_params: dict | None = None):
        super().__init__()
        params = dict(block_expansion=32, max_features=1024, num_blocks=5, reshape_depth=16, compress=4)
        params.update(dense_motion_params or {})
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, feature_channel=reshape_channel,
                                                       estimate_occlusion_map=estimate_occlusion_map, **params)
        c = block_expansion * 2 ** num_down_blocks
        self.third = SameBlock2d(max_features, c, lrelu=True)
        self.fourth = nn.Conv2d(c, c, 1)

    def forward(self, feature_3d, kp_driving, kp_source) -> dict[str, torch.Tensor]:
        dense = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        out = F.grid_sample(feature_3d, dense["deformation"].to(feature_3d.dtype), align_corners=False)
        b, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(b, c * d, h, w)))
        occlusion = dense.get("occlusion_map")
        if occlusion is not None:
            out = out * occlusion
        return {"occlusion_map": occlusion, "deformation": dense["deformation"], "out": out}


# ----------------------------------------------------------------------------- G: SPADE generator


class SPADEDecoder(nn.Module):
    def __init__(self, upscale=2, max_features=512, block_expansion=64, out_channels=64, num_down_blocks=2):
        super().__init__()
        c = min(max_features, block_expansion * 2 ** num_down_blocks)  # 256
        self.fc = nn.Conv2d(c, 2 * c, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * c, 2 * c, c))
        self.up_0 = SPADEResnetBlock(2 * c, c, c)
        self.up_1 = SPADEResnetBlock(c, out_channels, c)
        self.upscale = upscale
        if upscale is None or upscale <= 1:
            self.conv_img = nn.Conv2d(out_channels, 3, 3, padding=1)
        else:
            self.conv_img = nn.Sequential(nn.Conv2d(out_channels, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, feature):  # (B, 256, 64, 64) -> (B, 3, 512, 512) in [0, 1]
        seg = feature
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2), seg)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))

    def blocks(self) -> list[tuple[SPADEResnetBlock, int]]:
        """(block, upsampling of seg it reads at) in order."""
        return [(getattr(self, f"G_middle_{i}"), 1) for i in range(6)] + [(self.up_0, 2), (self.up_1, 4)]

    def fast_forward(self, feature: torch.Tensor) -> torch.Tensor:
        """The same as forward, faster: the SPADE layers' mlp_shared convs depend on the warped feature only,
        so those reading the same resolution run as one conv, and at 128 and 256 px they are computed at 64 px
        by `upsampled_conv3x3` instead of on a nearest-upsampled copy (about 100 of 890 GFLOP saved)."""
        if not hasattr(self, "_shared"):
            groups: dict[int, list[SPADE]] = {}
            for block, f in self.blocks():
                groups.setdefault(f, []).extend(block.norms())
            self._shared = {f: (torch.cat([n.mlp_shared[0].weight for n in ns]).detach(),
                                torch.cat([n.mlp_shared[0].bias for n in ns]).detach(), len(ns))
                            for f, ns in groups.items()}
        seg = feature
        actv = {}
        for f, (w, b, n) in self._shared.items():
            w, b = w.to(seg.dtype), b.to(seg.dtype)
            a = F.conv2d(seg, w, b, padding=1) if f == 1 else upsampled_conv3x3(seg, w, b, f)
            actv[f] = list(torch.chunk(F.relu_(a), n, dim=1))
        x = self.fc(feature)
        for block, f in self.blocks():
            mine = [actv[f].pop(0) for _ in block.norms()]
            if f > 1:
                x = F.interpolate(x, scale_factor=2)
            x = block(x, seg, mine)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))


# ----------------------------------------------------------------------------- S, R: stitching and retargeting


class StitchingRetargetingNetwork(nn.Module):
    def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i, h in enumerate(hidden_sizes):
            layers += [nn.Linear(input_size if i == 0 else hidden_sizes[i - 1], h), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(hidden_sizes[-1], output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


STITCHING = dict(input_size=126, hidden_sizes=[128, 128, 64], output_size=65)
LIP = dict(input_size=65, hidden_sizes=[128, 128, 64], output_size=63)
EYE = dict(input_size=66, hidden_sizes=[256, 256, 128, 128, 64], output_size=63)


# ----------------------------------------------------------------------------- the model and its files

BASE_FILES = {
    "appearance_feature_extractor": "base_models/appearance_feature_extractor.pth",
    "motion_extractor": "base_models/motion_extractor.pth",
    "warping_module": "base_models/warping_module.pth",
    "spade_generator": "base_models/spade_generator.pth",
}
RETARGETING_FILE = "retargeting_models/stitching_retargeting_module.pth"
RETARGETING_KEYS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


class LivePortrait(nn.Module):
    """F, M, W, G and the three MLPs under the names the official wrapper gives them."""

    def __init__(self):
        super().__init__()
        self.appearance_feature_extractor = AppearanceFeatureExtractor()
        self.motion_extractor = MotionExtractor()
        self.warping_module = WarpingNetwork()
        self.spade_generator = SPADEDecoder()
        self.stitching = StitchingRetargetingNetwork(**STITCHING)
        self.lip = StitchingRetargetingNetwork(**LIP)
        self.eye = StitchingRetargetingNetwork(**EYE)

    def parts(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in list(BASE_FILES) + list(RETARGETING_KEYS)}


def deterministic_value(name: str, shape: Sequence[int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """The test-weight formula, keyed by a tensor's state-dict name (`part.key`, e.g.
    `spade_generator.G_middle_0.conv_0.weight_orig`; the MLPs are `stitching.*`, `lip.*`, `eye.*`).

    x = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))), then by
    the name's ending:
    * conv / linear `weight` or `weight_orig` (2+ dims): x / sqrt(fan_in) (fan_in = numel / shape[0]),
      except the motion extractor's heads `fc_*`: 0.1 x / sqrt(fan_in); the eye and lip MLP's, and
      the stitching MLP's last layer: 0.1 x / sqrt(fan_in);
    * `bias`: 0.02 x, except `motion_extractor.detector.fc_scale.bias`: 1 + 0.02 x (a positive scale);
    * norm `weight` (1 dim; BatchNorm, LayerNorm): 1 + 0.1 x; BatchNorm `running_mean`: 0.1 x;
      `running_var`: 1 + 0.1 |x|; `num_batches_tracked`: 0;
    * GRN `gamma`, `beta`: 0.1 x;
    * spectral norm `weight_v`: v = W^T u0 / |W^T u0| with u0 = x of the name `...weight_u`, and
      `weight_u`: W v / |W v|, W being the layer's weight_orig reshaped to (out, -1) (one power
      iteration, so sigma = u.(W v) is close to the top singular value and the weight stays sane).
    """
    shape = tuple(shape)
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if name.endswith(("weight_u", "weight_v")):
        assert weight is not None
        w = weight.reshape(weight.shape[0], -1)
        base = name.rsplit(".", 1)[0]
        u0 = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(zlib.crc32(f"{base}.weight_u".encode())))
        v = F.normalize(w.T @ u0, dim=0, eps=1e-12)
        return v if name.endswith("weight_v") else F.normalize(w @ v, dim=0, eps=1e-12)
    x = torch.randn(shape, generator=g)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("weight", "weight_orig") and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        small = (".fc_" in name and name.startswith("motion_extractor")) or name.startswith(("lip.", "eye.")) \
            or name.startswith("stitching.mlp.6")
        return x * ((0.1 if small else 1.0) / math.sqrt(fan_in))
    if leaf == "bias":
        return 1 + 0.02 * x if name == "motion_extractor.detector.fc_scale.bias" else 0.02 * x
    if leaf == "weight":
        return 1 + 0.1 * x
    if leaf == "running_mean":
        return 0.1 * x
    if leaf == "running_var":
        return 1 + 0.1 * x.abs()
    if leaf in ("gamma", "beta"):
        return 0.1 * x
    raise ValueError(f"no formula for {name}")


def fill_deterministic(model: LivePortrait) -> LivePortrait:
    """Set every tensor of `model` by `deterministic_value` (in place); returns the model."""
    with torch.no_grad():
        for part, module in model.parts().items():
            state = module.state_dict()
            for key, t in state.items():
                if key.endswith(("weight_u", "weight_v")):
                    continue
                t.copy_(deterministic_value(f"{part}.{key}", t.shape))
            for key, t in state.items():
                if key.endswith(("weight_u", "weight_v")):
                    w = state[key.rsplit(".", 1)[0] + ".weight_orig"]
                    t.copy_(deterministic_value(f"{part}.{key}", t.shape, w))
    return model


def save_folder(model: LivePortrait, folder: str | Path) -> Path:
    """Write the official layout (base_models/*.pth, retargeting_models/...pth with `module.` keys), each file
    atomically (a temporary file, then renamed)."""
    folder = Path(folder)
    files = {rel: getattr(model, part).state_dict() for part, rel in BASE_FILES.items()}
    files[RETARGETING_FILE] = {key: {f"module.{k}": v for k, v in getattr(model, part).state_dict().items()}
                               for part, key in RETARGETING_KEYS.items()}
    for rel, obj in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / rel) as tmp:
            torch.save(obj, tmp)
    return folder


def _safe_load(path: Path) -> dict:
    if not path.is_file():
        raise ReenactError("missing from the LivePortrait weights folder (expected the official layout: "
                           f"{', '.join(BASE_FILES.values())}, {RETARGETING_FILE})", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ReenactError("holds Python objects that are not safe to load (only tensors and plain containers "
                           f"are accepted): {(str(exc).splitlines() or [''])[0]}", path) from exc
    except Exception as exc:  # the unpickler raises anything on bytes that are not a checkpoint
        raise ReenactError(f"cannot read (truncated or not a PyTorch file?): {type(exc).__name__}", path) from exc
    if not isinstance(obj, dict):
        raise ReenactError(f"expected a dict of tensors, found {type(obj).__name__}", path)
    return obj


def _load_part(module: nn.Module, state: dict, path: Path, what: str) -> None:
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = module.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    if missing or unexpected:
        raise ReenactError(f"not the official {what}: {len(missing)} missing keys (e.g. {sorted(missing)[:2]}), "
                           f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})", path)
    for k, v in own.items():
        if state[k].shape != v.shape:
            raise ReenactError(f"{what}: tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}",
                               path)
    module.load_state_dict({k: v if v.dtype == torch.long else v.float() for k, v in state.items()}, strict=True)


def load_folder(folder: str | Path) -> LivePortrait:
    """The model from an official weights folder (strict, weights_only), or test weights for 'deterministic'."""
    model = LivePortrait()
    if str(folder) == "deterministic":
        return fill_deterministic(model).eval()
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ReenactError("LivePortrait weights: expected a folder holding base_models/ and retargeting_models/ "
                           "(the official pretrained_weights/liveportrait)", folder)
    for part, rel in BASE_FILES.items():
        _load_part(getattr(model, part), _safe_load(folder / rel), folder / rel, part)
    path = folder / RETARGETING_FILE
    obj = _safe_load(path)
    for part, key in RETARGETING_KEYS.items():
        if not isinstance(obj.get(key), dict):
            raise ReenactError(f"no '{key}' weights (expected {', '.join(RETARGETING_KEYS.values())})", path)
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj[key].items()}
        _load_part(getattr(model, part), state, path, f"{key} MLP")
    return model.eval()


# ----------------------------------------------------------------------------- keypoint geometry (utils/camera.py)


def headpose_pred_to_degree(pred: torch.Tensor) -> torch.Tensor:
    """66 bins -> degrees: the softmax expectation * 3 - 97.5."""
    idx = torch.arange(NUM_BINS, dtype=pred.dtype, device=pred.device)
    return (F.softmax(pred, dim=1) * idx).sum(dim=1) * 3 - 97.5


def get_rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees (B,) or (B, 1) -> (B, 3, 3), transposed (R^T) as the official code returns it."""
    x, y, z = (a.reshape(-1, 1) / 180 * np.pi for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    b = x.shape[0]
    rot_x = torch.cat([one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos()], 1).view(b, 3, 3)
    rot_y = torch.cat([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], 1).view(b, 3, 3)
    rot_z = torch.cat([z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one], 1).view(b, 3, 3)
    return (rot_z @ rot_y @ rot_x).permute(0, 2, 1)


@dataclass
class KpInfo:
    """Motion-extractor output, refined: pose in degrees, keypoints and expression (B, 21, 3)."""

    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    exp: torch.Tensor
    scale: torch.Tensor
    kp: torch.Tensor

    @property
    def rotation(self) -> torch.Tensor:
        return get_rotation_matrix(self.pitch, self.yaw, self.roll)

    def __getitem__(self, i) -> "KpInfo":
        return KpInfo(**{k: getattr(self, k)[i] for k in self.__dataclass_fields__})


def kp_info(raw: dict[str, torch.Tensor]) -> KpInfo:
    """As `LivePortraitWrapper.get_kp_info(flag_refine_info=True)`."""
    raw = {k: v.float() for k, v in raw.items()}
    b = raw["kp"].shape[0]
    return KpInfo(pitch=headpose_pred_to_degree(raw["pitch"])[:, None],
                  yaw=headpose_pred_to_degree(raw["yaw"])[:, None],
                  roll=headpose_pred_to_degree(raw["roll"])[:, None], t=raw["t"],
                  exp=raw["exp"].reshape(b, -1, 3), scale=raw["scale"], kp=raw["kp"].reshape(b, -1, 3))


def transform_keypoint(info: KpInfo) -> torch.Tensor:
    """x = s (x_c R + exp) + (tx, ty, 0)."""
    x = (info.kp @ info.rotation + info.exp) * info.scale[..., None]
    x[:, :, 0:2] += info.t[:, None, 0:2]
    return x


# ----------------------------------------------------------------------------- eye and lip ratios


def eye_close_ratio(lm: np.ndarray) -> np.ndarray:
    """(2,) openness of the image-left and image-right eye from 68-point landmarks: lid gap / eye width.

    The official code measures the same ratio on its 203-point layout (points 6/18 over 0/12, 30/42
    over 24/36); here the lids' midpoints are the means of points 37, 38 and 41, 40 (43, 44 and 47, 46).
    """
    lm = np.asarray(lm, np.float64)

    def one(top, bottom, c0, c1):
        gap = np.linalg.norm(lm[top].mean(0) - lm[bottom].mean(0))
        return gap / (np.linalg.norm(lm[c0] - lm[c1]) + 1e-6)

    return np.array([one([37, 38], [41, 40], 36, 39), one([43, 44], [47, 46], 42, 45)], np.float32)


def lip_close_ratio(lm: np.ndarray) -> float:
    """Mouth openness from 68-point landmarks: inner-lip gap (62, 66) / mouth width (48, 54); the official
    code measures it on its 203-point layout (90/102 over 48/66)."""
    lm = np.asarray(lm, np.float64)
    return float(np.linalg.norm(lm[62] - lm[66]) / (np.linalg.norm(lm[48] - lm[54]) + 1e-6))


# ----------------------------------------------------------------------------- temporal smoothing (utils/filter.py)


class KalmanSmoother:
    """The official `smooth()`: pykalman's KalmanFilter with identity dynamics, transition covariance
    q I, observation covariance r I, initial mean = the first observation, initial covariance I, then
    the Rauch-Tung-Striebel smoother. All covariances are multiples of I, so every dimension shares
    one scalar gain and the filter is a few lines.

    Streaming: the forward pass carries its state from block to block; `smooth(block)` runs the
    backward pass over that block only (the official code runs it over the whole clip at once; the
    two agree exactly when the block is the whole clip).
    """

    def __init__(self, observation_variance: float = 3e-7, process_variance: float = 1e-5):
        self.r, self.q = observation_variance, process_variance
        self.mean: np.ndarray | None = None
        self.var = 1.0  # initial_state_covariance = I

    def smooth(self, obs: np.ndarray) -> np.ndarray:
        """(T, D) observations in time order -> (T, D) smoothed states."""
        obs = np.asarray(obs, np.float64)
        n = obs.shape[0]
        xf, pf, pp = np.empty_like(obs), np.empty(n), np.empty(n)
        for i in range(n):
            if self.mean is None:  # t = 0: the prediction is the initial state itself
                pred, p_pred = obs[0].copy(), self.var
            else:
                pred, p_pred = self.mean, self.var + self.q
            k = p_pred / (p_pred + self.r)
            xf[i] = pred + k * (obs[i] - pred)
            pf[i], pp[i] = (1 - k) * p_pred, p_pred
            self.mean, self.var = xf[i], pf[i]
        xs = xf.copy()
        for i in range(n - 2, -1, -1):
            c = pf[i] / pp[i + 1]
            xs[i] = xf[i] + c * (xs[i + 1] - xf[i])  # xf[i] is also the prediction of i + 1
        return xs


# ----------------------------------------------------------------------------- motion (live_portrait_pipeline.py)


@dataclass(frozen=True)
class MotionOptions:
    """The official inference options that shape the driving keypoints (defaults: the official ones)."""

    region: str = "all"  # animation_region: all, exp, pose, lip, eyes
    stitching: bool = True  # flag_stitching
    eye_retargeting: bool = False  # flag_eye_retargeting
    lip_retargeting: bool = False  # flag_lip_retargeting
    normalize_lip: bool = True  # flag_normalize_lip: close the source's mouth first
    multiplier: float = 1.0  # driving_multiplier
    smooth: float = 0.0  # >0: Kalman smoothing with this observation variance (official default 3e-7)


def relative_motion(src: KpInfo, ref: KpInfo, drv: KpInfo, region: str) -> dict[str, torch.Tensor]:
    """The official relative motion (image source, video driver) for a batch of driver frames.

    R = R_d R_ref^T R_s, exp = exp_s + (exp_d - exp_ref), s = s_s s_d / s_ref, t = t_s + (t_d - t_ref), t_z = 0,
    each only where `region` animates it (else the source's own).
    """
    b = drv.kp.shape[0]
    exp_rel = src.exp + (drv.exp - ref.exp)
    delta = src.exp.expand(b, -1, -1).clone()
    if region in ("all", "exp"):
        delta = exp_rel
    elif region == "lip":
        delta[:, LIP_KP] = exp_rel[:, LIP_KP]
    elif region == "eyes":
        delta[:, EYE_KP] = exp_rel[:, EYE_KP]
    r_new = (drv.rotation @ ref.rotation.transpose(1, 2)) @ src.rotation if region in ("all", "pose") \
        else src.rotation.expand(b, -1, -1)
    scale = src.scale * (drv.scale / ref.scale) if region == "all" else src.scale.expand(b, -1)
    t = src.t + (drv.t - ref.t) if region in ("all", "pose") else src.t.expand(b, -1).clone()
    t[..., 2] = 0
    return {"R": r_new, "exp": delta, "scale": scale, "t": t}


def compose(kp: torch.Tensor, motion: dict[str, torch.Tensor]) -> torch.Tensor:
    """x_d = s (x_c,s R + exp) + t, (B, 21, 3)."""
    return motion["scale"][..., None] * (kp @ motion["R"] + motion["exp"]) + motion["t"][:, None, :]


class Animator:
    """Batched LivePortrait inference, the source and reference computed once.

    `set_source(img, eye_ratio, lip_ratio)` caches the feature volume f_s, the keypoint info, x_s and the
    lip normalisation; `set_reference(img)` the reference frame's keypoint info; `__call__(imgs, eye_ratios,
    lip_ratios)` animates a batch of driver crops (B, 3, 256, 256) in [0, 1] and returns (B, 3, 512, 512)
    in [0, 1] (the motion extractor sees the whole batch; warping and the generator `chunk` frames at a time).
    `dtype` bfloat16 (CPU) or float16 (CUDA) runs the networks under autocast; the keypoint arithmetic
    stays float32.
    """

    def __init__(self, model: LivePortrait, options: MotionOptions = MotionOptions(), device: str = "cpu",
                 dtype: torch.dtype = torch.float32, channels_last: bool = True, chunk: int = 2):
        if options.region not in REGIONS:
            raise ReenactError(f"unknown animation region {options.region!r}; choose {', '.join(REGIONS)}")
        self.device, self.dtype, self.options = torch.device(device), dtype, options
        self.chunk = chunk  # frames per warp + decode call (activations of one frame are about 0.5 GB)
        self.model = model.to(self.device).eval().requires_grad_(False)
        for m in self.model.modules():  # spectral norm: the eval-mode weight, once
            if isinstance(m, SNConv2d):
                m.baked = None
                m.baked = m.weight().detach()
        self.mf = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model.spade_generator.to(memory_format=torch.channels_last)
            self.model.warping_module.third.to(memory_format=torch.channels_last)
        self.smoother = KalmanSmoother(options.smooth) if options.smooth > 0 else None
        self.source: dict | None = None
        self.reference: KpInfo | None = None

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def motion(self, imgs: torch.Tensor) -> KpInfo:
        with self._autocast():
            raw = self.model.motion_extractor(imgs.to(self.device))
        return kp_info(raw)

    @torch.inference_mode()
    def set_source(self, img: torch.Tensor, eye_ratio: Sequence[float] | None = None,
                   lip_ratio: float | None = None) -> None:
        """The source crop (1, 3, 256, 256); its eye openness (left, right) and lip openness, where known
        (from landmarks: `eye_close_ratio`, `lip_close_ratio`), for lip normalisation and retargeting."""
        img = img.to(self.device)
        info = self.motion(img)
        with self._autocast():
            f_s = self.model.appearance_feature_extractor(img).float()
        x_s = transform_keypoint(info)
        lip_delta = None
        if self.options.normalize_lip and lip_ratio is not None and lip_ratio >= LIP_NORMALIZE_THRESHOLD:
            lip_delta = self.retarget(self.model.lip, x_s, [[lip_ratio, 0.0]])
        self.source = dict(info=info, f_s=f_s, x_s=x_s, lip_delta=lip_delta, c_s_lip=lip_ratio, c_s_eyes=eye_ratio)

    def set_reference(self, img: torch.Tensor) -> None:
        self.reference = self.motion(img)

    def retarget(self, mlp: nn.Module, x_s: torch.Tensor, ratios) -> torch.Tensor:
        """An eye or lip MLP on [x_s, ratios] -> (B, 21, 3) keypoint offsets."""
        r = torch.as_tensor(np.asarray(ratios, np.float32), device=self.device)
        xs = x_s.reshape(1, -1).expand(r.shape[0], -1)
        return mlp(torch.cat([xs, r], dim=1)).reshape(r.shape[0], -1, 3)

    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        b = x_d.shape[0]
        delta = self.model.stitching(torch.cat([x_s.reshape(1, -1).expand(b, -1), x_d.reshape(b, -1)], dim=1))
        x = x_d + delta[:, :3 * NUM_KP].reshape(b, NUM_KP, 3)
        x[..., :2] += delta[:, None, 3 * NUM_KP:3 * NUM_KP + 2]
        return x

    @torch.inference_mode()
    def driving_keypoints(self, drv: KpInfo, eye_ratios: Sequence[float] | None = None,
                          lip_ratios: Sequence[float] | None = None) -> torch.Tensor:
        """The keypoints the warp is driven to, for a batch of driver frames (the official per-frame logic of
        `LivePortraitPipeline.execute` for an image source and a video driver, relative motion).
        `eye_ratios` (left eye) and `lip_ratios`: the driver frames' openness, for retargeting."""
        s, o = self.source, self.options
        x_s = s["x_s"]
        motion = relative_motion(s["info"], self.reference, drv, o.region)
        if self.smoother is not None:  # R, exp, scale and t of the driver's motion, smoothed over time
            flat = torch.cat([v.reshape(v.shape[0], -1) for v in motion.values()], 1)
            flat = torch.as_tensor(self.smoother.smooth(flat.cpu().numpy()), dtype=torch.float32, device=self.device)
            parts = torch.split(flat, [v[0].numel() for v in motion.values()], dim=1)
            motion = {k: p.reshape(v.shape) for (k, v), p in zip(motion.items(), parts)}
        x_d = compose(s["info"].kp, motion)
        if not o.stitching and not o.eye_retargeting and not o.lip_retargeting:
            if o.normalize_lip and s["lip_delta"] is not None:
                x_d = x_d + s["lip_delta"]
        elif o.stitching and not o.eye_retargeting and not o.lip_retargeting:
            x_d = self.stitch(x_s, x_d)
            if o.normalize_lip and s["lip_delta"] is not None:
                x_d = x_d + s["lip_delta"]
        else:
            # the official retargeting path: x_s plus the eye and lip offsets (the driver's pose is not used)
            b = x_d.shape[0]
            x_d = x_s.expand(b, -1, -1).clone()
            if o.eye_retargeting and eye_ratios is not None and s["c_s_eyes"] is not None:
                x_d = x_d + self.retarget(self.model.eye, x_s, [[*s["c_s_eyes"], r] for r in eye_ratios])
            if o.lip_retargeting and lip_ratios is not None and s["c_s_lip"] is not None:
                x_d = x_d + self.retarget(self.model.lip, x_s, [[s["c_s_lip"], r] for r in lip_ratios])
            if o.stitching:
                x_d = self.stitch(x_s, x_d)
        return x_s + (x_d - x_s) * o.multiplier

    @torch.inference_mode()
    def warp_decode(self, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.source
        b = x_d.shape[0]
        with self._autocast():
            f_s = s["f_s"].expand(b, -1, -1, -1, -1)
            ret = self.model.warping_module(f_s, kp_driving=x_d, kp_source=s["x_s"].expand(b, -1, -1))
            ret["out"] = self.model.spade_generator.fast_forward(ret["out"].contiguous(memory_format=self.mf))
        return {k: v.float() for k, v in ret.items() if v is not None}

    @torch.inference_mode()
    def __call__(self, imgs: torch.Tensor, eye_ratios: Sequence[float] | None = None,
                 lip_ratios: Sequence[float] | None = None) -> torch.Tensor:
        x_d = self.driving_keypoints(self.motion(imgs), eye_ratios, lip_ratios)
        outs = [self.warp_decode(x_d[i:i + self.chunk])["out"] for i in range(0, x_d.shape[0], self.chunk)]
        return torch.cat(outs)


# ----------------------------------------------------------------------------- backend


def to_tensor(images: np.ndarray | Sequence[np.ndarray], size: int = 256) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB -> (B, 3, 256, 256) float in [0, 1] (resized with cv2 INTER_AREA if S != 256)."""
    images = [np.asarray(x) for x in images]
    images = [x if x.shape[0] == size else cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)
              for x in images]
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images)))
    return x.permute(0, 3, 1, 2).float() / 255.0


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [0, 1] -> (B, S, S, 3) uint8, as the official parse_output (clip, * 255, truncate)."""
    return (img.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def parse_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if dtype not in table:
        raise ReenactError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    out = table[dtype]
    if out == torch.float16 and not device.startswith("cuda"):
        raise ReenactError("float16 needs a CUDA device; on a CPU use bfloat16")
    return out


class LivePortraitBackend:
    """`reenact animate --backend liveportrait --checkpoint FOLDER`: 256 px crops in, 512 px crops out."""

    name = "liveportrait"
    needs_driver_images = True
    sizes = (512,)
    input_size = 256
    # the official crop convention (src/config/crop_config.py): box side 2.3x the face, centre moved up
    # 0.125 of the side (the portrait's; the official driver crop, 2.2x and 0.1, is close: one crop serves both)
    crop = CropConfig(scale=2.3, shift_y=-0.125)

    @classmethod
    def auto_size(cls, face_side: float, options: dict) -> int:
        return 512

    def __init__(self, size: int = 512, checkpoint: str | Path | None = None, motion: str = "all",
                 dtype: str | torch.dtype | None = None, device: str | None = None, stitching: bool = True,
                 eye_retargeting: bool = False, lip_retargeting: bool = False, smooth: float = 0.0,
                 multiplier: float = 1.0, **unknown: object):
        if unknown:
            raise ReenactError(f"unknown liveportrait backend option(s): {', '.join(sorted(unknown))} (it takes "
                               "checkpoint, motion, dtype, device, stitching, smooth)")

        region = OFFICIAL_REGION[normalize_region(motion)]
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:  # CUDA: half precision as the official default; CPU: float32
            dtype = "float16" if device.startswith("cuda") else "float32"
        self.dtype = parse_dtype(dtype, device)
        folder = resolve_liveportrait(checkpoint)
        model = load_folder(folder)
        self.size = 512
        options = MotionOptions(region=region, stitching=stitching, eye_retargeting=eye_retargeting,
                                lip_retargeting=lip_retargeting, smooth=smooth, multiplier=multiplier)
        self.animator = Animator(model, options, device=device, dtype=self.dtype)
        log.info("LivePortrait: %s, region %s, stitching %s, %s on %s", folder, region, stitching, self.dtype, device)

    def paste_mask(self) -> np.ndarray:
        """The official mask_template.png's shape: the whole crop, fading to 0 over its outer 16 px of 512."""
        return crop_mask(self.size, band=16 / 512)

    def prepare(self, source: SourceFace, reference: DriverFrame) -> None:
        lm = source.landmarks
        self.animator.set_source(to_tensor([source.image], self.input_size), eye_close_ratio(lm), lip_close_ratio(lm))
        ref = reference.image if reference is not None and reference.image is not None else source.image
        self.animator.set_reference(to_tensor([ref], self.input_size))

    def animate(self, frames: Sequence[DriverFrame]) -> np.ndarray:
        if not frames:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        imgs = to_tensor([f.image for f in frames], self.input_size)
        eyes = [float(eye_close_ratio(f.landmarks)[0]) for f in frames]
        lips = [lip_close_ratio(f.landmarks) for f in frames]
        return to_uint8(self.animator(imgs, eyes, lips))
