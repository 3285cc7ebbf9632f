"""LIA speed: the official run_demo loop against reenact's animator, same weights, same frames.

The official loop (run_demo.py) re-encodes the source on every frame and runs batch 1:
    h_start = gen.enc.enc_motion(frames[0]); for f in frames: gen(source, f, h_start)
It is reproduced here with reenact's generator (same arithmetic, see tests/test_lia.py), so
both sides share weights, frames, threads and process. reenact's path encodes the source
once and animates batches of frames (`Animator`).

    python benchmarks/lia.py --frames 24 --batch 8 --threads 2
    python benchmarks/lia.py --driver ../shared/assets/drivers/vox_driving2.mp4 --checkpoint PATH

Prints frames/s of both, their ratio, peak resident memory of each phase, FLOPs per frame
(counted by torch's FlopCounterMode) and the FLOP-bound frame rate for this machine (the
measured throughput of a large 3x3 convolution, divided by FLOPs per frame).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from reenact.animate import lia


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM
    except OSError:
        pass


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_gflops(dtype: torch.dtype = torch.float32) -> float:
    """Throughput of a large 3x3 convolution (oneDNN, channels_last): a practical compute ceiling."""
    x = torch.randn(4, 512, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            F.conv2d(x, w, padding=1)
            best = min(best, time.perf_counter() - t)
    return 2 * 4 * 32 * 32 * 512 * 512 * 9 / best / 1e9


def load_frames(args: argparse.Namespace, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, frames) uint8 RGB at `size`: from a driver video if given, else a formula."""
    if args.driver:
        import cv2

        from reenact.media.video import iter_frames

        frames = []
        for i, frame in enumerate(iter_frames(args.driver)):
            if i > args.frames:
                break
            arr = frame if isinstance(frame, np.ndarray) else np.asarray(getattr(frame, "image", frame))
            frames.append(cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA))
        frames = np.stack(frames)
        return frames[0], frames[1:]
    v, u = np.mgrid[0:size, 0:size] / (size - 1)
    imgs = [np.stack([0.5 + 0.45 * np.sin(2 * np.pi * ((1.5 + c) * u + (2 - c / 2) * v + 0.02 * k + c / 3))
                      for c in range(3)], -1) for k in range(args.frames + 1)]
    imgs = np.round(255 * np.stack(imgs)).astype(np.uint8)
    return imgs[0], imgs[1:]


def official_loop(gen: torch.nn.Module, source: torch.Tensor, frames: torch.Tensor,
                  h_start: torch.Tensor | None = None) -> torch.Tensor:
    """run_demo.py's loop: gen(source, frame, h_start) per frame, batch 1, source re-encoded each time."""
    outs = []
    with torch.no_grad():
        if h_start is None:
            h_start = gen.enc.enc_motion(frames[:1])
        for i in range(frames.shape[0]):
            outs.append(gen(source, frames[i:i + 1], h_start))
    return torch.cat(outs)


def reenact_path(anim: lia.Animator, source: torch.Tensor, frames: torch.Tensor, batch: int) -> torch.Tensor:
    anim.set_source(source)
    anim.set_reference(frames[:1])
    return torch.cat([anim(frames[i:i + batch]) for i in range(0, frames.shape[0], batch)])


