"""Signal features of sensor windows, in numpy: the one implementation that the converter runs
on the training windows and the agent on each window it frames, so training and serving
compute the same numbers (the parity check covers them too).

    from edge_agent.signal import signal_features, signal_names

    x = signal_features(windows, ["mean", "rms", "band_power:0-5"], rate_hz=50.0)
    # windows (n, samples, channels) -> x (n, channels * 3), columns channel by channel:
    signal_names(["ax", "ay", "az"], ["mean", "rms", "band_power:0-5"])
    # ["ax.mean", "ax.rms", "ax.band_power:0-5", "ay.mean", ...]

Train the model on `signal_features` of the training windows, then convert it with the same
names (`edgehub model convert --window ... --signal ...`). The names (their grammar:
edge_agent.protocol.signal_names):

- `mean`, `std` (population, ddof 0), `rms` (square root of the mean square), `min`, `max`,
  `ptp` (max - min): over the window's samples, per channel;
- `band_power:LO-HI`: the power of the channel in LO <= f < HI Hz, from the real FFT of the
  window at the card's `rate_hz` (no mean removed, no taper), normalized so that the bands
  of every frequency add up to the mean square: a band over all of 0 .. rate/2 (and past it)
  gives rms**2, a sine of amplitude A in the band gives A**2 / 2, the mean alone (0 Hz)
  gives mean**2.
"""

from edge_agent.signal.features import signal_features, signal_names

# What drift watches of a window the model takes whole (edge_agent.framing.watch): a handful
# of values per channel, never one per sample.
SUMMARY = ("mean", "std")

__all__ = ["SUMMARY", "signal_features", "signal_names"]
