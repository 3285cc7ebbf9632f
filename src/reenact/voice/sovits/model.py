"""so-vits-svc 4.x generator, state-dict compatible with so-vits-svc-fork.

The model is VITS (Kim et al. 2021) with content features in place of text, an F0-conditioned prior
and an NSF-HiFiGAN waveform decoder, as designed by so-vits-svc (svc-develop-team) and maintained in
so-vits-svc-fork (voicepaw); the decoder follows NSF (Wang & Yamagishi) on HiFi-GAN (Kong et al.).
All of these are MIT licensed; this file is a fresh, compact implementation whose module and
parameter names follow so-vits-svc-fork 4.2.30 exactly, so that its `G_*.pth` checkpoints load
strictly and ours load in it. Only the "hifi-gan" decoder (templates so-vits-svc-4.0v1, 768-dim
content, and so-vits-svc-4.0v1-legacy, 256-dim) is supported.

    c [ssl_dim, T]  content frames (ContentVec) at the F0 hop rate (44100/512 = 86.1 frames/s)
    x = pre(c) + emb_uv(uv)                                    [hidden, T]
    enc_p:  x + f0_emb(coarse F0) -> Transformer encoder with relative positions (window 4)
            -> m_p, logs_p;  z_p = m_p + eps * exp(logs_p) * noice_scale
    flow:   4 mean-only affine coupling layers (WaveNet, speaker-conditioned) with channel flips;
            run backwards at inference: z = flow^-1(z_p)
    dec:    NSF-HiFiGAN: z -> upsample x512 (transposed convs + multi-receptive-field resblocks);
            a harmonic source (sine at F0 and 8 overtones, noise when unvoiced) is added at every stage
    enc_q:  posterior encoder (16-layer WaveNet on the linear spectrogram), training only
    f0_decoder: causal Transformer predicting the target speaker's log-F0 from x and the
            mean-normalised source log-F0 (so-vits-svc's "auto predict F0")
    emb_g:  speaker embedding [n_speakers, gin_channels], conditions flow, dec and f0_decoder

Speed: for inference call remove_weight_norm() once and run under torch.inference_mode(); no
posterior encoder runs and masks are built once. On CPU the decoder runs its convolutions as
channels-last 2-D convolutions (same weights; see _conv), which oneDNN executes faster.

Randomness (for parity with the fork under one seed): `infer` draws, in order,
torch.randn_like(m_p) [B, inter, T] in enc_p; torch.rand(B, 9) for the harmonics' initial phases;
torch.randn_like(sines) [B, T*512, 9] for the source noise; torch.randn [B, T*512, 1] (a noise branch
the decoder never uses, drawn anyway so the generator state after a call matches the fork's).
`forward` (training) first draws torch.empty(B, 1).uniform_(0.8, 1.2) on the CPU generator
(random F0 scale, as the fork), then dropout masks, the two encoders' noise, the slice starts
(torch.rand(B)) and the decoder's draws.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reenact.errors import ReenactError
from reenact.files import atomic_write

LOG = logging.getLogger(__name__)

LRELU_SLOPE = 0.1
F0_BIN, F0_MIN, F0_MAX = 256, 50.0, 1100.0
F0_MEL_MIN = 1127 * math.log(1 + F0_MIN / 700)
F0_MEL_MAX = 1127 * math.log(1 + F0_MAX / 700)


def _weight_norm(module: nn.Module) -> nn.Module:
    """Classic weight norm (parameters `weight_g`, `weight_v`), as the fork's checkpoints have it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module)


# ---------------------------------------------------------------------------------------------
# helpers shared with training


def sequence_mask(length: Tensor, max_length: int | None = None) -> Tensor:
    if max_length is None:
        max_length = int(length.max())
    x = torch.arange(max_length, dtype=length.dtype, device=length.device)
    return x.unsqueeze(0) < length.unsqueeze(1)


def f0_to_coarse(f0: Tensor) -> Tensor:
    """F0 in Hz -> 256 mel-spaced bins (1..255; unvoiced and below 50 Hz -> 1)."""
    f0_mel = 1127 * (1 + f0 / 700).log()
    scaled = (f0_mel - F0_MEL_MIN) * (F0_BIN - 2) / (F0_MEL_MAX - F0_MEL_MIN) + 1
    f0_mel = torch.where(f0_mel > 0, scaled, f0_mel).clamp(1, F0_BIN - 1)
    return (f0_mel + 0.5).long()


def normalize_f0(lf0: Tensor, x_mask: Tensor, uv: Tensor, random_scale: bool = True) -> Tensor:
    """Subtract the mean over voiced frames of log-F0 [B, 1, T]; in training also scale by U(0.8, 1.2).

    The random factor is drawn on the CPU generator, as the fork does. Rows without voiced
    frames keep their values (the fork divides their sum by 9999)."""
    uv_sum = uv.sum(dim=1, keepdim=True)
    uv_sum = uv_sum.masked_fill(uv_sum == 0, 9999)
    means = (lf0[:, 0, :] * uv).sum(dim=1, keepdim=True) / uv_sum
    if random_scale:
        factor = torch.empty(lf0.shape[0], 1).uniform_(0.8, 1.2).to(lf0.device)
    else:
        factor = torch.ones(lf0.shape[0], 1, device=lf0.device)
    return (lf0 - means.unsqueeze(-1)) * factor.unsqueeze(-1) * x_mask


