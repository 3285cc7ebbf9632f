"""Fuzz the readers of untrusted media: seeded byte flips of a real MP4, fed to three entry points.

Entry points (each mutation runs in a forked child with a time limit, so a hang is seen as one):
  verify    `reenact verify FILE` (exit 0 marked, 1 not marked, 2 could not read)
  decode    what `animate` does with its driver: probe, decode every frame, read the audio
  evaluate  `reenact evaluate face FILE --source examples/portrait.png --driver BASE`

The base file is the first second of examples/driver.mp4 (H.264 + AAC, stream copy, moov first), so
mutations hit a real bitstream; half of the mutations flip bytes in the header (ftyp + moov boxes), half
in the payload (mdat). Each mutation flips 1 to 8 bytes, seeded by (seed, entry point, index).
A run is fine when it ends with exit code 0, 1 or 2 (a one-line error); a traceback (any other
exception) or a hang is counted and its first lines are printed. A hang is a run over --timeout seconds and
over 5 times what the unmutated file takes (measured first: a loaded machine slows every run).

    python benchmarks/fuzz.py [--count 200] [--seed 0] [--entry verify decode evaluate] [--timeout 120]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ENTRIES = ("verify", "decode", "evaluate")


def cut_clip(src: Path, dst: Path, seconds: float = 1.0) -> Path:
    """The first `seconds` of `src`, packets copied unchanged (video and audio), moov at the front."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        streams = {}
        for s in (inp.streams.video[0], *inp.streams.audio[:1]):
            streams[s.index] = out.add_stream_from_template(s)
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.dts is None:
                continue
            if packet.pts is not None and float(packet.pts * packet.time_base) >= seconds:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def header_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the top-level MP4 boxes other than mdat (ftyp, moov, ...): the header."""
    spans, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if size == 1 and pos + 16 <= len(data):
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        if size < 8:
            size = len(data) - pos
        if kind != b"mdat":
            spans.append((pos, min(pos + size, len(data))))
        pos += size
    return spans or [(0, min(len(data), 4096))]


def mutate(data: bytes, rng: np.random.Generator, where: str) -> bytes:
    """Flip 1-8 bytes (xor with a non-zero value), in the header boxes or in the payload."""
    out = bytearray(data)
    spans = header_spans(data)
    if where == "header":
        ranges = spans
    else:
        covered = np.zeros(len(data), bool)
        for a, b in spans:
            covered[a:b] = True
        ranges = [(int(np.flatnonzero(~covered)[0]), len(data))] if (~covered).any() else spans
    for _ in range(int(rng.integers(1, 9))):
        a, b = ranges[int(rng.integers(len(ranges)))]
        i = int(rng.integers(a, b))
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


def run_entry(entry: str, path: Path, base: Path) -> tuple[str, str]:
    """Run one entry point on `path`: ("ok", exit code) or ("traceback", text)."""
    from typer.testing import CliRunner

    from reenact.cli import app
    from reenact.errors import ReenactError

    if entry == "decode":
        from reenact.media.audio import read_audio
        from reenact.media.video import iter_frames, probe

        try:
            info = probe(path)
            n = sum(1 for _ in iter_frames(path, info.fps))
            if info.has_audio:
                read_audio(path)
            return "ok", f"0 ({n} frames)"
        except ReenactError:
            return "ok", "2"
        except Exception:  # noqa: BLE001 - what the fuzzer looks for
            return "traceback", traceback.format_exc()
    args = {"verify": ["verify", str(path)],
            "evaluate": ["evaluate", "face", str(path), "--source", str(EXAMPLES / "portrait.png"),
                         "--driver", str(base), "--samples", "4"]}[entry]
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "traceback", "".join(traceback.format_exception(result.exception))
    if result.exit_code not in (0, 1, 2) or (entry != "verify" and result.exit_code == 1):
        return "traceback", f"exit code {result.exit_code}: {result.output[-500:]}"
    return "ok", str(result.exit_code)


def _child(conn, entry: str, path: str, base: str) -> None:
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        try:
            conn.send(run_entry(entry, Path(path), Path(base)))
        except BaseException:  # noqa: BLE001 - reported to the parent
            conn.send(("traceback", traceback.format_exc()))


def run_isolated(entry: str, path: Path, base: Path, timeout: float) -> tuple[str, str]:
    """run_entry in a forked child; ("hang", "") when it takes longer than `timeout` seconds."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, entry, str(path), str(base)))
    proc.start()
    child.close()
    if parent.poll(timeout):
        try:
            outcome = parent.recv()
        except EOFError:
            outcome = None
        proc.join(10)
    else:
        outcome = ("hang", "")
    if proc.is_alive():
        proc.kill()
        proc.join()
    if outcome is None:
        outcome = ("traceback", f"child died with exit code {proc.exitcode}")
    return outcome


