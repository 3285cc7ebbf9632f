"""Audio: read a file's audio track, and mux audio into a video, on PyAV.

Audio comes either from a media file's audio track (a `Path`, streamed) or
from memory (`Audio`, e.g. converted speech). `mux_audio` copies the video
packets of an encoded video untouched and adds the audio as AAC, interleaved
by time, keeping the audio's offset to the video as it was in the driver.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Union

import av
import numpy as np

from reenact.errors import ReenactError
from reenact.media.container import open_container

log = logging.getLogger(__name__)

AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


@dataclass
class Audio:
    """Audio held in memory: float32 samples shaped (channels, n) in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        samples = np.asarray(self.samples, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[None, :]
        self.samples = samples

    @property
    def duration(self) -> float:
        return self.samples.shape[1] / float(self.sample_rate)

    @property
    def channels(self) -> int:
        return self.samples.shape[0]

    def mono(self) -> np.ndarray:
        return self.samples.mean(axis=0)


AudioSource = Union[Path, Audio]


def integrated_loudness(audio: Audio) -> float | None:
    """EBU R128 integrated loudness (LUFS) of `audio`; None when it is silent or shorter than 0.4 s."""
    import pyloudnorm

    if audio.duration < 0.4:
        return None
    value = float(pyloudnorm.Meter(audio.sample_rate).integrated_loudness(audio.samples.T.astype(np.float64)))
    return value if np.isfinite(value) else None


def normalise_loudness(audio: Audio, lufs: float) -> Audio:
    """`audio` with a gain that brings its integrated loudness to `lufs` (peaks over full scale are clipped)."""
    loudness = integrated_loudness(audio)
    if loudness is None:
        return audio
    samples = audio.samples * np.float32(10 ** ((lufs - loudness) / 20))
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > 1.0:
        log.warning("loudness %.1f LUFS: peaks at %.1f dB over full scale are clipped", lufs, 20 * np.log10(peak))
    return Audio(np.clip(samples, -1.0, 1.0), audio.sample_rate)


def has_audio(path: str | Path) -> bool:
    """True when the file has at least one audio stream."""

    with open_container(path) as container:
        return bool(container.streams.audio)


def read_audio(path: str | Path, sample_rate: int | None = None, mono: bool = False) -> Audio:
    """Decode a file's first audio track (resampled to `sample_rate` if given)."""

    path = Path(path)
    with open_container(path) as container:
        stream = _audio_stream(container, path)
        rate = sample_rate or _native_rate(stream)
        chunks = list(_decode(container, stream, path, rate, _layout(stream, mono)))
    if not chunks:
        raise ReenactError("audio track has no samples", path)
    return Audio(np.concatenate(chunks, axis=1), int(rate))


def audio_rate(path: str | Path) -> int:
    """The sample rate of a file's first audio track."""

    path = Path(path)
    with open_container(path) as container:
        return _native_rate(_audio_stream(container, path))


def iter_audio(path: str | Path, sample_rate: int, mono: bool = False) -> Iterator[np.ndarray]:
    """Decode a file's first audio track block by block, as `read_audio` does: float32 (channels, n) at
    `sample_rate`. For inputs too long to hold whole."""

    path = Path(path)
    with open_container(path) as container:
        stream = _audio_stream(container, path)
        yield from _decode(container, stream, path, sample_rate, _layout(stream, mono))


def _audio_stream(container, path: Path):
    """The first audio stream of an open container; raise when there is none."""
    if not container.streams.audio:
        raise ReenactError("has no audio track", path)
    stream = container.streams.audio[0]
    if stream.codec_context is None or not (stream.codec_context.sample_rate or stream.rate):
        raise ReenactError("audio track has a codec or sample rate that cannot be decoded (damaged file?)", path)
    return stream


def _native_rate(stream) -> int:
    return int(stream.codec_context.sample_rate or stream.rate)


def _layout(stream, mono: bool) -> str:
    """The decoded layout: mono when asked or when the stream has one channel, else stereo (downmixed)."""
    return "mono" if mono or (stream.codec_context.channels or 1) == 1 else "stereo"


def _decode(container, stream, path: Path, rate: int, layout: str) -> Iterator[np.ndarray]:
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    try:
        for frame in container.decode(stream):
            frame.pts = None
            for out in resampler.resample(frame):
                yield out.to_ndarray().astype(np.float32, copy=False)
        for out in resampler.resample(None):
            yield out.to_ndarray().astype(np.float32, copy=False)
    except av.error.FFmpegError as exc:
        raise ReenactError(f"audio track cannot be decoded ({exc})", path) from None


def _audio_offset(container: av.container.InputContainer) -> float:
    """Seconds from the first video timestamp to the first audio timestamp."""
    v = container.streams.video[0] if container.streams.video else None
    a = container.streams.audio[0]
    t_a = float(a.start_time * a.time_base) if a.start_time is not None else 0.0
    t_v = float(v.start_time * v.time_base) if v is not None and v.start_time is not None else 0.0
    return t_a - t_v


def _pcm_blocks(audio: AudioSource) -> tuple[Iterator[np.ndarray], int, str]:
    """Float32 (channels, n) blocks of the audio, aligned to the video's start."""
    if isinstance(audio, Audio):
        layout = "mono" if audio.channels == 1 else "stereo"
        samples = audio.samples if audio.channels <= 2 else audio.samples[:2]
        return iter([samples]), audio.sample_rate, layout


    container = open_container(audio)
    try:
        stream = _audio_stream(container, Path(audio))
    except ReenactError:
        container.close()
        raise
    rate = stream.codec_context.sample_rate or 44100
    if rate not in AAC_RATES:
        rate = 48000
    layout = "mono" if (stream.codec_context.channels or 1) == 1 else "stereo"
    offset = _audio_offset(container)

    def blocks() -> Iterator[np.ndarray]:
        try:
            skip = int(round(-offset * rate)) if offset < 0 else 0
            if offset > 0:
                yield np.zeros((1 if layout == "mono" else 2, int(round(offset * rate))), np.float32)
            for block in _decode(container, stream, Path(audio), rate, layout):
                if skip:
                    cut = min(skip, block.shape[1])
                    block, skip = block[:, cut:], skip - cut
                if block.shape[1]:
                    yield block
        finally:
            container.close()

    return blocks(), rate, layout


def mux_audio(
    video_path: Path,
    audio: AudioSource | None,
    out_path: Path,
    metadata: dict[str, str] | None = None,
    bitrate: int = 160_000,
) -> None:
    """Write `out_path`: the video packets of `video_path` plus `audio` as AAC."""
    with av.open(str(video_path)) as src, av.open(str(out_path), mode="w", format="mp4") as dst:
        for key, value in (metadata or {}).items():
            dst.metadata[key] = value
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        video_packets = (p for p in src.demux(vin) if p.dts is not None)
        if audio is None:
            for packet in video_packets:
                packet.stream = vout
                dst.mux(packet)
            return
        blocks, rate, layout = _pcm_blocks(audio)
        if rate not in AAC_RATES:
            blocks, rate = _resample_blocks(blocks, rate, 48000, layout), 48000
        aout = dst.add_stream("aac", rate=rate, layout=layout)
        aout.bit_rate = bitrate
        audio_packets = _encode_aac(aout, blocks, rate, layout)
        _interleave(dst, video_packets, vout, audio_packets)


def _resample_blocks(blocks: Iterator[np.ndarray], rate: int, new_rate: int, layout: str) -> Iterator[np.ndarray]:
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=new_rate)
    for block in blocks:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=layout)
        frame.sample_rate = rate
        for out in resampler.resample(frame):
            yield out.to_ndarray()
    for out in resampler.resample(None):
        yield out.to_ndarray()