def slice_segments(x: Tensor, starts: Tensor, length: int | None) -> Tensor:
    """x[b, ..., starts[b]:starts[b] + length] for every b."""
    if length is None:
        return x
    length = min(length, x.size(-1))
    index = starts.long().view(-1, *[1] * (x.dim() - 1)) + torch.arange(length, device=x.device)
    return x.gather(-1, index.expand(*x.shape[:-1], length))


def rand_slice_segments_with_pitch(x: Tensor, f0: Tensor, x_lengths: Tensor | None, segment_size: int | None):
    """Random training crops of `segment_size` frames from z [B, C, T] and f0 [B, T], same starts."""
    if segment_size is None:
        return x, f0, torch.arange(x.size(0), device=x.device)
    if x_lengths is None:
        x_lengths = x.size(-1) * torch.ones(x.size(0), dtype=torch.long, device=x.device)
    starts = (torch.rand(x.size(0), device=x.device) * (x_lengths - segment_size).clamp(min=0)).long()
    return slice_segments(x, starts, segment_size), slice_segments(f0, starts, segment_size), starts


# ---------------------------------------------------------------------------------------------
# Transformer blocks


class LayerNorm(nn.Module):
    """LayerNorm over channels of [B, C, T]."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.transpose(1, -1), self.gamma.shape, self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class MultiHeadAttention(nn.Module):
    """Self-attention on [B, C, T] with 1x1 convs; optional relative position embeddings
    (Shaw et al.; one table shared by all heads, offsets -window..window)."""

    def __init__(self, channels: int, n_heads: int, p_dropout: float = 0.0, window_size: int | None = None,
                 proximal_init: bool = False):
        super().__init__()
        self.n_heads, self.k_channels, self.window_size = n_heads, channels // n_heads, window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window_size is not None:
            std = self.k_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, window_size * 2 + 1, self.k_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, window_size * 2 + 1, self.k_channels) * std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)
        if proximal_init:
            with torch.no_grad():
                self.conv_k.weight.copy_(self.conv_q.weight)
                self.conv_k.bias.copy_(self.conv_q.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, d, t = x.shape
        q, k, v = (conv(x).view(b, self.n_heads, self.k_channels, t).transpose(2, 3)
                   for conv in (self.conv_q, self.conv_k, self.conv_v))
        q = q / math.sqrt(self.k_channels)
        scores = torch.matmul(q, k.transpose(-2, -1))
        if self.window_size is not None:
            rel_k = self._relative_embeddings(self.emb_rel_k, t)
            scores = scores + self._relative_to_absolute(torch.matmul(q, rel_k.unsqueeze(0).transpose(-2, -1)))
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e4)
        p_attn = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(p_attn, v)
        if self.window_size is not None:
            rel_v = self._relative_embeddings(self.emb_rel_v, t)
            out = out + torch.matmul(self._absolute_to_relative(p_attn), rel_v.unsqueeze(0))
        return self.conv_o(out.transpose(2, 3).contiguous().view(b, d, t))

    def _relative_embeddings(self, emb: Tensor, length: int) -> Tensor:
        """The 2*length-1 embeddings for offsets -(length-1)..length-1 (zero beyond the window)."""
        pad = max(length - (self.window_size + 1), 0)
        start = max((self.window_size + 1) - length, 0)
        return F.pad(emb, (0, 0, pad, pad))[:, start:start + 2 * length - 1]

    @staticmethod
    def _relative_to_absolute(x: Tensor) -> Tensor:
        """[B, H, L, 2L-1] (relative offsets) -> [B, H, L, L] by the pad-and-reshape skew."""
        b, h, n, _ = x.shape
        x = F.pad(x, (0, 1)).view(b, h, n * 2 * n)
        return F.pad(x, (0, n - 1)).view(b, h, n + 1, 2 * n - 1)[:, :, :n, n - 1:]

    @staticmethod
    def _absolute_to_relative(x: Tensor) -> Tensor:
        """[B, H, L, L] -> [B, H, L, 2L-1]."""
        b, h, n, _ = x.shape
        x = F.pad(x, (0, n - 1)).view(b, h, n * n + n * (n - 1))
        return F.pad(x, (n, 0)).view(b, h, n, 2 * n)[:, :, :, 1:]


class FFN(nn.Module):
    """Two convolutions with ReLU, 'same' or causal padding."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0,
                 causal: bool = False):
        super().__init__()
        self.kernel_size, self.causal = kernel_size, causal
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        if k == 1:
            return x
        return F.pad(x, (k - 1, 0) if self.causal else ((k - 1) // 2, k // 2))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        x = self.drop(torch.relu(self.conv_1(self._pad(x * x_mask))))
        return self.conv_2(self._pad(x * x_mask)) * x_mask


class AttentionEncoder(nn.Module):
    """Post-norm Transformer encoder with relative positions (the fork's attentions.Encoder)."""

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int = 1, p_dropout: float = 0.0, window_size: int = 4):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers, self.norm_layers_1 = nn.ModuleList(), nn.ModuleList()
        self.ffn_layers, self.norm_layers_2 = nn.ModuleList(), nn.ModuleList()
        for _ in range(n_layers):  # layer by layer, as the fork (same random init under one seed)
            self.attn_layers.append(MultiHeadAttention(hidden_channels, n_heads, p_dropout, window_size))
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FFN(hidden_channels, filter_channels, kernel_size, p_dropout))
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers,
                                             self.norm_layers_2):
            x = norm_1(x + self.drop(attn(x, attn_mask)))
            x = norm_2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


