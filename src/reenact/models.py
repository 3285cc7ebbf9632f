"""Known model checkpoints: where they come from, their licence, and the local cache.

`reenact models list|fetch|path` is built on `list_models`, `fetch` and `model_path`.
Checkpoints live in the user cache: $REENACT_CACHE, else $XDG_CACHE_HOME/reenact, else the
platform's cache folder (~/.cache/reenact on Linux, ~/Library/Caches/reenact on macOS,
%LOCALAPPDATA%/reenact on Windows), under models/<name><suffix>.

A download resumes from the partial file a previous attempt left (HTTP Range), is checked
against its sha256 where one is known, and only then is renamed into place. Offline, the
error says exactly where to put a file downloaded by hand.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from reenact.errors import ReenactError
from reenact.files import sha256_file

log = logging.getLogger(__name__)

LIA_LICENSE = "CC BY-NC 4.0 (non-commercial use only; credit Wang et al., LIA, ICLR 2022)"
LIA_FOLDER = "https://drive.google.com/drive/folders/1N4QcnqUQwKUZivFV-YeBuPyH4pGJHooc"
HF = "https://huggingface.co"
SOVITS_BASE_LICENSE = "not stated by the uploader (so-vits-svc community base model); check the model page"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    url: str | None  # direct download URL; None where only a web page is known
    page: str  # where a person can download it by hand
    license: str
    sha256: str | None = None
    size: int | None = None  # bytes, where known
    suffix: str = ".pt"
    path: str | None = None  # where in the cache, when not <name><suffix> (files of a model folder)


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo("lia-vox", "LIA generator trained on VoxCeleb (faces), 256 px",
                  "https://drive.usercontent.google.com/download?id=1cC2BGsbvJ_CBkoWdkv5mtZnCXZ5gS0Zy"
                  "&export=download&confirm=t", LIA_FOLDER + " (file vox.pt)", LIA_LICENSE),
        ModelInfo("lia-taichi", "LIA generator trained on TaiChi-HD (full body), 256 px", None,
                  LIA_FOLDER + " (file taichi.pt)", LIA_LICENSE),
        ModelInfo("lia-ted", "LIA generator trained on TED-talks (upper body), 256 px", None,
                  LIA_FOLDER + " (file ted.pt)", LIA_LICENSE),
        ModelInfo("contentvec", "ContentVec (HuBERT-base, 94 M params, 378 MB) content features for so-vits-svc",
                  f"{HF}/lengyue233/content-vec-best/resolve/main/pytorch_model.bin",
                  "https://huggingface.co/lengyue233/content-vec-best (file pytorch_model.bin)",
                  "MIT (ContentVec, Qian et al. 2022; port by lengyue233)", suffix="/pytorch_model.bin"),
        ModelInfo("sovits-768-g0", "so-vits-svc 4.0v1 (768-dim) base generator for fine-tuning, about 183 MB",
                  f"{HF}/datasets/ms903/sovits4.0-768vec-layer12/resolve/main/sovits_768l12_pre_large_320k/"
                  "clean_G_320000.pth", "https://huggingface.co/datasets/ms903/sovits4.0-768vec-layer12",
                  SOVITS_BASE_LICENSE, suffix=".pth"),
        ModelInfo("sovits-768-d0", "so-vits-svc 4.0v1 (768-dim) base discriminator for fine-tuning, about 187 MB",
                  f"{HF}/datasets/ms903/sovits4.0-768vec-layer12/resolve/main/sovits_768l12_pre_large_320k/"
                  "clean_D_320000.pth", "https://huggingface.co/datasets/ms903/sovits4.0-768vec-layer12",
                  SOVITS_BASE_LICENSE, suffix=".pth"),
        ModelInfo("sovits-legacy-g0", "so-vits-svc 4.0 legacy (256-dim) base generator, 181 MB",
                  f"{HF}/therealvul/so-vits-svc-4.0-init/resolve/main/G_0.pth",
                  "https://huggingface.co/therealvul/so-vits-svc-4.0-init (file G_0.pth)", SOVITS_BASE_LICENSE,
                  suffix=".pth"),
        ModelInfo("sovits-legacy-d0", "so-vits-svc 4.0 legacy (256-dim) base discriminator, 187 MB",
                  f"{HF}/therealvul/so-vits-svc-4.0-init/resolve/main/D_0.pth",
                  "https://huggingface.co/therealvul/so-vits-svc-4.0-init (file D_0.pth)", SOVITS_BASE_LICENSE,
                  suffix=".pth"),
    ]
}
ALIASES = {"vox": "lia-vox", "taichi": "lia-taichi", "ted": "lia-ted"}

# LivePortrait: one folder of five files, in the official layout (pretrained_weights/liveportrait/).
LIVEPORTRAIT_PAGE = "https://huggingface.co/KwaiVGI/LivePortrait"
LIVEPORTRAIT_LICENSE = ("MIT (KwaiVGI/LivePortrait, Guo et al. 2024); its InsightFace face detector, which reenact "
                        "does not use, is non-commercial")
LIVEPORTRAIT_FILES = {
    "appearance": ("base_models/appearance_feature_extractor.pth", "appearance feature extractor F (0.8 M params)"),
    "motion": ("base_models/motion_extractor.pth", "motion extractor M, ConvNeXt-V2 tiny (28 M params)"),
    "warping": ("base_models/warping_module.pth", "warping module W (46 M params)"),
    "spade": ("base_models/spade_generator.pth", "SPADE generator G, 512 px (55 M params)"),
    "retargeting": ("retargeting_models/stitching_retargeting_module.pth", "stitching, eye and lip MLPs (0.2 M)"),
}
for _key, (_rel, _what) in LIVEPORTRAIT_FILES.items():
    MODELS[f"liveportrait-{_key}"] = ModelInfo(
        f"liveportrait-{_key}", f"LivePortrait (humans) {_what}",
        f"{HF}/KwaiVGI/LivePortrait/resolve/main/liveportrait/{_rel}",
        f"{LIVEPORTRAIT_PAGE} (file liveportrait/{_rel})", LIVEPORTRAIT_LICENSE, suffix=".pth",
        path=f"liveportrait/{_rel}")
# a name that stands for several files: `reenact models fetch liveportrait` gets them all
GROUPS = {"liveportrait": [f"liveportrait-{k}" for k in LIVEPORTRAIT_FILES]}


def cache_dir() -> Path:
    """The folder checkpoints are cached in (not created here)."""
    if os.environ.get("REENACT_CACHE"):
        return Path(os.environ["REENACT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "reenact"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "reenact"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "reenact"
    return Path.home() / ".cache" / "reenact"


def get_model(name: str) -> ModelInfo:
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise ReenactError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_path(name: str | ModelInfo) -> Path:
    """Where a model's checkpoint is (or would be) cached."""
    if isinstance(name, str) and name in GROUPS:
        return cache_dir() / "models" / name
    info = name if isinstance(name, ModelInfo) else get_model(name)
    return cache_dir() / "models" / (info.path or f"{info.name}{info.suffix}")


