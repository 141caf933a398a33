"""Checks of the options of an MQTT link (topics, the broker, the reconnect delay), shared by
the MQTT input and the local results feed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.checks import port_number, positive_int
from edge_agent.errors import ConfigError, MessageError
from edge_agent.protocol.topics import check_device_id

if TYPE_CHECKING:  # the session (and its socket client) loads with a link, not with the checks
    from edge_agent.mqtt.session import Backoff

PLACEHOLDER = "{device_id}"  # in a results topic: the device's id
_SAMPLE_ID = "device-1"


def check_topic(value: object, where: str, key: str = "topic", *, wildcards: bool) -> str:
    """An MQTT topic name (`wildcards=False`, for publishing) or subscription filter.

    Rules (MQTT 3.1.1 section 4.7): not empty, at most 65535 bytes of UTF-8, no NUL; in a
    filter '#' only as the whole last level and '+' only as a whole level; in a name neither.
    """
    if not isinstance(value, str) or not value:
        kind = "subscription filter" if wildcards else "topic name"
        raise ConfigError(f"{where}: '{key}' expected an MQTT {kind}, found {value!r}")
    if "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > 65535:
        raise ConfigError(
            f"{where}: '{key}' expected at most 65535 bytes and no NUL character,"
            f" found {value!r:.80}"
        )
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" not in level and "+" not in level:
            continue
        if not wildcards:
            raise ConfigError(
                f"{where}: '{key}' expected a topic name without wildcards ('+', '#'),"
                f" found {value!r}"
            )
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(
                f"{where}: '{key}' expected '#' only as the whole last level"
                f" (like 'sensors/#'), found {value!r}"
            )
        if "+" in level and level != "+":
            raise ConfigError(
                f"{where}: '{key}' expected '+' only as a whole level"
                f" (like 'sensors/+/reading'), found {value!r}"
            )
    return value


def reconnect_backoff(where: str, value: object) -> Backoff:
    """The reconnect policy of a `reconnect_delay` = (first, longest) seconds setting: a full
    jitter `Backoff` whose ceiling starts at `first` and doubles up to `longest`."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ConfigError(
            f"{where}: 'reconnect_delay' expected (first, longest) seconds, found {value!r}"
        )
    first = positive_int(where, "reconnect_delay", value[0])
    longest = positive_int(where, "reconnect_delay", value[1])
    if first > longest:
        raise ConfigError(
            f"{where}: 'reconnect_delay' expected first <= longest, found ({first}, {longest})"
        )
    from edge_agent.mqtt.session import Backoff

    return Backoff(initial=first, maximum=longest)


def check_broker(where: str, host: object, port: object, qos: object) -> tuple[str, int, int]:
    """(host, port, qos) of a broker to publish to or subscribe from."""
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"{where}: 'host' expected a host name or address, found {host!r}")
    if type(qos) is not int or qos not in (0, 1):
        raise ConfigError(f"{where}: 'qos' expected 0 or 1, found {qos!r}")
    return host, port_number(where, "port", port), qos


def results_topic(template: str, device_id: str, where: str = "results") -> str:
    """The topic `template` with its ``{device_id}`` placeholder (if any) filled in.

    ConfigError if the template has other braces, is not a valid MQTT topic name (no
    wildcards, not empty), or `device_id` is not a valid device id."""
    if not isinstance(template, str):
        raise ConfigError(f"{where}: 'topic' expected an MQTT topic name, found {template!r}")
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ConfigError(
            f"{where}: 'topic' expected no placeholder other than {PLACEHOLDER}, found {template!r}"
        )
    try:
        device_id = check_device_id(device_id, f"{where}: device id")
    except MessageError as exc:
        raise ConfigError(str(exc)) from exc
    return check_topic(template.replace(PLACEHOLDER, device_id), where, wildcards=False)


def is_results_topic(template: str) -> bool:
    """Whether `template` makes a valid results topic for any valid device id."""
    try:
        results_topic(template, _SAMPLE_ID)
    except ConfigError:
        return False
    return True