class CausalTransformer(nn.Module):
    """Post-norm Transformer with causal attention and causal FFN convs (the fork's attentions.FFT)."""

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int = 1, p_dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.self_attn_layers, self.norm_layers_0 = nn.ModuleList(), nn.ModuleList()
        self.ffn_layers, self.norm_layers_1 = nn.ModuleList(), nn.ModuleList()
        for _ in range(n_layers):
            self.self_attn_layers.append(MultiHeadAttention(hidden_channels, n_heads, p_dropout, proximal_init=True))
            self.norm_layers_0.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(FFN(hidden_channels, filter_channels, kernel_size, p_dropout, causal=True))
            self.norm_layers_1.append(LayerNorm(hidden_channels))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        t = x_mask.size(2)
        causal = torch.ones(t, t, device=x.device, dtype=x.dtype).tril()[None, None]
        x = x * x_mask
        for attn, norm_0, ffn, norm_1 in zip(self.self_attn_layers, self.norm_layers_0, self.ffn_layers,
                                             self.norm_layers_1):
            x = norm_0(x + self.drop(attn(x, causal)))
            x = norm_1(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


class TextEncoder(nn.Module):
    """Prior encoder enc_p: content + coarse-F0 embedding -> Transformer -> (z, m, logs)."""

    def __init__(self, out_channels: int, hidden_channels: int, filter_channels: int, n_heads: int,
                 n_layers: int, kernel_size: int, p_dropout: float):
        super().__init__()
        self.out_channels = out_channels
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)
        self.f0_emb = nn.Embedding(F0_BIN, hidden_channels)
        self.enc_ = AttentionEncoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)

    def forward(self, x: Tensor, x_mask: Tensor, f0: Tensor, noice_scale: float = 1.0,
                generator: torch.Generator | None = None):
        x = x + self.f0_emb(f0).transpose(1, 2)
        x = self.enc_(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        eps = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        z = (m + eps * torch.exp(logs) * noice_scale) * x_mask
        return z, m, logs, x_mask


class F0Decoder(nn.Module):
    """Predicts normalised log-F0 [B, 1, T] from x, the source's normalised log-F0 and the speaker."""

    def __init__(self, out_channels: int, hidden_channels: int, filter_channels: int, n_heads: int,
                 n_layers: int, kernel_size: int, p_dropout: float, spk_channels: int = 0):
        super().__init__()
        self.prenet = nn.Conv1d(hidden_channels, hidden_channels, 3, padding=1)
        self.decoder = CausalTransformer(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.proj = nn.Conv1d(hidden_channels, out_channels, 1)
        self.f0_prenet = nn.Conv1d(1, hidden_channels, 3, padding=1)
        self.cond = nn.Conv1d(spk_channels, hidden_channels, 1)

    def forward(self, x: Tensor, norm_f0: Tensor, x_mask: Tensor, spk_emb: Tensor | None = None) -> Tensor:
        x = x.detach()
        if spk_emb is not None:
            x = x + self.cond(spk_emb.detach())
        x = x + self.f0_prenet(norm_f0)
        x = self.prenet(x) * x_mask
        x = self.decoder(x * x_mask, x_mask)
        return self.proj(x) * x_mask


# ---------------------------------------------------------------------------------------------
# WaveNet, posterior encoder, flow


class WN(nn.Module):
    """Non-causal WaveNet: gated dilated convs with residual/skip 1x1 convs, global conditioning g."""

    def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, p_dropout: float = 0.0):
        super().__init__()
        self.hidden_channels, self.n_layers = hidden_channels, n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels:
            self.cond_layer = _weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate**i
            self.in_layers.append(_weight_norm(nn.Conv1d(hidden_channels, 2 * hidden_channels, kernel_size,
                                                         dilation=dilation, padding=(kernel_size * dilation - dilation) // 2)))
            res_skip = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(_weight_norm(nn.Conv1d(hidden_channels, res_skip, 1)))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        h = self.hidden_channels
        output = torch.zeros_like(x)
        if g is not None:
            g = self.cond_layer(g)
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            x_in = in_layer(x)
            if g is not None:
                x_in = x_in + g[:, i * 2 * h:(i + 1) * 2 * h]
            acts = self.drop(torch.tanh(x_in[:, :h]) * torch.sigmoid(x_in[:, h:]))
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * x_mask
                output = output + res_skip[:, h:]
            else:
                output = output + res_skip
        return output * x_mask


class PosteriorEncoder(nn.Module):
    """enc_q: linear spectrogram -> WaveNet -> (z, m, logs, mask); training only."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int,
                 dilation_rate: int, n_layers: int, gin_channels: int = 0):
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, x: Tensor, x_lengths: Tensor, g: Tensor | None = None):
        x_mask = sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.enc(self.pre(x) * x_mask, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: x1 += WN(x0) (log-determinant 0)."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int,
                 n_layers: int, gin_channels: int = 0):
        super().__init__()
        self.half_channels = channels // 2
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels, 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)
        m = self.post(self.enc(self.pre(x0) * x_mask, x_mask, g=g)) * x_mask
        x1 = (x1 - m) * x_mask if reverse else m + x1 * x_mask
        return torch.cat([x0, x1], 1)


class Flip(nn.Module):
    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """The flow: n_flows x (coupling layer, channel flip)."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 n_flows: int = 4, gin_channels: int = 0):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate, n_layers,
                                                    gin_channels=gin_channels))
            self.flows.append(Flip())

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        for flow in (reversed(self.flows) if reverse else self.flows):
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x


# ---------------------------------------------------------------------------------------------
# NSF-HiFiGAN decoder


def _conv(conv: nn.Module, x: Tensor) -> Tensor:
    """Apply a Conv1d/ConvTranspose1d to x [B, C, L], or to x [B, C, 1, L] in channels_last layout
    as the equivalent 2-D convolution, which oneDNN runs faster on CPU for the decoder's shapes (few
    channels, long signals: ~10% for the whole decoder on 2 threads here, more on a busy machine).
    Weight norm, when present, is applied here as its hook would."""
    if x.dim() == 3:
        return conv(x)
    w = torch._weight_norm(conv.weight_v, conv.weight_g, 0) if hasattr(conv, "weight_g") else conv.weight
    w = w.unsqueeze(2)
    if isinstance(conv, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, w, conv.bias, (1, conv.stride[0]), (0, conv.padding[0]),
                                  (0, conv.output_padding[0]), conv.groups, (1, conv.dilation[0]))
    return F.conv2d(x, w, conv.bias, (1, conv.stride[0]), (0, conv.padding[0]), (1, conv.dilation[0]), conv.groups)


def _fork_init(convs) -> None:
    """The fork's init_weights: N(0, 0.01) written into the weight that weight norm derives, which the
    next forward recomputes from weight_g/weight_v, so it changes nothing but torch's random stream.
    Done the same here so that a seeded from-scratch model starts with exactly the fork's weights."""
    with torch.no_grad():
        for conv in convs:
            conv.weight.normal_(0.0, 0.01)


class ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList(
            _weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2))
            for d in dilation[:3])
        _fork_init(self.convs1)
        self.convs2 = nn.ModuleList(
            _weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2))
            for _ in range(3))
        _fork_init(self.convs2)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = _conv(c2, F.leaky_relu(_conv(c1, F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE)) + x
        return x


class ResBlock2(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3)):
        super().__init__()
        self.convs = nn.ModuleList(
            _weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2))
            for d in dilation[:2])
        _fork_init(self.convs)

    def forward(self, x: Tensor) -> Tensor:
        for c in self.convs:
            x = _conv(c, F.leaky_relu(x, LRELU_SLOPE)) + x
        return x


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise source: sines at F0 x (1..harmonic_num+1) merged by a linear layer + tanh.

    f0 [B, L, 1] in Hz at the audio rate (0 = unvoiced) -> source [B, L, 1]. Unvoiced samples get
    Gaussian noise of std sine_amp/3, voiced ones noise of std noise_std on top of the sines.
    """

    def __init__(self, sampling_rate: int, harmonic_num: int = 0, sine_amp: float = 0.1, noise_std: float = 0.003):
        super().__init__()
        self.sampling_rate, self.dim = sampling_rate, harmonic_num + 1
        self.sine_amp, self.noise_std = sine_amp, noise_std
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    @torch.no_grad()
    def sines(self, f0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        fn = f0 * torch.arange(1, self.dim + 1, device=f0.device).to(f0.dtype)
        rad = (fn / self.sampling_rate) % 1  # phase increment per sample, in cycles
        rand_ini = torch.rand(fn.shape[0], fn.shape[2], generator=generator, device=fn.device)  # initial phases
        rand_ini[:, 0] = 0
        rad[:, 0, :] = rad[:, 0, :] + rand_ini
        # Keep the running phase small: subtract one cycle wherever the wrapped cumulative phase wraps.
        wrapped = torch.cumsum(rad, 1) % 1
        shift = torch.zeros_like(rad)
        shift[:, 1:, :] = (wrapped[:, 1:] - wrapped[:, :-1] < 0) * -1.0
        sines = torch.sin(torch.cumsum(rad + shift, dim=1) * 2 * np.pi) * self.sine_amp
        uv = (f0 > 0).to(sines.dtype)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = torch.randn(sines.shape, generator=generator, dtype=sines.dtype, device=sines.device)
        return sines * uv + noise_amp * noise

    def forward(self, f0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        source = torch.tanh(self.l_linear(self.sines(f0, generator)))
        # the fork's unused noise branch: drawn so the random stream after a call matches the fork's
        torch.randn(f0.shape, generator=generator, device=f0.device)
        return source


class NSFHifiGANGenerator(nn.Module):
    def __init__(self, inter_channels: int, resblock: str, resblock_kernel_sizes: Sequence[int],
                 resblock_dilation_sizes: Sequence[Sequence[int]], upsample_rates: Sequence[int],
                 upsample_initial_channel: int, upsample_kernel_sizes: Sequence[int], gin_channels: int,
                 sampling_rate: int):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.upp = int(np.prod(upsample_rates))
        self.m_source = SourceModuleHnNSF(sampling_rate, harmonic_num=8)
        self.noise_convs = nn.ModuleList()
        self.conv_pre = _weight_norm(nn.Conv1d(inter_channels, upsample_initial_channel, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            ch = upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(_weight_norm(nn.ConvTranspose1d(2 * ch, ch, k, u, padding=(k - u) // 2)))
            if i + 1 < len(upsample_rates):  # bring the source down to this stage's rate
                stride = int(np.prod(upsample_rates[i + 1:]))
                self.noise_convs.append(nn.Conv1d(1, ch, kernel_size=stride * 2, stride=stride, padding=stride // 2))
            else:
                self.noise_convs.append(nn.Conv1d(1, ch, kernel_size=1))
        block = ResBlock1 if str(resblock) == "1" else ResBlock2
        self.resblocks = nn.ModuleList(
            block(upsample_initial_channel // 2 ** (i + 1), k, d)
            for i in range(len(self.ups)) for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes))
        self.conv_post = _weight_norm(nn.Conv1d(ch, 1, 7, 1, padding=3))
        _fork_init(self.ups)
        _fork_init([self.conv_post])
        self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(self, x: Tensor, f0: Tensor, g: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """x [B, inter, T], f0 [B, T] Hz, g [B, gin, 1] -> audio [B, 1, T * upp]."""
        f0 = f0[:, None].repeat_interleave(self.upp, dim=-1).transpose(1, 2)  # nearest upsampling
        source = self.m_source(f0, generator).transpose(1, 2)
        x = self.conv_pre(x) + self.cond(g)
        out_dtype, dtype = x.dtype, self.conv_post.bias.dtype  # bfloat16 after SynthesizerTrn.set_decoder_dtype
        x, source = x.to(dtype), source.to(dtype)
        if x.device.type == "cpu":  # see _conv
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            source = source.unsqueeze(2)
        for i, (up, noise_conv) in enumerate(zip(self.ups, self.noise_convs)):
            x = _conv(up, F.leaky_relu(x, LRELU_SLOPE)) + _conv(noise_conv, source)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        x = torch.tanh(_conv(self.conv_post, F.leaky_relu(x))).to(out_dtype)  # slope 0.01 here, as in HiFi-GAN
        return x.squeeze(2) if x.dim() == 4 else x


# ---------------------------------------------------------------------------------------------
# the synthesizer


class SynthesizerTrn(nn.Module):
    """so-vits-svc 4.x generator; constructor arguments are `config["model"]` of the fork's config.json
    (plus spec_channels = filter_length // 2 + 1 and segment_size = train.segment_size // hop_length)."""

    def __init__(self, spec_channels: int, segment_size: int, inter_channels: int, hidden_channels: int,
                 filter_channels: int, n_heads: int, n_layers: int, kernel_size: int, p_dropout: float,
                 resblock: str, resblock_kernel_sizes: Sequence[int], resblock_dilation_sizes: Sequence[Sequence[int]],
                 upsample_rates: Sequence[int], upsample_initial_channel: int, upsample_kernel_sizes: Sequence[int],
                 gin_channels: int, ssl_dim: int, n_speakers: int, sampling_rate: int = 44100,
                 type_: str = "hifi-gan", gen_istft_n_fft: int = 16, gen_istft_hop_size: int = 4, subbands: int = 4,
                 **kwargs: Any):
        super().__init__()
        if type_ != "hifi-gan":
            raise ReenactError(f"decoder type {type_!r} is not supported; only 'hifi-gan' models "
                               "(templates so-vits-svc-4.0v1 and so-vits-svc-4.0v1-legacy) are")
        if ssl_dim is None:
            raise ReenactError("model.ssl_dim is missing from the config (768 for so-vits-svc-4.0v1, 256 for -legacy)")
        if kwargs:
            LOG.debug("ignoring model settings %s", sorted(kwargs))
        self.segment_size, self.n_speakers, self.sampling_rate = segment_size, n_speakers, sampling_rate
        self.hop_length = int(np.prod(upsample_rates))

        self.emb_g = nn.Embedding(n_speakers, gin_channels)
        self.pre = nn.Conv1d(ssl_dim, hidden_channels, kernel_size=5, padding=2)
        self.enc_p = TextEncoder(inter_channels, hidden_channels, filter_channels, n_heads, n_layers, kernel_size,
                                 p_dropout)
        self.dec = NSFHifiGANGenerator(inter_channels, resblock, resblock_kernel_sizes, resblock_dilation_sizes,
                                       upsample_rates, upsample_initial_channel, upsample_kernel_sizes, gin_channels,
                                       sampling_rate)
        self.enc_q = PosteriorEncoder(spec_channels, inter_channels, hidden_channels, 5, 1, 16, gin_channels=gin_channels)
        self.flow = ResidualCouplingBlock(inter_channels, hidden_channels, 5, 1, 4, gin_channels=gin_channels)
        self.f0_decoder = F0Decoder(1, hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout,
                                    spk_channels=gin_channels)
        self.emb_uv = nn.Embedding(2, hidden_channels)

    def forward(self, c: Tensor, f0: Tensor, uv: Tensor, spec: Tensor, g: Tensor | None = None,
                c_lengths: Tensor | None = None, spec_lengths: Tensor | None = None):
        """Training pass. c [B, ssl, T], f0/uv [B, T], spec [B, spec_channels, T], g [B, 1] speaker ids.

        Returns (audio slice, None, slice starts, spec mask, (z, z_p, m_p, logs_p, m_q, logs_q),
        predicted normalised log-F0, normalised log-F0, log-F0), as the fork."""
        g = self.emb_g(g).transpose(1, 2)
        x_mask = sequence_mask(c_lengths, c.size(2)).unsqueeze(1).to(c.dtype)
        x = self.pre(c) * x_mask + self.emb_uv(uv.long()).transpose(1, 2)

        lf0 = 2595.0 * torch.log10(1.0 + f0.unsqueeze(1) / 700.0) / 500
        norm_lf0 = normalize_f0(lf0, x_mask, uv)
        pred_lf0 = self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g)

        _, m_p, logs_p, _ = self.enc_p(x, x_mask, f0=f0_to_coarse(f0))
        z, m_q, logs_q, spec_mask = self.enc_q(spec, spec_lengths, g=g)
        z_p = self.flow(z, spec_mask, g=g)
        z_slice, pitch_slice, ids_slice = rand_slice_segments_with_pitch(z, f0, spec_lengths, self.segment_size)
        o = self.dec(z_slice, g=g, f0=pitch_slice)
        return o, None, ids_slice, spec_mask, (z, z_p, m_p, logs_p, m_q, logs_q), pred_lf0, norm_lf0, lf0

    def infer(self, c: Tensor, f0: Tensor, uv: Tensor, g: Tensor | None = None, noice_scale: float = 0.35,
              predict_f0: bool = False, c_lengths: Tensor | None = None,
              generator: torch.Generator | None = None, dec_span: tuple[int, int] | None = None) -> Tensor:
        """c [B, ssl, T], f0 [B, T] Hz, uv [B, T] (1 voiced), g [B, 1] speaker ids -> audio [B, 1, T * hop].

        With predict_f0 the F0 decoder replaces f0 by its prediction for the speaker (the source's
        contour, shifted to the speaker's range). Noise: see the module docstring. c_lengths (an
        addition to the fork's signature) masks the padding of a batch of unequal chunks in the
        encoders and flow (pad c with zeros and uv with 0); the decoder is unmasked, so trim each output to
        c_lengths * hop and expect its last ~10 frames (the decoder's reach at full size) to differ
        from an unpadded run; with predict_f0 the F0 decoder's unmasked prenet also lets the padding
        touch the last frame's F0, and through enc_p's attention, every frame slightly.
        generator (also an addition): draw the noise from it instead of torch's global generator, in
        the same order, so that threads converting chunks at once stay deterministic; a generator
        seeded s gives the same audio as torch.manual_seed(s) on the global one. dec_span (an addition
        too): run the waveform decoder on frames [start, end) only, for a chunk whose outer context is
        needed by the encoders (attention) but not by the decoder (whose reach is ~10 frames); the
        audio is then [B, 1, (end - start) * hop]."""
        g = self.emb_g(g).transpose(1, 2)
        if c_lengths is None:
            x_mask = torch.ones(c.size(0), 1, c.size(2), dtype=c.dtype, device=c.device)
        else:
            x_mask = sequence_mask(c_lengths, c.size(2)).unsqueeze(1).to(c.dtype)
        x = self.pre(c) * x_mask + self.emb_uv(uv.long()).transpose(1, 2)
        if predict_f0:
            lf0 = 2595.0 * torch.log10(1.0 + f0.unsqueeze(1) / 700.0) / 500
            norm_lf0 = normalize_f0(lf0, x_mask, uv, random_scale=False)
            pred_lf0 = self.f0_decoder(x, norm_lf0, x_mask, spk_emb=g)
            f0 = (700 * (torch.pow(10, pred_lf0 * 500 / 2595) - 1)).squeeze(1)
        z_p, _, _, _ = self.enc_p(x, x_mask, f0=f0_to_coarse(f0), noice_scale=noice_scale, generator=generator)
        z = self.flow(z_p, x_mask, g=g, reverse=True) * x_mask
        if dec_span is not None:
            z, f0 = z[..., dec_span[0]:dec_span[1]], f0[..., dec_span[0]:dec_span[1]]
        return self.dec(z, g=g, f0=f0, generator=generator)

    def set_decoder_dtype(self, dtype: torch.dtype) -> SynthesizerTrn:
        """Run the waveform decoder's convolution stack in `dtype` (inference only; call after
        remove_weight_norm). bfloat16 halves the decoder's time on CPUs with AVX512-BF16 or AMX and
        on GPUs; the audio then differs from float32 by about 0.5% RMS (-46 dB). The harmonic source
        (whose phase is a running sum over the whole chunk), conv_pre and the speaker conditioning
        stay in float32; the output is float32."""
        dec = self.dec
        for module in (*dec.ups, *dec.noise_convs, *dec.resblocks, dec.conv_post):
            module.to(dtype)
        return self

    def remove_weight_norm(self) -> SynthesizerTrn:
        """Fold weight norm into plain weights for faster inference (the state dict then no longer
        has the fork's keys: save checkpoints before calling this)."""
        for module in self.modules():
            if hasattr(module, "weight_g"):
                nn.utils.remove_weight_norm(module)
        self.weight_norm_removed = True
        return self


