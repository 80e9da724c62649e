"""One P4 load process: many simulated devices (asyncio, TLS, device JWTs) against the bridge.

`python -m bench.p4_client SPEC OUT`: connects every device in SPEC, prints `ready`, waits for a
line on stdin, then each device sends its batches one at a time, waiting for the `accepted` ack of
every intent before the next; writes timings to OUT (JSON).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from typing import Any

import msgpack

from bench.mqttraw import MqttClient
from bench.stack import payload
from intent_contract.codec import Envelope, encode_batch
from intent_contract.device_token import sign_device_token


class Device:
    def __init__(self, device_id: str, key_pem: bytes) -> None:
        self.device_id = device_id
        self.key_pem = key_pem
        self.client: MqttClient | None = None
        self.waiting: dict[str, float] = {}
        self.batch_done = asyncio.Event()
        self.latencies: list[float] = []
        self.states: dict[str, int] = {}

    def on_message(self, _topic: str, data: bytes) -> None:
        now = time.time()
        for ack in msgpack.unpackb(data, raw=False)["acks"]:
            state = ack["state"]
            if state == "accepted" or state == "rejected":
                self.states[state] = self.states.get(state, 0) + 1
                sent = self.waiting.pop(ack["id"], None)
                if sent is not None:
                    self.latencies.append(now - sent)
                    if not self.waiting:
                        self.batch_done.set()


async def main(spec_path: str, out_path: str) -> None:
    spec: dict[str, Any] = json.loads(open(spec_path).read())  # noqa: SIM115
    tls = ssl.create_default_context(cafile=spec["ca"])
    devices = [Device(d, k.encode()) for d, k in spec["devices"]]
    ports: list[int] = spec.get("ports") or [spec["port"]]  # several bridge nodes: devices spread over them
    port_of = {dev.device_id: ports[i % len(ports)] for i, dev in enumerate(devices)}
    gate = asyncio.Semaphore(32)  # connects in flight: keeps the bridge's accept backlog from overflowing

    async def connect(dev: Device) -> None:
        async with gate:
            token = sign_device_token(dev.key_pem, dev.device_id, int(time.time()), lifetime_s=900)
            dev.client = await MqttClient.connect(
                "127.0.0.1", port_of[dev.device_id], dev.device_id, username=dev.device_id, password=token, tls=tls,
                server_hostname="127.0.0.1", timeout=120,
            )  # fmt: skip
            dev.client.on_message = dev.on_message
            await dev.client.subscribe(f"devices/{dev.device_id}/acks", 1)

    t_connect = time.time()
    await asyncio.gather(*(connect(d) for d in devices))
    connect_s = time.time() - t_connect
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    batches, size = spec["batches"], spec["batch_size"]
    first = time.time()
    last = [first]

    async def drive(dev: Device) -> None:
        assert dev.client is not None
        for b in range(batches):
            now_ms = int(time.time() * 1000)
            envs = [
                Envelope(f"b{b}-{j}", "bench-app", "http.request", now_ms, None, 1, payload(b * size + j))
                for j in range(size)
            ]
            dev.batch_done.clear()
            sent = time.time()
            dev.waiting = {e.id: sent for e in envs}
            await dev.client.publish(f"devices/{dev.device_id}/intents", encode_batch(envs), 1)
            await asyncio.wait_for(dev.batch_done.wait(), 300)
            last[0] = max(last[0], time.time())

    results = await asyncio.gather(*(drive(d) for d in devices), return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    await asyncio.gather(*(d.client.close() for d in devices if d.client), return_exceptions=True)
    out = {
        "connect_s": connect_s,
        "connect_start": t_connect,  # wall times of the first connect and the last SUBACK of this process
        "connected": t_connect + connect_s,
        "first": first,
        "last": last[0],
        "latencies": [x for d in devices for x in d.latencies],
        "accepted": sum(d.states.get("accepted", 0) for d in devices),
        "rejected": sum(d.states.get("rejected", 0) for d in devices),
        "errors": errors[:5],
        "error_count": len(errors),
    }
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