def _encode_aac(stream, blocks: Iterator[np.ndarray], rate: int, layout: str) -> Iterator[av.Packet]:
    frame_size = 1024
    channels = 1 if layout == "mono" else 2
    pending = np.zeros((channels, 0), np.float32)
    pts = 0
    for block in blocks:
        block = np.clip(np.nan_to_num(block[:channels]), -1.0, 1.0).astype(np.float32)
        if block.shape[0] < channels:
            block = np.repeat(block, channels, axis=0)
        pending = np.concatenate([pending, block], axis=1)
        while pending.shape[1] >= frame_size:
            chunk, pending = pending[:, :frame_size], pending[:, frame_size:]
            yield from _encode_chunk(stream, chunk, rate, layout, pts)
            pts += frame_size
    if pending.shape[1]:
        yield from _encode_chunk(stream, pending, rate, layout, pts)
    yield from stream.encode(None)


def _encode_chunk(stream, chunk: np.ndarray, rate: int, layout: str, pts: int) -> Iterator[av.Packet]:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    yield from stream.encode(frame)


def _interleave(dst, video_packets: Iterator[av.Packet], vout, audio_packets: Iterator[av.Packet]) -> None:
    """Mux two packet streams in time order, holding at most one of each."""

    def seconds(packet: av.Packet) -> float:
        return float(packet.dts * packet.time_base) if packet.dts is not None else 0.0

    v = next(video_packets, None)
    a = next(audio_packets, None)
    while v is not None or a is not None:
        if a is None or (v is not None and seconds(v) <= seconds(a)):
            v.stream = vout
            dst.mux(v)
            v = next(video_packets, None)
        else:
            dst.mux(a)
            a = next(audio_packets, None)
