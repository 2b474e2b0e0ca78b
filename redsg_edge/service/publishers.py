"""The daemon's optional publishers: MQTT (``[mqtt]``) and the live tuning page (``[web]``).

Both are subscribers of the pipeline's event bus, started right after the pipeline is built
(before it starts, so no event is published unseen) and closed after it stops. Each is off by
default and costs nothing then: its module is not even imported.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger("redsg_edge.service")

__all__ = ["Publishers"]


class Publishers:
    """The MQTT publisher and the tuning page of one daemon run (either may be None).

    Build with :meth:`start`; put :meth:`stats` in the status file; :meth:`close` at shutdown.
    """

    def __init__(self, mqtt: Any = None, web: Any = None) -> None:
        self.mqtt = mqtt
        self.web = web

    @classmethod
    def start(cls, cfg: Any, pipeline: Any, current_cfg: Callable[[], Any]) -> "Publishers":
        """Start what ``cfg`` (a ``Config``) enables, subscribed to ``pipeline.bus``.

        MQTT commands go to the pipeline's reply worker (``say``, ``mute``) and ``reload`` to
        SIGHUP (the main thread reloads as for ``systemctl reload``); without a reply worker
        ``say``/``mute`` are refused with a warning. The page shows ``pipeline.status()`` and
        ``current_cfg().fusion`` (so a reload shows). Raises ConfigError (78) for an unusable
        MQTT password or CA file and DeviceError (69) when the page's port cannot be bound;
        whatever had started is closed first.
        """
        mqtt = web = None
        try:
            if cfg.mqtt.enabled:
                from ..mqtt import route_commands, start_mqtt
                reply = pipeline.reply
                mqtt = start_mqtt(cfg, pipeline.bus, route_commands(
                    say=reply.say if reply is not None else _refuse("say"),
                    mute=reply.mute if reply is not None else _refuse("mute")))
            if cfg.web.enabled:
                from ..web import start_web
                web = start_web(cfg, pipeline.bus, pipeline.status,
                                lambda: current_cfg().fusion)
        except BaseException:
            cls(mqtt, web).close(1.0)
            raise
        return cls(mqtt, web)

    def stats(self) -> dict[str, Any]:
        """``{"mqtt": MqttPublisher.stats | None, "web": {"url": ...} | None}`` for the status
        file."""
        web = None
        if self.web is not None:
            web = {"url": getattr(self.web, "url", None)}
        return {"mqtt": dict(self.mqtt.stats) if self.mqtt is not None else None, "web": web}

    def close(self, timeout_s: float = 1.0) -> None:
        """Publish what is queued and ``offline`` (MQTT), stop the page; bounded by about
        ``timeout_s`` + 1 s each, never raises."""
        for name, pub in (("mqtt", self.mqtt), ("web", self.web)):
            if pub is None:
                continue
            try:
                if name == "mqtt":
                    pub.close(timeout_s=timeout_s)
                else:
                    pub.close()
            except Exception:  # noqa: BLE001 - shutdown goes on whatever a publisher does
                log.warning("closing the %s publisher failed", name, exc_info=True)


def _refuse(what: str) -> Callable[..., None]:
    def refuse(*_args: Any) -> None:
        log.warning("MQTT command %r ignored: replies are off in this run "
                    "([reply] enabled = false or --no-reply)", what)
    return refuse
