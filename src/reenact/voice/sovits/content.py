"""Content features and F0 for the so-vits-svc backend.

Content: ContentVec, a HuBERT-base whose features keep the words and lose most of the speaker,
run through `transformers.HubertModel`. so-vits-svc 4.x models take one of two layouts:

- ``so-vits-svc-4.0v1`` (768 dims): the last hidden state (layer 12);
- ``so-vits-svc-4.0v1-legacy`` (256 dims): hidden state 9 through the ``final_proj`` layer.

The weights are the community port ``lengyue233/content-vec-best`` (a folder with ``config.json``
and ``pytorch_model.bin``). `ContentEncoder.load` takes that folder, the ``.bin`` file itself, or
the registry name ``contentvec`` (`reenact models fetch contentvec`). Features come at 50 frames/s
from 16 kHz audio and are stretched (nearest frame) to the synthesizer's frame rate.

F0: WORLD dio or harvest refined by StoneMask, Praat's autocorrelation (parselmouth), or CREPE
(torchcrepe, full or tiny; optional: `pip install --no-deps torchcrepe resampy`), at the
synthesizer's hop, computed the way so-vits-svc-fork computes it (input scaled by its 99.9th
percentile, 50-1100 Hz), with unvoiced frames filled by linear interpolation and a separate
voiced flag.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reenact.errors import ReenactError
from reenact.voice import signal as S

log = logging.getLogger(__name__)

HUBERT_SR = 16000
F0_MIN, F0_MAX = 50.0, 1100.0
F0_METHODS = ("dio", "harvest", "parselmouth", "crepe", "crepe-tiny")

# lengyue233/content-vec-best is a HuBERT-base: transformers' HubertConfig defaults, plus the
# projection to 256 dims that the legacy layout uses.
CONTENTVEC_CONFIG = {"model_type": "hubert", "architectures": ["HubertModelWithFinalProj"],
                     "classifier_proj_size": 256, "hidden_size": 768, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "intermediate_size": 3072, "feat_extract_norm": "group",
                     "do_stable_layer_norm": False, "conv_bias": False}


def _hubert_class():
    from transformers import HubertModel

    class HubertModelWithFinalProj(HubertModel):
        """HuBERT with ContentVec's projection layer, so the legacy 256-dim features can be made."""

        def __init__(self, config):
            super().__init__(config)
            self.final_proj = nn.Linear(config.hidden_size, config.classifier_proj_size)

    return HubertModelWithFinalProj