def list_models() -> list[tuple[ModelInfo, Path, bool]]:
    """Every known model, its cache path and whether that file is present."""
    return [(m, model_path(m), model_path(m).is_file()) for m in MODELS.values()]


def manual_instructions(info: ModelInfo) -> str:
    return f"download it by hand from {info.page} and save it as {model_path(info)}"


def fetch(name: str | ModelInfo, progress: Callable[[int, int | None], None] | None = None,
          force: bool = False, timeout: float = 30.0) -> Path:
    """Download a model into the cache (resuming a partial download); return its path.

    `progress(done_bytes, total_bytes_or_None)` is called as data arrives. A group name
    (`liveportrait`) fetches each of its files and returns their folder.
    """
    if isinstance(name, str) and name in GROUPS:
        for member in GROUPS[name]:
            fetch(member, progress, force, timeout)
        return model_path(name)
    info = name if isinstance(name, ModelInfo) else get_model(name)
    path = model_path(info)
    if path.is_file() and not force:
        return path
    if info.url is None:
        raise ReenactError(f"{info.name} has no direct download link; {manual_instructions(info)}", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    done = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(info.url, headers={"User-Agent": "reenact"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if "text/html" in response.headers.get("Content-Type", ""):
                raise ReenactError(f"the server sent a web page instead of {info.name} (quota or login page?); "
                                   f"{manual_instructions(info)}", path)
            if done and response.status != 206:  # server ignored the range: start again
                done = 0
            length = response.headers.get("Content-Length")
            total = done + int(length) if length is not None else info.size
            with open(partial, "ab" if done else "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and partial.exists():  # the partial file is already complete
            pass
        else:
            raise ReenactError(f"download of {info.name} failed (HTTP {exc.code}); {manual_instructions(info)}",
                               path) from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        kept = "the partial download is kept and resumes next time; or " if partial.exists() else ""
        raise ReenactError(f"cannot download {info.name} ({reason}); {kept}{manual_instructions(info)}", path) from exc
    if info.sha256 and (digest := sha256_file(partial)) != info.sha256:
        partial.unlink()
        raise ReenactError(f"downloaded {info.name} has sha256 {digest}, expected {info.sha256}; deleted it, "
                           "try again", path)
    os.replace(partial, path)
    log.info("saved %s (%d bytes)", path, path.stat().st_size)
    return path


def resolve_liveportrait(spec: str | Path | None) -> Path | str:
    """The LivePortrait weights folder: a folder path, `liveportrait` / None (the cache), or 'deterministic'."""
    if str(spec) == "deterministic":
        return "deterministic"
    if spec is None or str(spec) == "liveportrait":
        folder = model_path("liveportrait")
        missing = [m for m in GROUPS["liveportrait"] if not model_path(m).is_file()]
        if missing:
            files = ", ".join(LIVEPORTRAIT_FILES[m.split("-", 1)[1]][0] for m in missing)
            raise ReenactError(f"LivePortrait weights are not downloaded ({files} missing); run `reenact models fetch "
                               f"liveportrait`, or download the folder liveportrait/ from {LIVEPORTRAIT_PAGE} by hand "
                               f"and pass it with --checkpoint, or put its files under this folder", folder)
        return folder
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise ReenactError("LivePortrait takes its weights folder (the one holding base_models/ and "
                           "retargeting_models/), not a single file", path)
    raise ReenactError("LivePortrait weights folder not found (pass the official liveportrait/ folder, "
                       "'liveportrait' for the downloaded one, or 'deterministic')", path)


def resolve_checkpoint(spec: str | Path) -> Path | str:
    """A checkpoint given as a file path, a known model name, or 'deterministic' (test weights)."""
    if str(spec) == "deterministic":
        return "deterministic"
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if str(spec) in MODELS or str(spec) in ALIASES:
        info = get_model(str(spec))
        cached = model_path(info)
        if cached.is_file():
            return cached
        raise ReenactError(f"model {info.name} is not downloaded; run `reenact models fetch {info.name}`, or "
                           f"{manual_instructions(info)}", cached)
    raise ReenactError(f"checkpoint not found (not a file, nor one of {', '.join(sorted(MODELS))}, "
                       "nor 'deterministic')", path)
