"""A camera as a source of images: a frame every 1/fps seconds, through picamera2 (the Raspberry
Pi camera stack, where installed) or OpenCV (a USB camera; `pip install 'edgefleet[camera]'`).

Each frame goes to the pipeline as a `.npy` array of RGB (or gray) pixels, which the image
framer reads like any image; nothing is compressed on the way. Neither library is imported
before start(): a device without a camera never loads them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from edge_agent.checks import positive_float, positive_int
from edge_agent.errors import ConfigError, TransportError
from edge_agent.imaging import encode_npy
from edge_agent.sources.base import Pacer, ThreadedSource, transport_error

log = logging.getLogger(__name__)

BACKENDS = ("auto", "picamera2", "opencv")
CAMERA_HINT = (
    "a camera input needs picamera2 (Raspberry Pi OS: sudo apt install python3-picamera2) or "
    "OpenCV (pip install 'edgefleet[camera]')"
)


class Camera(Protocol):
    """One open camera: `read()` gives an (h, w, 3) RGB or (h, w) gray uint8 frame."""

    def read(self) -> np.ndarray: ...

    def close(self) -> None: ...


CameraOpener = Callable[[int | str, tuple[int, int] | None], Camera]  # (device, size) -> Camera


class CameraSource(ThreadedSource):
    """Frames from a camera, `fps` a second (at most; a slow camera sets its own pace).

    `device` is the camera's number (0: the first) or, for OpenCV, a device path or stream
    URL; `width` and `height` ask the camera for a frame size (it may pick the nearest it
    has; the framer resizes to the card's in any case). `backend` "auto" takes picamera2 if it
    is importable, else OpenCV; start() raises ConfigError when the chosen one is not
    installed (`opener` stands in for the library: tests). A camera that cannot be opened
    or stops giving frames is closed, counted `lost` and opened again after `reopen_delay`
    seconds, until stopped.
    """

    def __init__(
        self,
        device: int | str = 0,
        *,
        fps: float = 1.0,
        width: int | None = None,
        height: int | None = None,
        backend: str = "auto",
        reopen_delay: float = 2.0,
        name: str | None = None,
        max_image_bytes: int = 64 * 1024 * 1024,
        opener: CameraOpener | None = None,
    ) -> None:
        where = "camera source"
        if isinstance(device, bool) or not isinstance(device, int | str) or device == "":
            raise ConfigError(
                f"{where}: 'device' expected a camera number (0 is the first) or a path, "
                f"found {device!r}"
            )
        if backend not in BACKENDS:
            raise ConfigError(
                f"{where}: 'backend' expected one of {', '.join(BACKENDS)}, found {backend!r}"
            )
        max_image_bytes = positive_int(where, "max_image_bytes", max_image_bytes)
        super().__init__(name or f"camera:{device}", max_image_bytes, where)
        self.device = device
        self.fps = positive_float(where, "fps", fps)
        self.size = None
        if width is not None or height is not None:
            if width is None or height is None:
                raise ConfigError(f"{where}: 'width' and 'height' expected together")
            self.size = (positive_int(where, "width", width), positive_int(where, "height", height))
        self.backend = backend
        self.reopen_delay = positive_float(where, "reopen_delay", reopen_delay)
        self.error: TransportError | None = None
        self._opener = opener
        self._open_camera: CameraOpener | None = None
        self._camera: Camera | None = None
        self._stats.update({"frames": 0, "opened": 0})

    def _before_start(self) -> None:
        self._open_camera = self._opener or camera_opener(self.backend)

    def _input_open(self) -> bool:
        return self._camera is not None

    def _run(self, stop: threading.Event) -> None:
        pacer = Pacer(self.fps)
        lost = False
        assert self._open_camera is not None
        while not stop.is_set():
            try:
                self._camera = self._open_camera(self.device, self.size)
            except Exception as exc:  # each library raises its own: RuntimeError, OSError...
                self._failed("cannot open", exc, first=not lost)
                lost = True
                if stop.wait(self.reopen_delay):
                    return
                continue
            self._count("opened")
            if lost:
                self._count("reopened")
            self.error, lost = None, False
            log.info("source %s: camera open", self.name)
            try:
                self._frames(pacer, stop)
            except Exception as exc:  # a camera unplugged mid-stream
                self._count("lost")
                self._failed("lost", exc, first=True)
                lost = True
            finally:
                camera, self._camera = self._camera, None
                _close_quietly(camera)
            if stop.wait(self.reopen_delay):
                return

    def _frames(self, pacer: Pacer, stop: threading.Event) -> None:
        assert self._camera is not None
        while pacer.wait(stop):
            frame = np.asarray(self._camera.read())
            if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
                raise TransportError(
                    f"expected an (h, w[, c]) uint8 frame, got {frame.dtype} {frame.shape}"
                )
            self._count("frames")
            data = encode_npy(frame)
            if len(data) > self._max_line_bytes:
                self._count("oversize")
                data = data[: self._max_line_bytes + 1]
            self._deliver(data)

    def _failed(self, what: str, exc: Exception, first: bool) -> None:
        self.error = transport_error(f"camera {self.device!r}: {what}", exc)
        (log.warning if first else log.debug)("source %s: %s", self.name, self.error)


def camera_opener(backend: str) -> CameraOpener:
    """(device, size) -> Camera, by picamera2 or OpenCV; ConfigError naming what to install."""
    if backend in ("auto", "picamera2"):
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            if backend == "picamera2":
                raise ConfigError(f"camera source: backend 'picamera2': {CAMERA_HINT}") from None
        else:
            return lambda device, size: PiCamera(Picamera2, device, size)
    try:
        import cv2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(f"camera source: {CAMERA_HINT}") from None
    return lambda device, size: OpenCvCamera(cv2, device, size)


class PiCamera:
    """picamera2: RGB frames from the camera's main stream."""

    def __init__(self, picamera2: Any, device: int | str, size: tuple[int, int] | None) -> None:
        if not isinstance(device, int):
            raise ConfigError(f"camera source: picamera2 expects a camera number, got {device!r}")
        self._cam = picamera2(device)
        # "RGB888" is stored B, G, R in memory (libcamera's naming): flipped in read()
        main: dict[str, Any] = {"format": "RGB888", **({"size": size} if size else {})}
        self._cam.configure(self._cam.create_video_configuration(main=main))
        self._cam.start()

    def read(self) -> np.ndarray:
        return np.ascontiguousarray(self._cam.capture_array("main")[:, :, 2::-1])

    def close(self) -> None:
        self._cam.stop()
        self._cam.close()


class OpenCvCamera:
    """OpenCV's VideoCapture: BGR frames, given as RGB."""

    def __init__(self, cv2: Any, device: int | str, size: tuple[int, int] | None) -> None:
        self._cap = cv2.VideoCapture(device)
        if not self._cap.isOpened():
            self._cap.release()
            raise TransportError(f"OpenCV cannot open camera {device!r}")
        if size is not None:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])

    def read(self) -> np.ndarray:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise TransportError("the camera gave no frame")
        return frame if frame.ndim == 2 else np.ascontiguousarray(frame[:, :, 2::-1])

    def close(self) -> None:
        self._cap.release()


def _close_quietly(camera: Camera | None) -> None:
    if camera is None:
        return
    try:
        camera.close()
    except Exception:  # closing a camera that went away can fail; it is being dropped anyway
        log.debug("closing the camera failed", exc_info=True)