def _fold_weight_norm(model: nn.Module) -> None:
    """Fold weight normalisation into plain weights: the encoder is only used for inference."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def _for_layout(model: nn.Module, legacy: bool) -> nn.Module:
    """The legacy layout reads hidden state 9: drop transformer layers 10-12, which cannot reach it
    (a quarter of the transformer's work)."""
    if legacy:
        model.encoder.layers = model.encoder.layers[:9]
    return model


@dataclass
class ContentEncoder:
    model: nn.Module
    legacy: bool = False  # hidden state 9 -> final_proj (256 dims) instead of the last hidden state (768)
    device: str = "cpu"

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return cfg.classifier_proj_size if self.legacy else cfg.hidden_size

    @classmethod
    def load(cls, spec: str | Path, device: str = "cpu", legacy: bool = False) -> "ContentEncoder":
        """Load ContentVec from a folder (config.json + weights), a weights file, or the name 'contentvec'."""
        folder = resolve_contentvec(spec)
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per load would clutter the CLI's own progress display
        try:
            model, info = _hubert_class().from_pretrained(str(folder), output_loading_info=True)
        except pickle.UnpicklingError:  # weights_only refused it: Python objects that could run code
            raise ReenactError("cannot load ContentVec: its weights file holds Python objects that are not safe "
                               "to load (only tensors are accepted)", folder) from None
        except Exception as exc:  # noqa: BLE001 - a damaged or crafted file fails in many ways
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ReenactError(f"cannot load ContentVec: {reason[:200]}", folder) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        missing = [k for k in info.get("missing_keys", []) if legacy or not k.startswith("final_proj")]
        if missing or info.get("mismatched_keys"):
            raise ReenactError(f"not a ContentVec/HuBERT checkpoint: {len(missing)} weights missing "
                               f"(e.g. {(missing or info['mismatched_keys'])[0]})", folder)
        _fold_weight_norm(model)
        return cls(_for_layout(model, legacy).eval().to(device), legacy, device)

    @classmethod
    def random(cls, hidden: int = 32, layers: int = 2, proj: int = 16, legacy: bool = False,
               seed: int = 0, fold: bool = True) -> "ContentEncoder":
        """A tiny randomly initialised HuBERT with the same code path (for tests; no weights needed)."""
        from transformers import HubertConfig

        torch.manual_seed(seed)
        config = HubertConfig(hidden_size=hidden, num_hidden_layers=max(layers, 10 if legacy else layers),
                              num_attention_heads=2, intermediate_size=2 * hidden, classifier_proj_size=proj,
                              conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
        model = _hubert_class()(config)
        if fold:
            _fold_weight_norm(model)
        return cls(_for_layout(model, legacy).eval(), legacy)

    @torch.inference_mode()
    def encode(self, wav16k: np.ndarray | torch.Tensor) -> torch.Tensor:
        """16 kHz mono audio [T] -> content features [dim, frames] at 50 frames/s."""
        x = torch.as_tensor(np.asarray(wav16k, dtype=np.float32) if not torch.is_tensor(wav16k) else wav16k)
        x = x.float().reshape(1, -1).to(self.device)
        if self.legacy:
            hidden = self.model(x, output_hidden_states=True).hidden_states[9]
            c = self.model.final_proj(hidden)
        else:
            c = self.model(x).last_hidden_state
        return c[0].transpose(0, 1).float()


def resolve_contentvec(spec: str | Path) -> Path:
    """A folder holding config.json and the weights; writes config.json beside a bare weights file."""
    if str(spec) == "contentvec":
        from reenact.models import get_model, manual_instructions, model_path

        path = model_path("contentvec")
        if not path.is_file():
            raise ReenactError("ContentVec is not downloaded; run `reenact models fetch contentvec`, or "
                               + manual_instructions(get_model("contentvec")), path)
        spec = path
    path = Path(spec).expanduser()
    if path.is_file():
        if path.name not in ("pytorch_model.bin", "model.safetensors"):
            raise ReenactError("ContentVec weights must be named pytorch_model.bin or model.safetensors "
                               "(or give the folder holding them)", path)
        folder = path.parent
        if not (folder / "config.json").exists():
            import json

            (folder / "config.json").write_text(json.dumps(CONTENTVEC_CONFIG, indent=2))
        return folder
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ReenactError("no config.json in the ContentVec folder", path)
        return path
    raise ReenactError("ContentVec not found: give its folder, its pytorch_model.bin, or 'contentvec'", path)


def repeat_expand(content: torch.Tensor, frames: int) -> torch.Tensor:
    """Stretch [dim, n] features to [dim, frames] by nearest frame, or cut them (as so-vits-svc does)."""
    n = content.shape[-1]
    if frames < n:
        return content[:, :frames]
    index = torch.clamp((torch.arange(frames) * n) // frames, max=n - 1)
    return content[:, index]


def interpolate_f0(f0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill unvoiced frames; return (f0, voiced flag). Reproduces so-vits-svc-fork's filling exactly, since
    its models were trained on it: a gap between voiced frames a (before) and b (after) ramps from a and
    reaches b on the gap's last frame; a leading gap takes b; a trailing gap, or one whose next voiced frame
    is the very last frame, holds the previous voiced value (0 if none)."""
    f0 = np.asarray(f0, dtype=np.float32).copy()
    uv = (f0 > 0).astype(np.float32)
    n, i = len(f0), 0
    while i < n:
        if f0[i] > 0:
            i += 1
            continue
        j = i + 1
        while j < n - 1 and f0[j] <= 0:
            j += 1
        last = f0[i - 1] if i > 0 else 0.0
        if j < n - 1 and last > 0:
            f0[i:j] = last + (f0[j] - last) * np.arange(1, j - i + 1) / (j - i)
        elif j < n - 1:
            f0[i:j] = f0[j]
        else:
            f0[i:] = last
            break
        i = j
    return f0, uv


def _resize_f0(f0: np.ndarray, frames: int) -> np.ndarray:
    source = np.where(f0 < 1e-3, np.nan, f0)
    target = np.interp(np.arange(0, len(source) * frames, len(source)) / frames, np.arange(len(source)), source)
    return np.nan_to_num(target)


def compute_f0(wav: np.ndarray, sr: int, hop: int, method: str = "dio", frames: int | None = None,
               peak: float | None = None, device: str = "cpu") -> np.ndarray:
    """F0 in Hz per hop (0 = unvoiced), `frames` = len(wav) // hop values, as so-vits-svc-fork computes it.
    The audio is first scaled by its 0.999 quantile of |x|; give `peak` (see `f0_peak`) to use that of the
    whole input when `wav` is a piece of it. `device` is used by crepe only."""
    frames = len(wav) // hop if frames is None else frames
    x = np.asarray(wav, dtype=np.float32)
    peak = f0_peak(x) if peak is None else peak
    x = x / peak if peak > 0 else x
    if method in ("crepe", "crepe-tiny"):  # the fork's call: every frame voiced, no periodicity threshold
        torchcrepe = _torchcrepe()
        with torch.inference_mode():
            f0 = torchcrepe.predict(torch.from_numpy(np.ascontiguousarray(x))[None], sr, hop, F0_MIN, F0_MAX,
                                    "tiny" if method == "crepe-tiny" else "full", decoder=_crepe_viterbi,
                                    batch_size=hop * 2, device=device, pad=True)
        return _resize_f0(f0[0].cpu().float().numpy(), frames)
    x = x.astype(np.float64)
    if method in ("dio", "harvest"):
        import pyworld

        analyse = pyworld.dio if method == "dio" else pyworld.harvest
        f0, t = analyse(x, fs=sr, f0_ceil=F0_MAX, f0_floor=F0_MIN, frame_period=1000 * hop / sr)
        f0 = np.round(pyworld.stonemask(x, f0, t, sr), 1)
        return _resize_f0(f0, frames)
    if method == "parselmouth":
        try:
            import parselmouth
        except ImportError as exc:
            raise ReenactError("F0 method parselmouth needs `pip install praat-parselmouth`") from exc
        f0 = parselmouth.Sound(x, sr).to_pitch_ac(time_step=hop / sr, voicing_threshold=0.6, pitch_floor=F0_MIN,
                                                  pitch_ceiling=F0_MAX).selected_array["frequency"]
        pad = (frames - len(f0) + 1) // 2
        return np.pad(f0, [(max(pad, 0), max(frames - len(f0) - pad, 0))])[:frames]
    raise ReenactError(f"unknown F0 method {method!r}; choose one of {', '.join(F0_METHODS)}")


def _torchcrepe():
    """torchcrepe (CREPE with its weights in the wheel). It imports torchaudio only to read files, which is
    never done here; torchaudio's wheels pin an older torch, so it need not be installed: a placeholder
    stands in while torchcrepe is imported."""
    import importlib
    import sys
    import types

    try:
        return importlib.import_module("torchcrepe")
    except ModuleNotFoundError as exc:
        if exc.name == "torchcrepe" or exc.name == "resampy":
            raise ReenactError("F0 methods crepe and crepe-tiny need torchcrepe: `pip install --no-deps "
                               "torchcrepe resampy` (--no-deps: its torchaudio requirement would replace torch)") from exc
        if exc.name != "torchaudio":
            raise
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")  # placeholder for torchcrepe.load.audio only
    try:
        for name in [m for m in sys.modules if m == "torchcrepe" or m.startswith("torchcrepe.")]:
            del sys.modules[name]
        return importlib.import_module("torchcrepe")
    finally:
        del sys.modules["torchaudio"]


CREPE_CENTS_PER_BIN, CREPE_CENTS_BIN0 = 20.0, 1997.3794084376191


@lru_cache(maxsize=1)
def _crepe_transition() -> np.ndarray:
    """torchcrepe's Viterbi transition matrix: from each of 360 bins to those at most 11 bins away."""
    steps = np.arange(360)
    transition = np.maximum(12 - np.abs(steps[None] - steps[:, None]), 0).astype(np.float64)
    transition /= transition.sum(axis=1, keepdims=True)
    transition.flags.writeable = False
    return transition


def _crepe_viterbi(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchcrepe's Viterbi decoder (pitch bins over 360 x 20 cents, transitions of at most 11 bins), with
    its dither (triangular, +-1 bin) drawn from a seeded generator instead of numpy's global one, so the
    F0 is the same on every run and in every thread."""
    import librosa

    probs = torch.softmax(logits, dim=1).cpu().numpy()
    bins = np.array([librosa.sequence.viterbi(p, _crepe_transition()).astype(np.int64) for p in probs])
    rng = np.random.default_rng(0)
    cents = CREPE_CENTS_PER_BIN * (bins + rng.triangular(-1, 0, 1, bins.shape)) + CREPE_CENTS_BIN0
    return torch.from_numpy(bins), torch.from_numpy(10 * 2 ** (cents / 1200)).to(logits.device)


def f0_peak(wav: np.ndarray) -> float:
    """The level compute_f0 scales its input by: the 0.999 quantile of |wav| (the fork's normalisation)."""
    return float(np.quantile(np.abs(wav), 0.999)) if len(wav) else 0.0


def get_features(wav: np.ndarray, sr: int, hop: int, encoder: ContentEncoder,
                 f0_method: str = "dio") -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Audio at the model's rate -> content [dim, frames], F0 [frames] (interpolated), voiced flag [frames]."""
    f0, uv = interpolate_f0(compute_f0(wav, sr, hop, f0_method))
    c = encoder.encode(S.resample(wav, sr, HUBERT_SR).astype(np.float32))
    return repeat_expand(c, len(f0)), f0, uv
