"""Parsing of the options every port-opening call takes (client side)."""

from __future__ import annotations

from typing import Any

from ..channel import Channel
from ..framing import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_FRAME_BYTES
from ..port import DEFAULT_HIGH_WATER, _check_active

__all__ = ["PortOptions", "take_options"]


class PortOptions:
    """The options shared by every kind of port, validated up front in the caller's thread."""

    __slots__ = (
        "active",
        "high_water",
        "inbox",
        "max_depth",
        "max_elements",
        "max_frame_bytes",
        "packet",
        "timeout",
    )

    def __init__(
        self,
        *,
        inbox: Channel[Any] | None = None,
        packet: str | int | None = None,
        active: bool | int | str = True,
        timeout: float | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if inbox is not None and not isinstance(inbox, Channel):
            raise TypeError(f"inbox must be a Channel, not {type(inbox).__name__}")
        _check_active(active)
        if packet not in (None, "raw", "line", 1, 2, 4, "msgpack"):
            raise ValueError(
                f"packet must be None, 'raw', 'line', 1, 2, 4 or 'msgpack', not {packet!r}"
            )
        if high_water <= 0:
            raise ValueError(f"high_water must be > 0, not {high_water!r}")
        self.inbox = inbox
        self.packet = packet
        self.active = active
        self.timeout = timeout
        self.high_water = high_water
        self.max_frame_bytes = max_frame_bytes
        # packet="msgpack" only: what one frame may decode to (framing.DecodeBudget).
        self.max_elements = max_elements
        self.max_depth = max_depth

    def driver_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Driver.__init__``."""
        return {
            "packet": self.packet,
            "active": self.active,
            "max_frame_bytes": self.max_frame_bytes,
            "max_elements": self.max_elements,
            "max_depth": self.max_depth,
        }


def take_options(options: dict[str, Any], *extra: str) -> tuple[PortOptions, dict[str, Any]]:
    """Split ``options`` into the common PortOptions and the kind's ``extra`` names.

    Unknown names raise TypeError naming them, as a misspelt keyword would.
    """
    kind_specific = {k: options.pop(k) for k in list(options) if k in extra}
    try:
        common = PortOptions(**options)
    except TypeError as exc:
        allowed = sorted([*PortOptions.__slots__, *extra])
        raise TypeError(f"{exc}; the options here are {', '.join(allowed)}") from None
    return common, kind_specific
