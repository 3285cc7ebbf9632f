"""Streaming video decode and H.264 encode on PyAV.

`probe` reads a file's header and says clearly what is wrong with it;
`iter_frames` yields RGB frames one at a time at a constant frame rate
(variable-frame-rate input is resampled by timestamp, rotation metadata is
applied, 10-bit input is converted to 8-bit RGB); `VideoWriter` encodes H.264
(yuv420p, even dimensions) into a temporary file and renames it into place
only when the whole file is written, muxing an audio track if asked.
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from reenact.errors import ReenactError
from reenact.files import atomic_write, temporary_path
from reenact.media.audio import AudioSource, mux_audio
from reenact.media.container import check_output_path, open_container, short_error

log = logging.getLogger(__name__)

# Container formats that hold a still image rather than a video.
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe",
                  "gif", "gif_pipe", "jpegxl_pipe", "qoi_pipe", "pam_pipe", "ppm_pipe"}
_IMAGE_CODECS = {"png", "mjpeg", "bmp", "tiff", "webp", "jpegxl", "gif"}


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, as far as its header and a first frame say."""

    path: Path
    width: int  # displayed width, after rotation
    height: int  # displayed height, after rotation
    fps: Fraction  # the constant rate frames are delivered at
    frame_count: int  # estimate from the header; decoding may give a few fewer
    duration: float  # seconds (container duration; 0.0 when unknown)
    rotation: int  # degrees counter-clockwise stored in the display matrix
    codec: str
    pix_fmt: str
    has_audio: bool


def probe(path: str | Path) -> VideoInfo:
    """Describe a video file or raise `ReenactError` naming the problem."""
    path = Path(path)
    with open_container(path) as container:
        if container.format.name in _IMAGE_FORMATS:
            raise ReenactError("is a still image, not a video; give a video as driver", path)
        if not container.streams.video:
            kind = "an audio-only file" if container.streams.audio else "a file with no video stream"
            raise ReenactError(f"has no video stream ({kind}); give a video", path)
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a codec id FFmpeg does not know (a damaged header)
            raise ReenactError("video stream has a codec that cannot be decoded (damaged file?)", path)
        if stream.codec_context.name in _IMAGE_CODECS and (stream.frames or 0) <= 1:
            raise ReenactError("is a still image, not a video; give a video as driver", path)
        fps = _frame_rate(stream)
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        count = stream.frames or int(round(duration * fps)) if (stream.frames or duration) else 0
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise ReenactError(f"video stream cannot be decoded ({short_error(exc)})", path) from None
        if first is None:
            raise ReenactError("video has no frames", path)
        rotation = _rotation(first)
        w, h = first.width, first.height
        if rotation % 180:
            w, h = h, w
        return VideoInfo(
            path=path, width=w, height=h, fps=fps, frame_count=max(int(count), 1),
            duration=duration, rotation=rotation, codec=stream.codec_context.name,
            pix_fmt=str(first.format.name), has_audio=bool(container.streams.audio),
        )


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate and 0 < float(rate) <= 240:
            return Fraction(rate).limit_denominator(1001 * 1000)
    return Fraction(25)


def _rotation(frame: av.VideoFrame) -> int:
    try:
        return int(round(frame.rotation)) % 360
    except (AttributeError, TypeError):
        return 0


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    rotation = _rotation(frame)
    if rotation:
        # The display matrix stores a counter-clockwise angle; np.rot90 turns counter-clockwise.
        image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))
    return image


