"""What the edge's intake takes, the batch to the bridge carries and the bridge's decoder reads back as it
was published: an intent the intake took and the wire could not carry stopped every intent behind it
(bench/findings.md F47)."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.db import IntentRow
from edge_outbox.forward_wire import encode_rows
from edge_outbox.intake_rules import Admitted, admit
from edge_outbox.states import State
from intent_contract.codec import decode_batch

NOW = 1_800_000_000_000
_ids = itertools.count()

# Any code point, lone surrogates included (hypothesis leaves them out unless told).
_TEXT = st.text(st.characters(exclude_categories=()), max_size=8)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=10,
)
# Number and string literals that json.dumps never writes but an app's JSON may hold.
_LITERALS = st.sampled_from(
    [b"1e400", b"-1E999", b"1e-400", b"123456789012345678901234567890", b"18446744073709551615",
     b'"\\ud800"', b'"x\\udfff"', b'"\\ud83d\\ude00"', b"-0", b"0.1e1"]
)  # fmt: skip


def _dumped(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


_JSON_TEXT = st.builds(_dumped, _VALUES, st.booleans()) | _LITERALS


def _row(intent: Admitted) -> IntentRow:
    """The row the store keeps for `intent` (its payload is the bytes as published)."""
    return IntentRow(
        1, intent.id, intent.app, intent.kind, State.ACCEPTED, "", "", intent.priority, intent.created,
        intent.expires, intent.created, 1, 0, 0, 0, intent.payload, len(intent.payload),
    )  # fmt: skip


@given(body=_JSON_TEXT, subject=_JSON_TEXT)
def test_what_the_intake_takes_the_bridge_reads_as_published(body: bytes, subject: bytes) -> None:
    for kind, raw in [
        ("http.request", b'{"credential": "c", "method": "POST", "path": "/", "json": ' + body + b"}"),
        ("email.send", b'{"to": "ops@example.com", "text": "t", "subject": ' + subject + b"}"),
    ]:
        decision = admit(f"outbox/app/{kind}", raw, NOW, lambda: f"gen{next(_ids)}")
        if not isinstance(decision, Admitted):
            assert decision.code in {"bad_json", "schema_violation"}, decision
            continue
        batch, sendable, unsendable = encode_rows([_row(decision)], BridgeClock())
        assert batch is not None and len(sendable) == 1 and not unsendable, unsendable
        decoded = decode_batch(batch)
        assert not decoded.invalid, decoded.invalid
        assert decoded.envelopes[0].payload == json.loads(raw)