def load_official(repo: str, state: dict) -> torch.nn.Module:
    """The official Generator from a local checkout of github.com/wyhsirius/LIA (not shipped with reenact).

    Its one hard-coded `.cuda()` (ToFlow.forward) is made a no-op for CPU runs by patching
    torch.Tensor.cuda in this process; the checkout is not modified.
    """
    import sys
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # torch.qr / grid_sample deprecation notices
    sys.path.insert(0, str(Path(repo).resolve()))
    from networks.generator import Generator  # noqa: E402  (the official code)

    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    gen = Generator(256, 512, 20, 1).eval()
    gen.load_state_dict(state, strict=True)
    return gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="deterministic", help="checkpoint path, model name or 'deterministic'")
    ap.add_argument("--driver", help="driver video (frames are resized to 256); default: synthetic frames")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--official-frames", type=int, default=None, help="frames for the official loop (default: same)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--official-repo", help="also time the official code from this local LIA checkout")
    ap.add_argument("--official-per-round", type=int, default=2,
                    help="official-loop frames timed per reenact batch (interleaved)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    from reenact.models import resolve_checkpoint

    gen = lia.load_generator(resolve_checkpoint(args.checkpoint)).to(args.device)
    size = gen.cfg.size
    src_img, frame_imgs = load_frames(args, size)
    source, frames = lia.to_tensor(src_img[None]).to(args.device), lia.to_tensor(frame_imgs).to(args.device)
    n_off = min(args.official_frames or frames.shape[0], frames.shape[0])
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"LIA {size}px, checkpoint {args.checkpoint}, {frames.shape[0]} frames "
          f"({'synthetic' if not args.driver else args.driver}), {args.threads} threads, {args.device}")

    ceiling0 = machine_gflops(dtype) if args.device == "cpu" else float("nan")
    anim = lia.Animator(gen, device=args.device, dtype=dtype)
    loops = {"official-style loop (reenact Generator.forward)": gen}
    if args.official_repo:
        loops["official code (wyhsirius/LIA networks/)"] = load_official(args.official_repo, gen.state_dict())
    with torch.no_grad():
        h_start = gen.enc.enc_motion(frames[:1])
    # warm-up, then rounds that interleave the contenders, so that load from other processes
    # on a shared machine falls on all of them alike
    for g in loops.values():
        official_loop(g, source, frames[:1], h_start)
    reenact_path(anim, source, frames[:args.batch], args.batch)
    times = {k: 0.0 for k in loops} | {"reenact": 0.0}
    counts = {k: 0 for k in times}
    peak = {k: 0.0 for k in times}
    outs, refs = [], []
    t_source = time.perf_counter()
    anim.set_source(source)
    anim.set_reference(frames[:1])
    t_source = time.perf_counter() - t_source
    for start in range(0, frames.shape[0], args.batch):
        chunk = frames[start:start + args.batch]
        reset_peak_rss()
        sync()
        t = time.perf_counter()
        outs.append(anim(chunk))
        sync()
        times["reenact"] += time.perf_counter() - t
        counts["reenact"] += chunk.shape[0]
        peak["reenact"] = max(peak["reenact"], peak_rss_mib())
        for name, g in loops.items():
            if counts[name] >= n_off:
                continue
            sub = chunk[: max(1, min(args.official_per_round, n_off - counts[name]))]
            reset_peak_rss()
            sync()
            t = time.perf_counter()
            out = official_loop(g, source, sub, h_start)
            sync()
            times[name] += time.perf_counter() - t
            counts[name] += sub.shape[0]
            peak[name] = max(peak[name], peak_rss_mib())
            if name.startswith("official-style"):
                refs.append((start, out))
    out = torch.cat(outs)
    diff = max((out[s:s + r.shape[0]] - r).abs().max().item() for s, r in refs)
    fps = {k: counts[k] / times[k] for k in times}

    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            gen(source, frames[:1], h_start)
    flop_off = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        anim(frames[:1])
    flop_new = fc.get_total_flops()
    ceiling = max(ceiling0, machine_gflops(dtype)) if args.device == "cpu" else float("nan")  # best of start/end

    for name in loops:
        print(f"{name}: {fps[name]:6.2f} frames/s ({counts[name]} frames, batch 1, source re-encoded), "
              f"peak RSS {peak[name]:.0f} MiB")
    print(f"reenact Animator (batch {args.batch}, {args.dtype}): {fps['reenact']:6.2f} frames/s "
          f"({counts['reenact']} frames; source encoded once in {t_source:.2f} s), peak RSS {peak['reenact']:.0f} MiB")
    for name in loops:
        print(f"speed-up vs {name}: {fps['reenact'] / fps[name]:.2f}x")
    print(f"max |reenact - official-style loop| = {diff:.2e}")
    print(f"FLOPs per frame (conv/matmul, counted): official loop {flop_off / 1e9:.1f} GFLOP, "
          f"reenact {flop_new / 1e9:.1f} GFLOP")
    if args.device == "cpu":
        print(f"machine ceiling: {ceiling:.0f} GFLOP/s ({args.dtype} 512-channel 3x3 conv, {args.threads} threads, "
              f"measured now) -> FLOP-bound limit {ceiling * 1e9 / flop_off:.2f} frames/s for the official loop, "
              f"{ceiling * 1e9 / flop_new:.2f} frames/s for reenact; reenact runs at "
              f"{fps['reenact'] * flop_new / 1e9:.0f} GFLOP/s, the official-style loop at "
              f"{fps[next(iter(loops))] * flop_off / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
