"""The last guard before sending: the flattened head holds only the header fields build_message sets."""

from __future__ import annotations

import pytest

from cloud_bridge.errors import PermanentError
from cloud_bridge.integrations.smtp import check_head

GOOD = (
    b"From: alerts@ok.com\r\nTo: a@ok.com,\r\n b@ok.com\r\nReply-To: desk@ok.com\r\nSubject: =?utf-8?q?hei=C3=9F?=\r\n"
    b"\tmore\r\nDate: Fri, 04 Dec 2026 20:33:51 +0000\r\nMessage-ID: <x@edge-outbox>\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\nMIME-Version: 1.0\r\n\r\n'
    b"Bcc: a body line is no header\r\n"
)


def test_a_head_of_our_own_fields_passes() -> None:
    check_head(GOOD)


@pytest.mark.parametrize(
    "raw",
    [
        # What CPython 3.11 made of reply_to "x"*39 + "=?:From:ceo@evil.com\u00e9," under email.policy.SMTP.
        b"From: alerts@ok.com\r\nTo: ops@ok.com\r\nReply-To: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=?:\r\n"
        b"From:ceo@evil.=?utf-8?q?com=C3=A9?=,;\r\nSubject: s\r\n\r\nt\r\n",
        b"From: a@ok.com\r\nTo: x@ok.com\r\nBcc: spy@evil.com\r\n\r\nt\r\n",  # not a field we set
        b"From: a@ok.com\r\nTo: x@ok.com\r\n=?utf-8?q?=C3=A9?=.com\r\n\r\nt\r\n",  # a continuation without whitespace
        b"From: a@ok.com\r\nTo: x@ok.com\nBcc: spy@evil.com\r\n\r\nt\r\n",  # a bare line feed
        b"From: a@ok.com\r\nTo: x@ok.com\r\nTo: y@ok.com\r\n\r\nt\r\n",  # a field twice
    ],
)
def test_a_line_the_bridge_did_not_set_is_bad_message(raw: bytes) -> None:
    with pytest.raises(PermanentError) as info:
        check_head(raw)
    assert info.value.code == "bad_message"