# ---------------------------------------------------------------------------------------------
# config and checkpoints (so-vits-svc-fork layout)


def load_config(path: str | Path) -> dict[str, Any]:
    """The fork's config.json (sections train, data, model, spk) as a dict."""
    path = Path(path)
    try:
        config = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ReenactError("config not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReenactError(f"not a readable JSON config: {e}", path) from None
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("data", "model", "train")):
        raise ReenactError("not a so-vits-svc config.json: needs 'train', 'data' and 'model' sections", path)
    return config


def config_template(legacy: bool = False) -> dict[str, Any]:
    """The fork's config.json templates: so-vits-svc-4.0v1 (768-dim ContentVec last layer) or, with
    legacy, so-vits-svc-4.0v1-legacy (256-dim final_proj of layer 9). "spk" is left empty."""
    train = {"log_interval": 200 if legacy else 100, "eval_interval": 800 if legacy else 200, "seed": 1234,
             "epochs": 10000, "learning_rate": 0.0001, "betas": [0.8, 0.99], "eps": 1e-9, "batch_size": 16,
             "fp16_run": False, "bf16_run": False, "lr_decay": 0.999875, "segment_size": 10240, "init_lr_ratio": 1,
             "warmup_epochs": 0, "c_mel": 45, "c_kl": 1.0, "use_sr": True, "max_speclen": 512, "port": "8001",
             "keep_ckpts": 3, "num_workers": 4, "log_version": 0, "ckpt_name_by_step": False,
             "accumulate_grad_batches": 1}
    data = {"training_files": "filelists/44k/train.txt", "validation_files": "filelists/44k/val.txt",
            "max_wav_value": 32768.0, "sampling_rate": 44100, "filter_length": 2048, "hop_length": 512,
            "win_length": 2048, "n_mel_channels": 80, "mel_fmin": 0.0, "mel_fmax": 22050}
    if not legacy:
        data["contentvec_final_proj"] = False
    model = {"inter_channels": 192, "hidden_channels": 192, "filter_channels": 768, "n_heads": 2, "n_layers": 6,
             "kernel_size": 3, "p_dropout": 0.1, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
             "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_rates": [8, 8, 2, 2, 2],
             "upsample_initial_channel": 512, "upsample_kernel_sizes": [16, 16, 4, 4, 4], "n_layers_q": 3,
             "use_spectral_norm": False, "gin_channels": 256, "ssl_dim": 256 if legacy else 768, "n_speakers": 200}
    if not legacy:
        model["type_"] = "hifi-gan"
    return {"train": train, "data": data, "model": model, "spk": {}}


