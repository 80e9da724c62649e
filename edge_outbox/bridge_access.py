"""What the edge shows and trusts on each connection to the bridge, from its identity on disk.

TLS that trusts only the CA pinned at enrollment, a fresh device token for every connect, the forwarder's MQTT
client, and the bound on the bridge's HTTPS answers. Enrollment itself (before there is an identity) is enroll_client.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import aiomqtt

from edge_outbox.identity import Identity, ca_file, key_file
from edge_outbox.settings import ForwarderSettings
from intent_contract.device_token import sign_device_token

ANSWER_LIMIT = 64 * 1024  # the bridge's HTTPS answers are small; anything larger is refused unread
# How long a PUBACK (SUBACK) may take once connected: a batch sized to go out in 10 s (edge_outbox.link_pace),
# behind a confirms message and a health report, over a link of a few KB/s and seconds of latency. aiomqtt's 15 s
# dropped such links mid-batch; a dead link is found by the keepalive (30 s) all the same.
ACK_WAIT_S = 60.0
# How long the CONNACK may take. aiomqtt waits this long also for a connection that broke before its CONNACK
# (it ignores the disconnect until then), so it stays short.
CONNACK_WAIT_S = 15.0


def client_tls_context(data_dir: Path) -> ssl.SSLContext:
    """TLS that trusts only the pinned CA and checks the bridge's host name: never unverified."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file(data_dir)))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def device_token(data_dir: Path, identity: Identity, now: int, lifetime_s: int) -> str:
    """A fresh JWT for one connect (the bridge refuses a token id it has seen before)."""
    key = key_file(data_dir).read_bytes()
    return sign_device_token(key, identity.device_id, now, lifetime_s=lifetime_s, audience=identity.audience)


def bridge_client(data_dir: Path, identity: Identity, settings: ForwarderSettings, token: str) -> aiomqtt.Client:
    """The forwarder's MQTT client for one connection to the bridge (not connected yet): once connected, set its
    `timeout` to ACK_WAIT_S."""
    port = settings.websocket_port if settings.transport == "websockets" else identity.mqtt_port
    return aiomqtt.Client(
        identity.bridge_host,
        port,
        identifier=identity.device_id,
        username=identity.device_id,
        password=token,
        tls_context=client_tls_context(data_dir),
        clean_session=True,
        keepalive=30,
        timeout=CONNACK_WAIT_S,
        transport=settings.transport,
        max_inflight_messages=64,
        # paho leaves Nagle's algorithm on: a batch written while the previous one's TCP ACK was
        # outstanding waited for the bridge's delayed ACK, 40 ms (bench/findings.md F18).
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    )
