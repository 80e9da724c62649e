"""Signed and sealed documents of the offline paths, and the bounded decoders of their bodies."""

from __future__ import annotations

import contextlib
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intent_contract import files, sealed, signed
from intent_contract.device_token import generate_private_key_pem, public_key_pem
from intent_contract.errors import DecodeError, NotSealedError, OtherRecipientError, SignatureError
from intent_contract.offline_wire import BUNDLE_TYPE, RECEIPT_TYPE, Bundle, BundleEcho, Receipt

KEY = generate_private_key_pem()


def test_a_signed_document_verifies_only_with_its_key_and_type() -> None:
    data = signed.sign(b"body", KEY, typ=BUNDLE_TYPE, kid="dev-1")
    document = signed.read(data, typ=BUNDLE_TYPE, max_bytes=1000)
    assert (document.kid, signed.verify(document, public_key_pem(KEY))) == ("dev-1", b"body")
    with pytest.raises(SignatureError):
        signed.verify(document, public_key_pem(generate_private_key_pem()))
    with pytest.raises(DecodeError, match="expected a document of type"):
        signed.read(data, typ=RECEIPT_TYPE, max_bytes=1000)
    with pytest.raises(DecodeError, match="over the 10-byte limit"):
        signed.read(data, typ=BUNDLE_TYPE, max_bytes=10)


def test_a_changed_body_does_not_verify() -> None:
    data = signed.sign(b"body", KEY, typ=BUNDLE_TYPE, kid="dev-1")
    obj = msgpack.unpackb(data)
    obj["body"] = b"bodY"
    document = signed.read(msgpack.packb(obj), typ=BUNDLE_TYPE, max_bytes=1000)
    with pytest.raises(SignatureError):
        signed.verify(document, public_key_pem(KEY))


def test_sealed_data_opens_only_with_its_identity() -> None:
    identity, recipient = sealed.new_identity()
    other, _ = sealed.new_identity()
    box = sealed.seal(b"secret", recipient)
    assert b"secret" not in box
    assert sealed.unseal(box, identity) == b"secret"
    with pytest.raises(OtherRecipientError, match="not encrypted to this key"):
        sealed.unseal(box, other)
    with pytest.raises(DecodeError, match="damaged or cut short") as damaged:
        sealed.unseal(box[:-1] + bytes([box[-1] ^ 1]), identity)
    assert not isinstance(damaged.value, OtherRecipientError | NotSealedError)


def test_an_age_file_cut_short_another_file_and_one_for_another_key_are_told_apart() -> None:
    """The bridge's import tells the technician which (cloud_bridge.offline_import); rage's words for a file for
    another key are the one way to tell, and this fails if an upgrade of pyrage changes them."""
    identity, recipient = sealed.new_identity()
    other, _ = sealed.new_identity()
    box = sealed.seal(b"x" * 200_000, recipient)
    for cut in (box[:0], box[:10], box[:100], box[: len(box) // 2], box[:-1]):
        with pytest.raises(DecodeError, match="damaged or cut short") as cut_short:
            sealed.unseal(cut, identity)
        assert not isinstance(cut_short.value, OtherRecipientError | NotSealedError), len(cut)
    with pytest.raises(OtherRecipientError):
        sealed.unseal(box, other)
    with pytest.raises(NotSealedError):
        sealed.unseal(b'{"code": "x"}', identity)


def test_bodies_round_trip() -> None:
    bundle = Bundle("dev-1", "key-1", "B1", 123, (b"batch",), (b"confirms",))
    assert Bundle.decode(bundle.encode()) == bundle
    receipt = Receipt("dev-1", "key-1", "R1", 456, 789, BundleEcho("B1", 123, 450), (b"acks",))
    assert Receipt.decode(receipt.encode()) == receipt


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"device_id": "../etc"}, "device_id"),
        ({"made_at": "soon"}, "made_at"),
        ({"made_at": True}, "made_at"),
        ({"batches": ["not bytes"]}, "batches"),
        ({"v": 2}, "version 1"),
    ],
)
def test_bad_bodies_are_decode_errors(change: dict[str, object], message: str) -> None:
    fields = msgpack.unpackb(Bundle("dev-1", "key-1", "B1", 1).encode())
    with pytest.raises(DecodeError, match=message):
        Bundle.decode(msgpack.packb({**fields, **change}))


def test_deep_or_long_bodies_are_refused() -> None:
    deep: object = []
    for _ in range(10):
        deep = [deep]
    with pytest.raises(DecodeError, match="nested deeper"):
        Receipt.decode(msgpack.packb({"v": 1, "acks": deep}))
    with pytest.raises(DecodeError):
        Bundle.decode(msgpack.packb({"v": 1, "batches": [b""] * 20_001}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_only_ever_a_decode_error(data: bytes) -> None:
    for decode in (Bundle.decode, Receipt.decode, lambda d: signed.read(d, typ=BUNDLE_TYPE, max_bytes=1000)):
        with contextlib.suppress(DecodeError):
            decode(data)


def test_a_bundle_or_receipt_repr_leaves_its_messages_out() -> None:
    """asyncio.run reprs what its coroutine returns (CPython's SIGINT check): `cloud-bridge import` took
    100 MB more for a 64 MB bundle while it printed the bundle's batches into a string nobody read."""
    big = (b"\x00" * 5_000_000,)
    bundle = Bundle(device_id="dev-1", bridge_key="k", id="b-1", made_at=1, batches=big, confirms=big, rotation=big[0])
    receipt = Receipt(device_id="dev-1", bridge_key="k", id="r-1", made_at=1, acks=big)
    assert len(repr(bundle)) < 200 and "b-1" in repr(bundle)
    assert len(repr(receipt)) < 300 and "r-1" in repr(receipt)


def test_reading_a_small_file_does_not_allocate_the_limit(tmp_path: Path) -> None:
    """read(max_bytes + 1) made a bytes object of the whole limit (1 GiB with --max-bytes 1G), which a box
    without memory overcommit refuses whatever the file's size."""
    path = tmp_path / "small.bundle"
    path.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert files.read_bounded(path, 1 << 30) == b"x" * 1000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
