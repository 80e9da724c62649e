"""The device registry and the token replay cache, run against every store backend; "nodes" are two
stores opened on the same URL, as two bridge processes would."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from cloud_bridge.errors import AuthError, BridgeError
from cloud_bridge.registry import REPLACED_KEYS_KEPT, UnknownDeviceError
from cloud_bridge.store import Store
from cloud_bridge.store.url import StoreUrl
from cloud_bridge.tokens import TokenClaims
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from tests.support.stores import opened, store, store_url

__all__ = ["store", "store_url"]  # fixtures

NOW = 1_800_000_000.0


def key() -> str:
    return public_key_pem(generate_private_key_pem())


async def test_a_code_enrolls_once_and_expires(store: Store) -> None:
    registry = store.registry
    code = registry.create_code("acme", "boiler-7", 3600, NOW)
    device = registry.redeem(code, key(), NOW + 1)
    assert (device.tenant, device.name, device.enrolled_at) == ("acme", "boiler-7", NOW + 1)
    assert registry.get(device.device_id) == device
    with pytest.raises(AuthError, match="unknown, used or expired"):
        registry.redeem(code, key(), NOW + 2)
    late = registry.create_code("acme", "boiler-8", 60, NOW)
    with pytest.raises(AuthError):
        registry.redeem(late, key(), NOW + 61)
    with pytest.raises(AuthError):
        registry.redeem("no-such-code", key(), NOW)
    with pytest.raises(AuthError) as info:
        registry.redeem(registry.create_code("acme", "x", 60, NOW), "not a key", NOW)
    assert info.value.code == "bad_public_key"
    with pytest.raises(BridgeError):
        registry.create_code("acme", "bad name", 60, NOW)
    assert registry.get("nope") is None
    # Ids from outside (a token's subject, a signature's kid): what cannot be an id is no device, on every
    # store (PostgreSQL's text refuses NUL: that was a TransientError, an HTTP 500 to an unauthenticated caller).
    assert registry.get("dev\x00ice") is None and registry.get("") is None and registry.get("x" * 500) is None
    assert [d.device_id for d in registry.all_devices()] == [device.device_id]


async def test_a_key_is_kept_as_its_own_pem_whatever_text_came_around_it(store: Store) -> None:
    # The PEM parser passes over text around the key; PostgreSQL's text refused the NUL in it (an HTTP 500).
    registry = store.registry
    first, second = key(), key()
    device = registry.redeem(registry.create_code("acme", "boiler-9", 3600, NOW), f"junk\x00\n{first}\x00", NOW)
    assert device.public_key == first and registry.get(device.device_id) == device
    assert registry.propose_key(device.device_id, f"{second}\x00", NOW + 1).next_public_key == second
    promoted = registry.promote_key(device.device_id, f"\x00{second}", NOW + 2)
    assert promoted is not None and promoted.public_key == second and promoted.next_public_key is None


async def test_a_promotion_moves_the_counter_changes_the_active_keys_and_keeps_the_old_key(store: Store) -> None:
    """What the revocation watcher reads to end the sessions of a replaced key (revocations.py)."""
    registry = store.registry
    first, second, other = key(), key(), key()
    device = registry.redeem(registry.create_code("acme", "boiler-7", 3600, NOW), first, NOW)
    revoked = registry.redeem(registry.create_code("acme", "boiler-8", 3600, NOW), other, NOW)
    registry.revoke(revoked.device_id, NOW)
    ids = [device.device_id, revoked.device_id, "no-such-device"]
    assert registry.active_keys(ids) == {device.device_id: (first,)}
    registry.propose_key(device.device_id, second, NOW + 1)
    assert registry.active_keys(ids) == {device.device_id: (first, second)}
    before = registry.revocation_counter()
    registry.promote_key(device.device_id, second, NOW + 2)
    assert registry.revocation_counter() == before + 1
    assert registry.active_keys(ids) == {device.device_id: (second,)}
    assert registry.active_keys([]) == {}
    assert registry.replaced_keys(device.device_id) == [(first, NOW + 2)]
    previous = second
    for step in range(6):  # only the newest REPLACED_KEYS_KEPT are kept
        following = key()
        registry.propose_key(device.device_id, following, NOW + 3 + step)
        registry.promote_key(device.device_id, following, NOW + 3 + step)
        previous = following
    replaced = registry.replaced_keys(device.device_id)
    assert len(replaced) == REPLACED_KEYS_KEPT and replaced[0][1] == NOW + 8 and previous not in dict(replaced)


async def test_a_used_code_names_the_device_it_enrolled_with_that_key_only(store: Store) -> None:
    """What offline enrollment answers again: the device a code enrolled, for the key it has now."""
    registry = store.registry
    first, second, other = key(), key(), key()
    code = registry.create_code("acme", "boiler-7", 3600, NOW)
    assert registry.redeemed(code, first) is None  # not used yet
    device = registry.redeem(code, first, NOW)
    assert registry.redeemed(code, first) == device
    assert registry.redeemed(code, other) is None  # another key
    assert registry.redeemed("no-such-code", first) is None
    assert registry.redeemed(code, "not a key") is None
    registry.propose_key(device.device_id, second, NOW + 1)
    registry.promote_key(device.device_id, second, NOW + 2)
    assert registry.redeemed(code, first) is None  # no longer the device's key
    assert registry.redeemed(code, second) == registry.get(device.device_id)  # its key now
    again = registry.create_code("acme", "boiler-8", 3600, NOW)
    revoked = registry.redeem(again, other, NOW)
    registry.revoke(revoked.device_id, NOW + 3)
    assert registry.redeemed(again, other) is None


async def test_one_code_redeemed_on_two_nodes_at_once_enrolls_one_device(store_url: StoreUrl) -> None:
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        code = a.registry.create_code("acme", "boiler-7", 3600, NOW)
        registries = [a.registry, b.registry] * 4

        def redeem(n: int) -> str:
            try:
                return registries[n].redeem(code, key(), NOW).device_id
            except AuthError:
                return ""

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(redeem, range(8)))
        winners = [r for r in results if r]
        assert len(winners) == 1, results
        assert [d.device_id for d in b.registry.all_devices()] == winners


async def test_revocation_is_seen_by_every_node_and_locks_the_key_out(store_url: StoreUrl) -> None:
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        private = key()
        device = a.registry.redeem(a.registry.create_code("acme", "boiler-7", 3600, NOW), private, NOW)
        other = a.registry.redeem(a.registry.create_code("acme", "boiler-8", 3600, NOW), key(), NOW)
        before = b.registry.revocation_counter()
        revoked = a.registry.revoke(device.device_id, NOW + 5)
        assert revoked.revoked_at == NOW + 5
        assert a.registry.revoke(device.device_id, NOW + 9).revoked_at == NOW + 5  # once only
        assert b.registry.revocation_counter() == before + 1
        assert b.registry.revoked_ids() == {device.device_id}
        assert b.registry.counts() == {"active": 1, "revoked": 1}
        assert b.registry.get(other.device_id) is not None
        with pytest.raises(AuthError):
            b.registry.redeem(b.registry.create_code("acme", "boiler-7", 3600, NOW), private, NOW + 10)
        with pytest.raises(UnknownDeviceError):
            b.registry.revoke("nope", NOW)


def claims(device: str, jti: str, exp: float = NOW + 600) -> TokenClaims:
    return TokenClaims(device_id=device, jti=jti, iat=NOW, exp=exp)


async def test_a_token_opens_one_session_across_nodes(store_url: StoreUrl) -> None:
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        await a.replay.check_and_add(claims("dev-1", "jti-000000001"), NOW)
        replayed = b if store_url.shared else a  # a single-node store has one cache
        with pytest.raises(AuthError) as info:
            await replayed.replay.check_and_add(claims("dev-1", "jti-000000001"), NOW + 1)
        assert info.value.code == "token_replayed"
        # The same jti of another device is another token.
        await b.replay.check_and_add(claims("dev-2", "jti-000000001"), NOW + 1)


async def test_a_node_whose_clock_is_ahead_keeps_a_token_another_node_still_takes(store_url: StoreUrl) -> None:
    """Each node prunes the shared cache by its own clock: a node 5 s ahead deleted a token the other node still
    took for 5 s more (exp + leeway by its clock), and replayed there it opened a second session."""
    if not store_url.shared:
        pytest.skip("one node, one clock")
    async with opened(store_url, node="node-a") as a, opened(store_url, node="node-b") as b:
        token = claims("dev-1", "jti-skewed-01")  # exp NOW + 600: taken until NOW + 630 by a node's clock
        await b.replay.check_and_add(token, NOW)
        # Node A's clock is 5 s ahead of B's: dev-1's next connect there prunes dev-1's expired entries.
        await a.replay.check_and_add(claims("dev-1", "jti-skewed-02", exp=NOW + 1200), NOW + 630 + 5)
        with pytest.raises(AuthError) as info:
            await b.replay.check_and_add(token, NOW + 629)  # B's clock: the token is still within its lifetime
        assert info.value.code == "token_replayed"


async def test_one_device_cannot_fill_the_replay_cache(store_url: StoreUrl) -> None:
    """The attack: one enrolled device mints token after token to lock every other device out."""
    async with opened(store_url, tokens_per_device=5) as s:
        for n in range(5):
            await s.replay.check_and_add(claims("greedy", f"jti-greedy-{n:04d}"), NOW)
        refusals = []
        for n in range(5, 200):
            try:
                await s.replay.check_and_add(claims("greedy", f"jti-greedy-{n:04d}"), NOW)
            except AuthError as exc:
                refusals.append(exc.code)
        assert refusals == ["too_many_tokens"] * 195
        # Everyone else still connects, and the greedy device again once its tokens expire.
        await asyncio.gather(*(s.replay.check_and_add(claims(f"dev-{n}", "jti-honest-0001"), NOW) for n in range(20)))
        await s.replay.check_and_add(claims("greedy", "jti-greedy-later"), NOW + 700)
