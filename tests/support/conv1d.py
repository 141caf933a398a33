"""A Keras Conv1D that tells the accelerometer's motions apart (tests.support.motion), trained
here in a few seconds: what a new user tries first on (128, 3) windows."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np


def train_conv1d(windows: np.ndarray, labels: np.ndarray, path: Path) -> Any:
    """A Conv1D over (size, channels) windows, its classes the label indices 0..k-1, trained
    with a fixed seed and saved to `path` (.keras)."""
    keras.utils.set_random_seed(0)
    size, channels = windows.shape[1:]
    scale = keras.layers.Normalization(axis=-1)  # per channel: gravity on az is no feature
    scale.adapt(windows)
    model = keras.Sequential(
        [
            keras.Input((size, channels)),
            scale,
            keras.layers.Conv1D(8, 9, strides=2, activation="relu"),
            keras.layers.Conv1D(8, 5, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(int(labels.max()) + 1, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(windows, labels, epochs=15, batch_size=32, verbose=0)
    with warnings.catch_warnings():
        # Keras 3.15 saving variables calls np.array(tensor) in a way numpy 2 deprecates
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(path)
    return model
