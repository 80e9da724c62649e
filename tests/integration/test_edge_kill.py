"""The kill test: SIGKILL the outbox while publishers are busy; every PUBACKed intent must survive."""

import random
import threading
import time
from pathlib import Path

import pytest

from tests.support.edge import Client, OutboxProcess, email, stored_ids
from tests.support.net import free_port

PUBLISHERS = 4
PER_PUBLISHER = 1500  # 6,000 intents offered per round
ROUNDS = 5


def publish_until_dead(client: Client, prefix: str, stop: threading.Event) -> None:
    for n in range(PER_PUBLISHER):
        if stop.is_set() or not client.client.is_connected():
            return
        client.publish("outbox/killtest/email.send", email(f"{prefix}-{n}"), name=f"{prefix}-{n}")
        if n % 50 == 0:
            time.sleep(0.001)  # keep the publishers interleaved


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_acknowledged_intent_is_lost_to_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random()
    total_acked: set[str] = set()
    offered = 0
    for round_no in range(ROUNDS):
        port = free_port()
        outbox = OutboxProcess(data_dir, port).start()
        clients = [Client(port, f"kill-{round_no}-{i}").connect() for i in range(PUBLISHERS)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=publish_until_dead, args=(c, f"r{round_no}p{i}", stop))
            for i, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        offered += PUBLISHERS * PER_PUBLISHER
        # Kill somewhere in the middle of the burst (publishing 6,000 takes a few seconds here).
        time.sleep(rng.uniform(0.3, 1.5))
        outbox.kill()
        stop.set()
        for t in threads:
            t.join(30)
        round_acked: set[str] = set()
        for c in clients:
            c.close()
            round_acked |= c.acked
        assert round_acked, f"round {round_no}: nothing was acknowledged before the kill; the test proves nothing"
        total_acked |= round_acked
        # Restart on the same data, as an operator would, and look for every acknowledged intent.
        restarted = OutboxProcess(data_dir, free_port()).start()
        assert restarted.stop() == 0, restarted.log()
        stored = stored_ids(data_dir)
        lost = sorted(total_acked - stored.keys())
        assert not lost, f"round {round_no}: {len(lost)} acknowledged intents lost, e.g. {lost[:5]}"
        assert all(stored[i] == "accepted" for i in total_acked)
    assert offered >= 5000 * ROUNDS
    print(f"kill test: {len(total_acked)} acknowledged intents over {ROUNDS} SIGKILLs, 0 lost")
