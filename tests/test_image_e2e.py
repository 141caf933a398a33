"""An image model end to end: a digits classifier (8x8 gray images) converted, signed and rolled
out by a real hub to a whole agent over a private mosquitto, fed images from a folder (PNG files
dropped in, at twice the model's size) and from MQTT payloads (PGM on the digits' own 0..16
scale, and some that are not images at all).

The test counts for itself what went in and what came out: the predictions the agent publishes
on its local results topic (read by a subscriber of the test's own) against scikit-learn's on
the same images prepared by the test, the rows and rejections the hub stores from the telemetry
windows, and the drift reports at the hub, which flag a brighter camera by its image statistics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from cloud_hub.broker.local import RunningBroker
from converters.images import image_items, image_spec
from converters.pipeline import build_bundle
from edge_agent.protocol.messages import ModelRef
from tests.support.device_rig import Deployed, deployed
from tests.support.images import pgm, png

pytestmark = pytest.mark.broker
DEVICE = "cam-01"
MODEL = ModelRef("digits", 1)
SPEC = image_spec("8x8x1")
WAIT_S = 60.0
WINDOW = 40  # drift window, in images
TOPIC = "cam/door/image"


@dataclass
class Rig(Deployed):
    inbox: Path
    broker: RunningBroker

    def publish(self, payloads: list[bytes]) -> None:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            for payload in payloads:
                client.publish(TOPIC, payload, qos=1).wait_for_publish(WAIT_S)
        finally:
            client.disconnect()
            client.loop_stop()


class Digits:
    def __init__(self) -> None:
        data = load_digits()
        self.raw = data.images.astype(np.int64)  # 0..16
        self.pixels = ((self.raw * 255 + 8) // 16).astype(np.uint8)[..., None]
        self.y = data.target
        half = np.arange(len(self.y)) % 2 == 0
        self.train, self.reference = np.flatnonzero(half), np.flatnonzero(~half)
        x = image_items(self.pixels, SPEC)
        self.model = LogisticRegression(max_iter=3000).fit(
            x[self.train].reshape(-1, 64), self.y[self.train]
        )
        self.x = x
        # what the device is fed: images the reference never saw, in no writer's order
        self.stream = np.random.default_rng(7).permutation(self.train)

    def predict(self, pixels: np.ndarray) -> list[Any]:
        """scikit-learn's answers on the images, prepared by the test itself."""
        x = pixels.astype(np.float64).reshape(len(pixels), -1) / 255.0
        return [v.item() for v in self.model.predict(x)]


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, digits: Digits) -> Iterator[Rig]:
    more = (
        "[telemetry]\nstatus_interval_s = 0.2\ninterval_s = 0.2\n"
        # every row tested (no rate floor): the reports are checked against the rows fed
        f"[drift]\nwindow = {WINDOW}\nmin_interval_s = 0\n"
        f'[results]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\nqos = 1\n'
        '[[inputs]]\nkind = "folder"\npath = "inbox"\npattern = "*.png"\npoll_s = 0.05\n'
        'after = "move"\n'
        f'[[inputs]]\nkind = "mqtt"\ntopic = "cam/+/image"\nformat = "image"\nqos = 1\n'
        f'host = "{broker.host}"\nport = {broker.port}\nmax_image_bytes = 4096\n'
    )
    bundle = tmp_path / "digits-1.zip"
    ref = digits.reference
    build_bundle(
        digits.model,
        digits.x[ref],
        digits.y[ref],
        name="digits",
        version=1,
        out=bundle,
        input_spec=SPEC,
    )
    with deployed(broker, tmp_path, DEVICE, bundle, more, folders=("inbox",)) as rig:
        yield rig.extended(Rig, inbox=rig.folder / "inbox", broker=broker)


def drop_png(inbox: Path, name: str, pixels: np.ndarray) -> None:
    """A PNG written under a partial name and renamed in, as a careful camera app does."""
    tmp = inbox / f"{name}.part"
    tmp.write_bytes(png(pixels, 0))
    os.replace(tmp, inbox / name)


def test_an_image_model_fed_by_a_folder_and_by_mqtt_payloads(rig: Rig, digits: Digits) -> None:
    # (a) PNG files dropped into the folder, at 16x16: the agent resizes them to 8x8
    batch = digits.stream[:WINDOW]
    for k, i in enumerate(batch):
        doubled = digits.pixels[i].repeat(2, axis=0).repeat(2, axis=1)
        drop_png(rig.inbox, f"{k:03d}.png", doubled)
    got = rig.results.predictions(WINDOW)
    assert got == digits.predict(digits.pixels[batch])
    moved = sorted(p.name for p in (rig.inbox / "done").iterdir())
    assert moved == [f"{k:03d}.png" for k in range(WINDOW)] and len(list(rig.inbox.glob("*"))) == 1

    # (b) MQTT payloads: PGM on the digits' own scale, and three that are not images
    batch = digits.stream[WINDOW : 2 * WINDOW]
    bad = [png(digits.pixels[0], 0)[:-30], b"\x00 not an image", bytes(5000)]
    payloads = [pgm(digits.raw[i], 16) for i in batch]
    rig.publish(payloads[:10] + bad + payloads[10:])
    got = rig.results.predictions(2 * WINDOW)
    assert got[WINDOW:] == digits.predict(digits.pixels[batch])

    # the hub holds what the agent did: every image inferred once, the bad ones refused
    def counted() -> bool:
        windows = rig.windows()
        return sum(w.count for w in windows) == 2 * WINDOW and (
            sum(w.errors.get("bad-image", 0) for w in windows) == len(bad)
        )

    rig.wait("the telemetry windows at the hub", counted)
    rig.wait("two drift reports", lambda: len(rig.drift()) == 2)
    assert [r.status for r in rig.drift()] == ["ok", "ok"]
    rig.wait(
        "both inputs open, at the hub",
        lambda: (
            sorted(rig.open_inputs())
            == [f"folder:{rig.inbox}", f"mqtt:{rig.broker.host}:{rig.broker.port}/cam/+/image"]
        ),
    )

    # a brighter camera: the image statistics move, and the hub hears it
    batch = digits.stream[2 * WINDOW : 4 * WINDOW]
    lit = np.minimum(digits.raw[batch] + 4, 16)  # a quarter of the range brighter
    rig.publish([pgm(p, 16) for p in lit])
    rig.results.predictions(4 * WINDOW)
    rig.wait("four drift reports", lambda: len(rig.drift()) == 4)
    shifted = rig.drift()[2:]
    assert all(r.status != "ok" and "mean" in r.features_moved for r in shifted), [
        (r.status, r.features_moved) for r in shifted
    ]
    assert all(r.model == MODEL for r in rig.drift())