def preload() -> None:
    """Import what the entry points use once, in the parent: each forked child then starts at once."""
    import reenact.cli  # noqa: F401
    import reenact.evaluate.face  # noqa: F401
    import reenact.media.audio  # noqa: F401
    import reenact.provenance.audio_mark  # noqa: F401
    import reenact.provenance.manifest  # noqa: F401
    import reenact.provenance.verify  # noqa: F401
    import reenact.provenance.video_mark  # noqa: F401


def fuzz(entry: str, base: Path, count: int, seed: int, folder: Path, timeout: float,
         log=print, start: int = 0, verbose: bool = False, only: list[int] | None = None) -> dict:
    """`count` mutations of `base` through `entry`; counts of outcomes and the failures' first lines."""
    preload()
    data = base.read_bytes()
    # A hang is a run far slower than the unmutated file's: on a loaded machine a fixed limit would count
    # slow-but-finishing runs (evaluate takes 20 s alone, 90 s at load 20 under nice).
    start_time = time.perf_counter()
    kind, detail = run_isolated(entry, base, base, max(timeout, 600))
    reference = time.perf_counter() - start_time
    timeout = max(timeout, 5 * reference)
    log(f"  {entry}: the unmutated file takes {reference:.0f} s ({kind}, exit code {detail.split()[0]}); "
        f"a run over {timeout:.0f} s counts as a hang")
    counts = {"ok": 0, "traceback": 0, "hang": 0}
    codes: dict[str, int] = {}
    failures = []
    for i in (only if only else range(start, start + count)):
        rng = np.random.default_rng([seed, ENTRIES.index(entry), i])
        where = "header" if i % 2 == 0 else "payload"
        path = folder / f"{entry}_{i:04d}.mp4"
        path.write_bytes(mutate(data, rng, where))
        kind, detail = run_isolated(entry, path, base, timeout)
        counts[kind] += 1
        if kind == "ok":
            code = detail.split()[0]
            codes[code] = codes.get(code, 0) + 1
            path.unlink()
            if verbose:
                log(f"  {entry} #{i} ({where}): exit code {code}")
        else:
            failures.append((i, where, kind, detail))
            log(f"  {entry} #{i} ({where}): {kind}\n    " + "\n    ".join(detail.strip().splitlines()[-3:]))
    return {"entry": entry, "count": len(only) if only else count, **counts, "exit_codes": codes, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="mutations per entry point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entry", nargs="+", default=list(ENTRIES), choices=ENTRIES)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as a hang (at "
                        "least 5 times what the unmutated file takes)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the failing mutations in this folder")
    parser.add_argument("--start", type=int, default=0, help="first mutation index (split a run over processes)")
    parser.add_argument("--verbose", action="store_true", help="print every mutation's outcome")
    parser.add_argument("--only", type=lambda text: [int(x) for x in text.split(",")], default=None,
                        help="run only these mutation indices (comma-separated), e.g. to rerun failures")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"# fuzz: {args.count} mutations per entry point from #{args.start}, seed {args.seed}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        base = cut_clip(EXAMPLES / "driver.mp4", Path(tmp) / "base.mp4")
        print(f"base: {base.stat().st_size} bytes (first 1 s of examples/driver.mp4); header boxes "
              f"{header_spans(base.read_bytes())}")
        rows = []
        for entry in args.entry:
            start = time.perf_counter()
            result = fuzz(entry, base, args.count, args.seed, folder, args.timeout, start=args.start,
                          verbose=args.verbose, only=args.only)
            result["seconds"] = time.perf_counter() - start
            rows.append(result)
            print(f"{entry}: {result['count']} mutations, {result['traceback']} tracebacks, {result['hang']} hangs, "
                  f"exit codes {dict(sorted(result['exit_codes'].items()))}, {result['seconds']:.0f} s", flush=True)
    print("\n| entry point | mutations | tracebacks | hangs | exit codes | seconds |\n|---|---|---|---|---|---|")
    for r in rows:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["exit_codes"].items()))
        print(f"| {r['entry']} | {r['count']} | {r['traceback']} | {r['hang']} | {codes} | {r['seconds']:.0f} |")
    sys.exit(1 if any(r["traceback"] or r["hang"] for r in rows) else 0)


if __name__ == "__main__":
    main()
