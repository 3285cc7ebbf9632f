"""Benchmark the marks: their cost relative to an animate run, their invisibility, and attack by layer.

1. Runs `reenact.pipeline.animate` (landmark backend by default) on a 10 s driver
   (the first 10 s of ../shared/assets/drivers/vox_obama.mov, else
   examples/driver.mp4 looped to 10 s) with examples/portrait.png (680x676),
   once as is (the pipeline marks its output and times that as its 'mark'
   stage) and once with every marking step bypassed.
2. Times each marking step on the unmarked output as the pipeline runs it: the
   label + luma watermark per frame, the audio watermark (best of 3 runs each),
   the metadata tags and C2PA signing; also the extra H.264 encode time and size
   the watermark's grain causes (the frames are encoded with and without it at
   the pipeline's CRF, best of 3 each). The animate runs are timed once.
3. PSNR of marked against unmarked frames, SNR of the marked audio.
4. Applies each attack to the marked animate output with the ffmpeg CLI (and
   flips one byte in a video and in an audio packet), then reads every layer
   with `verify`: a markdown table. Also: the combined video attack at several
   output sizes, and the audio attacks on the shared speech clips.

    python benchmarks/provenance.py [--driver D.mp4] [--source S.png] [--seconds 10] [--backend landmark]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "assets"

ATTACKS = {
    "none": None,
    "H.264 CRF 28": ["-c:v", "libx264", "-crf", "28", "-c:a", "copy"],
    "downscale 50 %": ["-vf", "scale=trunc(iw/4)*2:trunc(ih/4)*2", "-c:v", "libx264", "-c:a", "copy"],
    "crop 10 % borders": ["-vf", "crop=trunc(iw*0.4)*2:trunc(ih*0.4)*2", "-c:v", "libx264", "-c:a", "copy"],
    "crop + downscale + CRF 28": ["-vf", "crop=trunc(iw*0.4)*2:trunc(ih*0.4)*2,scale=trunc(iw/4)*2:trunc(ih/4)*2",
                                  "-c:v", "libx264", "-crf", "28", "-c:a", "copy"],
    "AAC 128 kbit/s": ["-c:v", "copy", "-c:a", "aac", "-b:a", "128k"],
    "MP3 128 kbit/s (.mkv)": ["-c:v", "copy", "-c:a", "libmp3lame", "-b:a", "128k"],
    "resample 16 kHz": ["-c:v", "copy", "-ar", "16000", "-c:a", "aac", "-b:a", "128k"],
    "one flipped byte in a video packet": "flip:video",
    "one flipped byte in an audio packet": "flip:audio",
}


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-y", "-v", "error", *args], check=True)


def make_driver(folder: Path, driver: Path | None, seconds: float) -> Path:
    out = folder / "driver10.mp4"
    if driver is None:
        obama = SHARED / "drivers" / "vox_obama.mov"
        if obama.exists():
            driver = obama
        else:
            ffmpeg("-stream_loop", "2", "-i", str(REPO / "examples" / "driver.mp4"), "-t", str(seconds),
                   "-c:v", "libx264", "-crf", "16", "-c:a", "aac", str(out))
            return out
    ffmpeg("-i", str(driver), "-t", str(seconds), "-c:v", "libx264", "-crf", "16", "-c:a", "aac", str(out))
    return out


def flip_byte_in_packet(path: Path, kind: str) -> None:
    """Flip one byte in the middle of the middle packet of the first `kind` ("video"/"audio") stream."""
    import av

    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        packets = [(p.pos, p.size) for p in container.demux(stream) if p.size and p.pos is not None and p.pos >= 0]
    pos, size = packets[len(packets) // 2]
    data = bytearray(path.read_bytes())
    data[pos + size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def best_of(repeats: int, fn, *args):
    """Smallest wall time of `repeats` runs (other jobs on a shared machine only add time)."""
    times = []
    for _ in range(repeats):
        result, t = timed(fn, *args)
        times.append(t)
    return result, min(times)


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


@contextmanager
def marks_bypassed():
    """Run the pipeline with every marking step replaced by a no-op (for the unmarked baseline)."""
    import reenact.pipeline as pipeline
    from reenact.provenance.video_mark import VideoMarker

    def copy(src, dst, *args, **kwargs):
        shutil.copyfile(src, dst)
        return Path(dst)

    saved = {name: getattr(pipeline, name) for name in ("draw_label", "mark_audio", "sign_mp4")}
    mark = VideoMarker.mark
    pipeline.draw_label, pipeline.mark_audio, pipeline.sign_mp4 = (lambda f, *a, **k: f), (lambda a, *x, **k: a), copy
    VideoMarker.mark = lambda self, frame: frame
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(pipeline, name, fn)
        VideoMarker.mark = mark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", type=Path)
    parser.add_argument("--source", type=Path, default=REPO / "examples" / "portrait.png")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backend", default="landmark")
    parser.add_argument("--sizes", default="256,410,512,680", help="output sizes for the combined video attack")
    args = parser.parse_args()

    os.environ.setdefault("XDG_CONFIG_HOME", tempfile.mkdtemp(prefix="reenact-bench-config-"))
    from reenact.media.audio import read_audio
    from reenact.media.video import VideoWriter, iter_frames, probe
    from reenact.pipeline import AnimateConfig, animate
    from reenact.provenance import Claims, Payload, VideoMarker, draw_label, mark_audio, sign_mp4
    from reenact.provenance.audio_mark import snr
    from reenact.provenance.verify import verify
    from reenact.provenance.video_mark import psnr

    folder = Path(tempfile.mkdtemp(prefix="reenact-bench-prov-"))
    try:
        driver = make_driver(folder, args.driver, args.seconds)
        config = AnimateConfig(backend=args.backend)
        final = folder / "animated.mp4"
        result, t_marked = timed(animate, args.source, driver, final, config)
        plain = folder / "unmarked.mp4"
        with marks_bypassed():
            plain_result, t_plain_run = timed(animate, args.source, driver, plain, config)
        info = probe(final)
        n = result.frames
        t_in_loop = result.timings.get("mark", 0.0)
        print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"python {platform.python_version()}; other jobs may share the cores")
        print(f"animate ({args.backend}): {args.source.name} + {driver.name} ({args.seconds:g} s) -> "
              f"{info.width}x{info.height}, {n} frames")
        print(f"- with marks: {t_marked:.2f} s ({n / t_marked:.1f} frames/s), of which the pipeline's own 'mark' "
              f"stage (label + luma mark per frame, audio mark, signing): {t_in_loop:.2f} s = "
              f"**{100 * t_in_loop / t_marked:.1f} %**")
        print(f"- marks bypassed: {t_plain_run:.2f} s; difference {t_marked - t_plain_run:+.2f} s "
              f"({100 * (t_marked - t_plain_run) / t_plain_run:+.1f} %, includes run-to-run noise and the extra "
              f"H.264 work on the grain)")

        frames = list(iter_frames(plain))
        payload = Payload.new()
        marker = VideoMarker(payload)
        marker.field(*frames[0].shape[:2])  # the pattern is made once per size, as in a render
        labelled, t_label = best_of(3, lambda: [draw_label(f) for f in frames])
        marked, t_mark = best_of(3, lambda: [marker.mark(f) for f in labelled])
        ps = [psnr(a, b) for a, b in zip(labelled, marked)]

        def encode(images, path):
            with VideoWriter(path, info.fps, crf=config.crf, preset=config.preset) as w:
                for im in images:
                    w.write(im)
            return path.stat().st_size

        size_plain, t_plain = best_of(3, encode, labelled, folder / "plain.mp4")
        size_marked, t_enc_marked = best_of(3, encode, marked, folder / "wm.mp4")
        audio = read_audio(plain)
        marked_audio, t_audio = best_of(3, mark_audio, audio, payload)
        _, t_sign = timed(sign_mp4, folder / "wm.mp4", folder / "signed.mp4", Claims(payload))
        extra_encode = max(t_enc_marked - t_plain, 0.0)  # best of 3 each; both printed below
        total = t_label + t_mark + t_audio + t_sign + extra_encode
        print("\n## Cost of each marking step (best of 3), relative to the animate run with marks\n")
        print("| step | time | per frame | share of animate |")
        print("|---|---|---|---|")
        for name, t in [("visible label", t_label), ("luma watermark", t_mark),
                        ("extra H.264 time for the watermark's grain", extra_encode),
                        (f"audio watermark ({audio.duration:.1f} s, {audio.sample_rate} Hz)", t_audio),
                        ("metadata tags + C2PA signing", t_sign), ("**all marks**", total)]:
            print(f"| {name} | {t:.2f} s | {1000 * t / n:.1f} ms | {100 * t / t_marked:.1f} % |")
        print(f"\nH.264 CRF {config.crf} ({config.preset}) encode of the {n} frames (best of 3): {t_plain:.2f} s unmarked, "
              f"{t_enc_marked:.2f} s marked")
        print(f"H.264 CRF {config.crf} size: {size_plain / 1e6:.2f} MB unmarked, {size_marked / 1e6:.2f} MB marked "
              f"(+{100 * (size_marked / size_plain - 1):.0f} %)")
        print(f"PSNR marked vs unmarked frames: min {min(ps):.2f} dB, mean {np.mean(ps):.2f} dB (target >= 40)")
        print(f"audio SNR: {snr(audio, marked_audio):.1f} dB (target >= 30)")

        expected = result.payload
        rows = []
        for name, attack in ATTACKS.items():
            path = final
            if isinstance(attack, str):
                path = folder / "flipped.mp4"
                shutil.copyfile(final, path)
                flip_byte_in_packet(path, attack.split(":")[1])
            elif attack:
                path = folder / f"attack{len(rows)}{'.mkv' if 'libmp3lame' in attack else '.mp4'}"
                ffmpeg("-i", str(final), *attack, str(path))
            report, t_verify = timed(verify, path)
            rows.append(row(name, report, expected, t_verify))
        report, t_verify = timed(verify, plain)
        rows.append(row("(unmarked run: marks bypassed)", report, expected, t_verify))
        print(f"\n## Attack by layer on the animate output (payload {expected}); found (agreement, video pilot z)\n")
        print("| attack | C2PA manifest | video watermark | audio watermark | metadata tags | verify: marked | verify time |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        sizes(folder, args.sizes, ffmpeg)
        speech(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def row(name: str, report: dict, expected: str, seconds: float) -> str:
    v, a, m = report["video_watermark"], report["audio_watermark"], report["manifest"]

    def cell(layer):
        z = f", z {layer['pilot_z']:.0f}" if "pilot_z" in layer else ""
        if not layer.get("found"):
            return f"no ({layer.get('confidence', 0):.2f}{z})"
        ok = "" if layer["payload"] == expected else " WRONG PAYLOAD"
        return f"yes ({layer['confidence']:.2f}{z}){ok}"

    meta = report["metadata"].get("synthetic") == "true"
    return (f"| {name} | {m['state']} | {cell(v)} | {cell(a)} | {'yes' if meta else 'no'} | "
            f"{'yes' if report['marked'] else 'no'} | {seconds:.1f} s |")


def sizes(folder: Path, sizes: str, ffmpeg) -> None:
    """Video watermark under crop + downscale + CRF 28 at several output sizes (5 s of examples/driver.mp4)."""
    from reenact.provenance.mark import mark_file
    from reenact.provenance.payload import Payload
    from reenact.provenance.video_mark import detect_frames, sample_frames

    print("\n## Video watermark under crop 10 % + downscale 50 % + CRF 28, by output size\n")
    print("| output size | attacked size | found | agreement | pilot z |")
    print("|---|---|---|---|---|")
    for side in [int(s) for s in sizes.split(",") if s]:
        src, marked, attacked = folder / f"s{side}.mp4", folder / f"m{side}.mp4", folder / f"a{side}.mp4"
        ffmpeg("-i", str(REPO / "examples" / "driver.mp4"), "-t", "5", "-an", "-vf", f"scale={side}:{side}",
               "-c:v", "libx264", "-crf", "16", str(src))
        payload = Payload.new()
        mark_file(src, marked, payload)
        ffmpeg("-i", str(marked), "-vf", ATTACKS["crop + downscale + CRF 28"][1], "-c:v", "libx264", "-crf", "28",
               str(attacked))
        r = detect_frames(sample_frames(attacked))
        side2 = int(side * 0.8) // 2 // 2 * 2
        print(f"| {side}x{side} | {side2}x{side2} | {'yes' if r.found and r.payload == payload else 'no'} | "
              f"{r.confidence:.2f} | {r.pilot_z:.1f} |")


def speech(folder: Path) -> None:
    """Audio watermark on the shared speech clips: SNR and each attack."""
    import soundfile as sf

    from reenact.media.audio import read_audio
    from reenact.provenance.audio_mark import detect_audio, mark_audio, snr
    from reenact.provenance.payload import Payload

    clips = sorted((SHARED / "speech").glob("*.wav"))
    if not clips:
        return
    attacks = {"AAC 128k": (["-c:a", "aac", "-b:a", "128k"], ".m4a"),
               "MP3 128k": (["-c:a", "libmp3lame", "-b:a", "128k"], ".mp3"), "16 kHz": (["-ar", "16000"], ".wav")}
    print("\n## Audio watermark on the shared speech clips\n")
    print("| clip | length | SNR | " + " | ".join(attacks) + " |")
    print("|---|---|---|" + "---|" * len(attacks))
    for clip in clips:
        audio = read_audio(clip)
        payload = Payload.new()
        marked = mark_audio(audio, payload)
        wav = folder / "speech.wav"
        sf.write(wav, marked.samples.T, marked.sample_rate)
        cells = []
        for args, ext in attacks.values():
            out = folder / f"speech_attacked{ext}"
            ffmpeg("-i", str(wav), *args, str(out))
            found, got, conf = detect_audio(out)
            cells.append(f"{'yes' if found and got == payload else 'no'} ({conf:.2f})")
        print(f"| {clip.name} | {audio.duration:.1f} s | {snr(audio, marked):.1f} dB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
