"""Every CUDA path of the project on random weights, in a few minutes; one table.

    python benchmarks/gpu_check.py [--out table.md]

Needs a CUDA GPU (on a machine without one it prints "no CUDA device" and exits 0). Rows:

* LIA (deterministic weights, 256 px): `Animator` on CUDA in float32 and bfloat16 against the CPU float32
  output of the same 4 frames (max abs difference on [-1, 1] images), and frames/s on the GPU (batch 8);
* LivePortrait (deterministic weights, 512 px): `Animator` on CUDA in float32 and float16 (the official
  half precision) against the CPU float32 output of the same 2 frames (max abs difference on [0, 1]);
* so-vits-svc: the generator's inference (`SynthesizerTrn.infer`, the template model with deterministic
  weights) on CUDA float32 / bfloat16 against CPU float32 (max abs difference of the waveform);
* so-vits-svc training: 20 steps on CUDA with AMP (the tests' tiny model and synthetic dataset);
* LIA training: 20 steps on CUDA (bf16 autocast, the tests' tiny model on synthetic frame folders);
* NCCL: a one-process NCCL process group (all_reduce and one DDP step of a small model), then each training
  loop launched by torchrun with one process (`--nproc_per_node 1`). The loops wrap their models in DDP only
  for more than one process, which one GPU cannot give NCCL; run `torchrun --nproc_per_node N` on N GPUs.

Paste the table into docs/benchmarks.md with the GPU's name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ROWS: list[tuple[str, str, str]] = []


def row(name: str, fn) -> None:
    t = time.perf_counter()
    try:
        result = fn()
        status = "ok"
    except Exception as exc:  # a failing row is the finding; keep going
        result, status = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}", "FAILED"
        traceback.print_exc()
    ROWS.append((name, status, f"{result} ({time.perf_counter() - t:.1f} s)"))
    print(f"{name}: {status} {result}", flush=True)


def sync() -> None:
    torch.cuda.synchronize()


def _against_cpu(animator, drv: "torch.Tensor", ref: "torch.Tensor") -> tuple[float, float]:
    """(max |GPU - CPU| on the first len(ref) driver frames, frames/s over three passes of all of `drv`)."""
    out = animator(drv[:len(ref)]).float().cpu()
    sync()
    t = time.perf_counter()
    for _ in range(3):
        animator(drv)
    sync()
    return float((out - ref).abs().max()), 3 * len(drv) / (time.perf_counter() - t)


def lia_rows() -> None:
    from reenact.animate import lia

    gen = lia.load_generator("deterministic")
    g = torch.Generator().manual_seed(0)
    src, drv = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1, torch.rand(8, 3, 256, 256, generator=g) * 2 - 1
    cpu = lia.Animator(gen, "cpu")
    cpu.set_source(src)
    cpu.set_reference(drv[:1])
    ref = cpu(drv[:4])
    for dtype in (torch.float32, torch.bfloat16):
        def run(dtype=dtype):
            a = lia.Animator(gen, "cuda", dtype=dtype)
            a.set_source(src)
            a.set_reference(drv[:1])
            error, fps = _against_cpu(a, drv, ref)
            return f"max |cuda - cpu| {error:.2e}, {fps:.0f} frames/s"
        row(f"LIA {str(dtype).split('.')[1]} vs CPU", run)


def liveportrait_rows() -> None:
    from reenact.animate import liveportrait as lp

    g = torch.Generator().manual_seed(0)
    src, drv = torch.rand(1, 3, 256, 256, generator=g), torch.rand(8, 3, 256, 256, generator=g)
    cpu = lp.Animator(lp.load_folder("deterministic"))
    cpu.set_source(src, [0.3, 0.3], 0.1)
    cpu.set_reference(drv[:1])
    ref = cpu(drv[:2])
    for dtype in (torch.float32, torch.float16):
        def run(dtype=dtype):
            a = lp.Animator(lp.load_folder("deterministic"), device="cuda", dtype=dtype, chunk=8)
            a.set_source(src, [0.3, 0.3], 0.1)
            a.set_reference(drv[:1])
            error, fps = _against_cpu(a, drv, ref)
            return f"max |cuda - cpu| {error:.2e}, {fps:.1f} frames/s (batch 8)"
        row(f"LivePortrait {str(dtype).split('.')[1]} vs CPU", run)


def sovits_infer_rows() -> None:
    from reenact.voice import sovits

    config = sovits.config_template()
    net = sovits.build_generator(config).eval()
    net.load_state_dict(sovits.deterministic_state_dict(net))
    g = torch.Generator().manual_seed(0)
    frames = 100
    c = torch.randn(1, config["model"]["ssl_dim"], frames, generator=g)
    f0 = torch.full((1, frames), 220.0)
    uv = torch.ones(1, frames)
    sid = torch.zeros(1, 1, dtype=torch.long)

    def infer(model, device, dtype):
        torch.manual_seed(0)
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            out = model.to(device).infer(c.to(device), f0.to(device), uv.to(device), g=sid.to(device),
                                         noice_scale=0.0)
        return (out[0] if isinstance(out, tuple) else out).float().cpu()

    ref = infer(net, "cpu", torch.float32)
    for dtype in (torch.float32, torch.bfloat16):
        row(f"so-vits-svc generator {str(dtype).split('.')[1]} vs CPU",
            lambda dtype=dtype: f"max |cuda - cpu| {float((infer(net, 'cuda', dtype) - ref).abs().max()):.2e} "
                                f"(waveform, {ref.shape[-1]} samples)")


def training_rows(tmp: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from test_sovits_train import make_dataset, tiny_config, tiny_encoder

    from reenact.voice.sovits_train import train_sovits

    data = make_dataset(tmp / "speech")

    def sovits_amp():
        path = train_sovits(data, tmp / "sovits", tiny_config(steps=20, device="cuda", amp="auto",
                                                              checkpoint_interval=20), encoder=tiny_encoder())
        return f"20 steps with AMP, wrote {path.name}"

    row("so-vits-svc training, CUDA AMP", sovits_amp)

    frames = tmp / "frames"
    import cv2

    for k in range(2):
        d = frames / f"video{k}"
        d.mkdir(parents=True)
        for i in range(4):
            v, u = np.mgrid[0:40, 0:40] / 39
            img = np.stack([np.sin(6 * u + i * 0.3 + c + k) * 0.5 + 0.5 for c in range(3)], -1) * (1 - 0.3 * v[..., None])
            cv2.imwrite(str(d / f"{i:03d}.png"), (255 * img).astype(np.uint8))
    tiny = dict(size=32, style_dim=32, motion_dim=5, max_channels=16, batch_size=4, max_frames=16, log_every=5)

    def lia_train():
        from reenact.animate.lia_train import TrainConfig, train

        path = train(TrainConfig(data=str(frames), out=str(tmp / "lia"), iters=20, save_every=20, device="cuda",
                                 **{k: v for k, v in tiny.items()}))
        return f"20 steps (bf16 autocast), wrote {path.name}"

    row("LIA training, CUDA", lia_train)

    def nccl():
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
        dist.init_process_group("nccl", rank=0, world_size=1)
        try:
            x = torch.ones(4, device="cuda")
            dist.all_reduce(x)
            model = DDP(torch.nn.Linear(8, 8).cuda(), device_ids=[0])
            model(torch.randn(2, 8, device="cuda")).sum().backward()
            return f"all_reduce {x.tolist()[0]:.0f}, one DDP step"
        finally:
            dist.destroy_process_group()
            for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
                os.environ.pop(k, None)

    row("NCCL one-process group + DDP", nccl)

    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}"}

    def torchrun(args: list[str]) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *args]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if res.returncode:
            raise RuntimeError((res.stderr or res.stdout).strip().splitlines()[-1])
        return "torchrun --nproc_per_node 1: ok"

    row("LIA training loop under torchrun (CUDA)", lambda: torchrun(
        ["-m", "reenact.animate.lia_train", f"--data={frames}", f"--out={tmp / 'lia_tr'}", "--iters=5",
         "--save-every=5", *[f"--{k.replace('_', '-')}={v}" for k, v in tiny.items()]]))
    script = tmp / "sovits_run.py"
    script.write_text("from test_sovits_train import tiny_config, tiny_encoder\n"
                      "from reenact.voice.sovits_train import train_sovits\n"
                      f"train_sovits({str(data)!r}, {str(tmp / 'sovits_tr')!r}, tiny_config(steps=5, device='cuda', "
                      "amp='auto', checkpoint_interval=5), encoder=tiny_encoder())\n")
    row("so-vits-svc training loop under torchrun (CUDA)", lambda: torchrun([str(script)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run this on a machine with an NVIDIA GPU)")
        return
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    name = torch.cuda.get_device_name(0)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    t = time.perf_counter()
    lia_rows()
    liveportrait_rows()
    sovits_infer_rows()
    with tempfile.TemporaryDirectory() as tmp:
        training_rows(Path(tmp))
    lines = [f"GPU check on {name} (torch {torch.__version__}), {time.perf_counter() - t:.0f} s", "",
             "| check | status | result |", "| --- | --- | --- |", *[f"| {a} | {b} | {c} |" for a, b, c in ROWS]]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    if any(status != "ok" for _, status, _ in ROWS):
        sys.exit(1)


if __name__ == "__main__":
    main()