def iter_frames(path: str | Path, fps: Fraction | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames (H, W, 3) at a constant rate, one at a time.

    Frames are placed on a grid of 1/fps by their timestamps: a gap repeats the
    previous frame, two frames on one slot keep the first. For constant-rate
    input this yields exactly the decoded frames.
    """
    path = Path(path)
    with open_container(path) as container:
        if not container.streams.video:
            raise ReenactError("has no video stream; give a video", path)
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ReenactError("video stream has a codec that cannot be decoded (damaged file?)", path)
        stream.thread_type = "AUTO"
        rate = fps or _frame_rate(stream)
        tb = stream.time_base
        max_gap = int(10 * rate) + 1  # longer gaps are timestamp jumps, not dropped frames
        start = None
        next_index = 0
        previous: np.ndarray | None = None
        try:
            for frame in container.decode(stream):
                if frame.pts is None or tb is None:
                    index = next_index
                else:
                    if start is None:
                        start = frame.pts
                    index = int(round(float((frame.pts - start) * tb * rate)))
                if index < next_index:
                    continue  # a second frame on one slot of the grid
                gap = index - next_index
                if gap > max_gap:  # re-anchor the grid after a timestamp jump
                    start += int(round(gap / (rate * tb)))
                    gap = 0
                if previous is not None:
                    for _ in range(gap):
                        yield previous
                image = _to_rgb(frame)
                yield image
                previous = image
                next_index += gap + 1
        except av.error.FFmpegError as exc:
            if previous is None:
                raise ReenactError(f"video stream cannot be decoded ({short_error(exc)})", path) from None
            log.warning("%s: decoding stopped early after %d frames (%s)", path, next_index, short_error(exc))


class VideoWriter:
    """Encode RGB frames to H.264 MP4, written atomically.

    Frames go to a temporary file beside `path`; `close()` muxes the audio (if
    any) and renames the result into place. On error, or `abort()`, nothing is
    left behind. Odd frame sizes are padded by one edge pixel to even.

    Encoding runs on a worker thread fed through a short queue (`queue` frames,
    so memory stays bounded): the caller renders the next frame while the
    previous ones are converted to YUV and encoded (both release the GIL).
    """

    def __init__(
        self,
        path: str | Path,
        fps: Fraction | float,
        crf: int = 18,
        preset: str = "veryfast",
        metadata: dict[str, str] | None = None,
        threads: int = 0,
        queue: int = 4,
    ) -> None:
        self.path = check_output_path(path)
        self.fps = Fraction(fps).limit_denominator(1001 * 1000)
        self.crf = crf
        self.preset = preset
        self.metadata = dict(metadata or {})
        self.threads = threads
        self.frames_written = 0
        self._tmp = temporary_path(self.path, "encoded")  # the bare H.264 stream; close() remuxes it
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._queue_size = queue
        self._queue = None
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, width: int, height: int) -> None:
        self._size = (width + width % 2, height + height % 2)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1) / self.fps
        stream.options = {"crf": str(self.crf), "preset": self.preset}
        stream.thread_count = self.threads
        self._stream = stream

    def write(self, image: np.ndarray) -> None:
        """Append one RGB uint8 frame (H, W, 3)."""
        if self._container is None:
            self._open(image.shape[1], image.shape[0])
            if self._queue_size > 0:
                self._queue = queue_module.Queue(self._queue_size)
                self._worker = threading.Thread(target=self._work, name="reenact-encode", daemon=True)
                self._worker.start()
        if self._error is not None:
            raise self._error
        w, h = self._size
        if image.shape[1] != w or image.shape[0] != h:
            image = np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1]), (0, 0)), mode="edge")
        if self._queue is not None:
            self._queue.put((self.frames_written, np.ascontiguousarray(image)))
        else:
            self._encode(self.frames_written, image)
        self.frames_written += 1

    def _encode(self, index: int, image: np.ndarray | None) -> None:
        if image is None:
            packets = self._stream.encode()
        else:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            packets = self._stream.encode(frame)
        for packet in packets:
            self._container.mux(packet)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._encode(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def _drain(self) -> None:
        """Wait for the worker to encode everything queued."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        if self._error is not None:
            raise self._error

    def close(self, audio: AudioSource | None = None) -> Path:
        """Finish the video, mux `audio` if given, and move the file into place."""

        if self._container is None:
            self.abort()
            raise ReenactError("no frames were produced; nothing written", self.path)
        try:
            self._drain()
            self._encode(0, None)
            self._container.close()
            self._container = None
            with atomic_write(self.path) as out:  # remuxed into place: packets copied, audio and tags added
                mux_audio(self._tmp, audio, out, metadata=self.metadata)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._worker is not None:
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is being discarded anyway
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)


# Imported at the end for the type name used in VideoWriter.close's signature.
