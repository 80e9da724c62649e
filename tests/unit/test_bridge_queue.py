"""A device's queue at the bridge is bounded by messages and by bytes; beyond that, messages are dropped."""

from __future__ import annotations

from cloud_bridge.enroll_http import BridgeMetrics
from cloud_bridge.service import BridgeService


def dropped(metrics: BridgeMetrics) -> float:
    return metrics.registry.get_sample_value("bridge_batches_total", {"outcome": "dropped_busy"}) or 0.0


def service(metrics: BridgeMetrics, **bounds: int) -> BridgeService:
    # Nothing here reaches the ledger, policy or registry: the workers are stopped before they run.
    return BridgeService(ledger=None, policy=None, registry=None, metrics=metrics, **bounds)  # type: ignore[arg-type]


async def test_queue_is_bounded_by_messages_per_device() -> None:
    metrics = BridgeMetrics()
    svc = service(metrics, queue_per_device=3, queue_bytes_per_device=1 << 20)
    for _ in range(5):
        svc.submit("dev-a", "intents", b"x" * 10)
    svc.submit("dev-b", "intents", b"x" * 10)  # another device has a queue of its own
    assert dropped(metrics) == 2
    await svc.close()


async def test_queue_is_bounded_by_bytes_but_a_lone_message_always_fits() -> None:
    metrics = BridgeMetrics()
    svc = service(metrics, queue_per_device=100, queue_bytes_per_device=1000)
    svc.submit("dev-a", "intents", b"x" * 5000)  # over the byte bound, but the queue was empty
    svc.submit("dev-a", "intents", b"x" * 10)
    assert dropped(metrics) == 1
    svc.submit("dev-b", "intents", b"x" * 600)
    svc.submit("dev-b", "intents", b"x" * 400)
    svc.submit("dev-b", "intents", b"x")
    assert dropped(metrics) == 2
    await svc.close()
