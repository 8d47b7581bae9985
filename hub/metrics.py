"""Prometheus metrics of one process (each daphne and broadcast process is
scraped on its own ``/metrics``)."""

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

__all__ = ["REGISTRY"]

OPEN_SOCKETS = Gauge("hub_ws_open_sockets", "WebSocket connections open now", ["endpoint"])
MESSAGES_IN = Counter("hub_ws_messages_in_total", "WebSocket messages received", ["endpoint"])
MESSAGES_OUT = Counter("hub_ws_messages_out_total", "WebSocket messages sent", ["endpoint"])
ERRORS = Counter("hub_ws_errors_total", "Envelope errors sent to clients", ["code"])
REFUSED = Counter(
    "hub_ws_connections_refused_total", "WebSocket connections refused or closed", ["reason"]
)
BROADCAST_LATENCY = Histogram(
    "hub_broadcast_latency_seconds",
    "From publish to hand-over to this process's sockets",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