_POSITIVE = {"data": ("filter_length", "hop_length"), "train": ("segment_size",),
             "model": ("inter_channels", "hidden_channels", "filter_channels", "n_heads", "n_layers", "kernel_size",
                       "upsample_initial_channel", "n_layers_q", "gin_channels", "ssl_dim", "n_speakers")}


def build_generator(config: dict[str, Any], path: str | Path | None = None) -> SynthesizerTrn:
    """SynthesizerTrn as the fork builds it from a config dict; a config no generator can be built from
    (a negative width, a missing size) is a ReenactError naming the setting."""
    data, train = config["data"], config["train"]
    for section, keys in _POSITIVE.items():
        for key in keys:
            value = config[section].get(key)
            if value is None and section == "model" and key not in ("inter_channels", "hidden_channels", "ssl_dim"):
                continue  # the model's own default applies
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ReenactError(f"{section}.{key} must be a positive whole number, not {value!r}", path)
    try:
        return SynthesizerTrn(data["filter_length"] // 2 + 1, train["segment_size"] // data["hop_length"],
                              **config["model"])
    except Exception as e:  # noqa: BLE001 - any layer can refuse an odd setting
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ReenactError(f"the model section cannot build a so-vits-svc generator ({type(e).__name__}: "
                           f"{reason[:200]})", path) from None


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, learning_rate: float,
                    iteration: int, path: str | Path) -> None:
    """Write {"model", "iteration", "optimizer", "learning_rate"} atomically (the fork's G_*.pth/D_*.pth)."""
    path = Path(path)
    model = getattr(model, "module", model)
    if getattr(model, "weight_norm_removed", False):
        raise ValueError("weight norm was removed from this model; its state dict no longer matches the fork's")
    payload = {"model": model.state_dict(), "iteration": iteration,
               "optimizer": optimizer.state_dict() if optimizer is not None else None,
               "learning_rate": learning_rate}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def check_state_dict(model: nn.Module, state: dict[str, Any], path: str | Path | None = None,
                     optional: tuple[str, ...] = ()) -> None:
    """Raise ReenactError unless `state` has exactly the model's keys and shapes (keys starting with
    one of `optional` may be missing)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (optional and k.startswith(optional))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})" for k in own
             if k in state and (not isinstance(state[k], Tensor) or state[k].shape != own[k].shape)]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            problems.append(f"{len(names)} {label}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    if problems:
        raise ReenactError("checkpoint does not match the model in config.json: " + "; ".join(problems), path)


def _numpy_globals() -> list:
    """numpy arrays and scalars, which some older so-vits-svc checkpoints hold (fork issue #348),
    allowed in weights_only loading: they are plain data (object arrays would still need more)."""
    core = np._core if hasattr(np, "_core") else np.core
    allowed: list = [np.ndarray, np.dtype] + [type(np.dtype(c)) for c in "?bhilqBHILQefdFD"]  # numeric dtypes
    for name in ("scalar", "_reconstruct"):
        fn = getattr(core.multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    return allowed


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    for_inference: bool = False):
    """Load a fork-layout checkpoint strictly and safely (weights_only) -> (model, optimizer, lr, iteration).

    With for_inference, a generator checkpoint without the posterior encoder (enc_q.*, which
    so-vits-svc's compress_model.py strips from the models people share, sometimes in float16)
    loads too; enc_q keeps its initial weights, as inference never uses it."""
    path = Path(path)
    if not path.is_file():
        raise ReenactError("checkpoint not found", path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code in it, not a torch file at all
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReenactError(f"not a readable PyTorch checkpoint ({reason[:200]})", path) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ReenactError("not a so-vits-svc checkpoint: no 'model' state dict", path)
    target = getattr(model, "module", model)
    optional = ("enc_q.",) if for_inference else ()
    check_state_dict(target, ckpt["model"], path, optional)
    target.load_state_dict(ckpt["model"], strict=not optional)  # checked above: only enc_q.* may be missing
    if optional and "enc_q.pre.weight" not in ckpt["model"]:
        LOG.info("%s has no posterior encoder (an inference-only export); fine for conversion", path)
    if optimizer is not None and ckpt.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise ReenactError(f"optimizer state does not match: {e}", path) from None
    lr = ckpt.get("learning_rate")
    return model, optimizer, None if lr is None else float(lr), int(ckpt.get("iteration", 0))


# ---------------------------------------------------------------------------------------------
# deterministic weights for parity fixtures and tests


def deterministic_state_dict(model: nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """Weights from a formula keyed by tensor name, independent of construction order and of torch's RNG.

    For each tensor `name` of shape S in the state dict, r = numpy.random.default_rng(
    [seed, zlib.crc32(name)]).standard_normal(S, dtype=float32), and the value is
      *.bias, *.beta                        0.1 r
      *.gamma                               1 + 0.1 r
      emb_g / emb_uv / f0_emb .weight       0.3 r            (embeddings)
      *.emb_rel_k, *.emb_rel_v              r / sqrt(S[-1])
      *.weight_g                            the L2 norm of the matching weight_v over all dims but 0
                                            (so the effective weight equals weight_v)
      f0_decoder.proj.weight                0.1 r / sqrt(prod(S[1:]))
      f0_decoder.proj.bias                  0.55 + 0.01 r    (predicted F0 near 200 Hz)
      any other tensor (conv/linear weight, weight_v)  r / sqrt(prod(S[1:]))  (unit gain per fan-in)
    computed in float32 and cast to the model's dtype. Activations stay O(1), so float32 and float64
    runs agree closely (max |diff| of the parity audio ~1e-4).
    """
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for name, t in own.items():
        if name.endswith(".weight_g"):
            continue
        r = np.random.default_rng([seed, zlib.crc32(name.encode())]).standard_normal(tuple(t.shape), np.float32)
        parent, _, leaf = name.rpartition(".")
        if name == "f0_decoder.proj.weight":
            v = 0.1 * r / math.sqrt(int(np.prod(t.shape[1:])))
        elif name == "f0_decoder.proj.bias":
            v = 0.55 + 0.01 * r
        elif leaf in ("bias", "beta"):
            v = 0.1 * r
        elif leaf == "gamma":
            v = 1 + 0.1 * r
        elif parent.rpartition(".")[2] in ("emb_g", "emb_uv", "f0_emb"):
            v = 0.3 * r
        elif leaf in ("emb_rel_k", "emb_rel_v"):
            v = r / math.sqrt(t.shape[-1])
        else:
            v = r / math.sqrt(max(1, int(np.prod(t.shape[1:]))))
        out[name] = torch.from_numpy(v).to(t.dtype)
        g_name = name[: -len("weight_v")] + "weight_g"
        if leaf == "weight_v" and g_name in own:
            dims = tuple(range(1, v.ndim))
            out[g_name] = torch.from_numpy(np.sqrt((v**2).sum(axis=dims, keepdims=True))).to(own[g_name].dtype)
    return {name: out[name] for name in own}
