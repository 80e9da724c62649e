"""`cloud-bridge import`: a device's bundle in, through the MQTT path's own admission, and a receipt out.

A bundle is opened (age, with the bridge's offline key), its signer looked up in the registry and its
signature checked with that device's enrolled key before anything in it is believed. Its batches then
go, one by one, through `BridgeService.handle_intents`, the function that admits a batch received
over MQTT (schema, policy, quotas, the ledger's dedupe by device and intent id), and its confirms
through `handle_confirms`; so an intent runs once whether it came on a stick, twice on two sticks, or
on a stick and over MQTT. The receipt names every intent of the bundle with its state now, every final
result the device has not confirmed yet, the device's revocation and the bridge's time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from cloud_bridge.audit import AuditEvent, AuditRecord
from cloud_bridge.device_keys import accept_rotation, proposed_key, verify_with_device_key
from cloud_bridge.errors import BridgeError, KeyReplacedError, OfflineFileError, TransientError
from cloud_bridge.ledger import Ledger
from cloud_bridge.offline_keys import OfflineKeys
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Device, Registry
from intent_contract import sealed, signed
from intent_contract.codec import Ack, decode_batch, encode_acks
from intent_contract.errors import (
    DecodeError,
    NotSealedError,
    OtherRecipientError,
    SignatureError,
    UnsupportedVersionError,
)
from intent_contract.offline_kinds import file_kind
from intent_contract.offline_wire import BUNDLE_TYPE, MAX_BUNDLE_INTENTS, RECEIPT_TYPE, Bundle, BundleEcho, Receipt
from intent_contract.timefmt import format_ms
from intent_contract.wire import ACKS_PER_MESSAGE

if TYPE_CHECKING:  # the service brings in the listener and the front door; the CLI's other commands need neither
    from cloud_bridge.service import BridgeService

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (intents done, intents in the bundle)


@dataclass(frozen=True, slots=True)
class Imported:
    """What an import did."""

    device: Device
    bundle: Bundle
    acks: list[Ack] = field(repr=False)  # one per intent admitted, in order (empty when the device is revoked)
    imported_at: int  # ms, bridge time
    next_key: str | None = None  # the next key the bundle proposed, accepted
    rotation_refused: str | None = None  # why the bundle's rotation was refused (for good: not a passing fault)
    refused_key: str | None = None  # the key that rotation proposed, when readable
    # Intents of the bundle past MAX_BUNDLE_INTENTS (an edge before 4 Dec 2026 did not stop there): not admitted,
    # no ack in the receipt, so the device sends them again in its next bundle.
    left_out: int = 0

    @property
    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ack in self.acks:
            counts[str(ack.state)] = counts.get(str(ack.state), 0) + 1
        return counts


def merge_acks(*groups: Iterable[Ack]) -> list[Ack]:
    """One ack per intent, the latest word winning: a final result over `accepted`, a later one over an earlier."""
    merged: dict[str, Ack] = {}
    for group in groups:
        for ack in group:
            known = merged.get(ack.id)
            if known is None or (ack.state.final, ack.at) >= (known.state.final, known.at):
                merged[ack.id] = ack
    return list(merged.values())


class OfflineDesk:
    """Imports bundles and writes receipts for one bridge's data."""

    def __init__(
        self,
        keys: OfflineKeys,
        registry: Registry,
        ledger: Ledger,
        service: BridgeService,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str],
        tenants: Collection[str] | None = None,
    ) -> None:
        self._keys = keys
        self._tenants = tenants  # those the config has a table for (None: not checked)
        self._registry = registry
        self._ledger = ledger
        self._service = service
        self._clock = clock
        self._new_id = new_id

    def open_bundle(self, data: bytes, max_bytes: int) -> tuple[Device, Bundle]:
        """Decrypt, find the signer, verify, decode; OfflineFileError naming what is wrong."""
        if len(data) > max_bytes:
            raise OfflineFileError(f"bundle of {len(data):,} bytes is over the {max_bytes:,}-byte limit (--max-bytes)")
        try:
            plain = sealed.unseal(data, self._keys.age_identity)
        except DecodeError as exc:
            raise self._unsealed(data, exc, max_bytes) from None
        try:
            document = signed.read(plain, typ=BUNDLE_TYPE, max_bytes=max_bytes)
        except DecodeError as exc:
            kind = file_kind(plain, max_bytes)  # an enrollment request is encrypted to the bridge too
            if kind is not None:
                raise OfflineFileError(f"not a bundle: it is {kind}; nothing admitted", code="not_a_bundle") from None
            raise OfflineFileError(f"bundle is not readable: {exc}", code="bundle_unreadable") from None
        del plain  # the document holds its own copy of the body: one copy of the bundle fewer from here
        device = self._registry.get(document.kid)
        if device is None:
            raise OfflineFileError(f"bundle from unknown device {document.kid!r}: refused", code="unknown_device")
        try:
            body = Bundle.decode(
                verify_with_device_key(self._registry, device, partial(signed.verify, document), self._clock)
            )
        except KeyReplacedError as exc:
            # The device's own bundle, made before it switched to its new key (or a copy of one): not a forgery.
            raise OfflineFileError(
                f"bundle is signed with the key device {device.device_id} had before its key rotation, the key it"
                f" replaced at {format_ms(int(exc.replaced_at * 1000))}: made before the device switched (or a copy"
                " of such a bundle); refused. Its intents not yet answered go in the device's later bundles, signed"
                " with its new key",
                code="bundle_key_replaced",
            ) from None
        except SignatureError:
            raise OfflineFileError(
                f"bundle signature does not verify with device {device.device_id}'s key: forged or altered; refused",
                code="bundle_forged",
            ) from None
        except DecodeError as exc:
            raise OfflineFileError(f"bundle body is not readable: {exc}", code="bundle_unreadable") from None
        if body.device_id != device.device_id or body.bridge_key != self._keys.public.key_id:
            raise OfflineFileError(
                f"bundle names device {body.device_id} and bridge key {body.bridge_key}, signed by {device.device_id}"
                f" for key {self._keys.public.key_id}: refused",
                code="bundle_forged",
            )
        return device, body

    def _unsealed(self, data: bytes, exc: DecodeError, max_bytes: int) -> OfflineFileError:
        """Why a file given as a bundle cannot be decrypted, told apart: the technician's next step differs (another
        file from the stick, the device's own bridge, a new export). All three used to get one message."""
        key_id = self._keys.public.key_id
        if isinstance(exc, NotSealedError):
            kind = file_kind(data, max_bytes)
            said = f"it is {kind}" if kind is not None else "not an edge-outbox file"
            return OfflineFileError(f"not a bundle: {said}; nothing admitted", code="not_a_bundle")
        if isinstance(exc, OtherRecipientError):
            return OfflineFileError(
                f"bundle is encrypted to another bridge's offline key, not this bridge's ({key_id}): import it at"
                " the bridge the device was enrolled with; nothing admitted",
                code="bundle_other_bridge",
            )
        return OfflineFileError(
            f"bundle cannot be decrypted: damaged or cut short ({len(data):,} bytes; a copy ended early when the"
            " stick was pulled out?); nothing admitted: copy it again, or export again on the site (every intent"
            " the bridge has not accepted goes in the next bundle)",
            code="bundle_unreadable",
        )

    async def import_bundle(self, data: bytes, *, max_bytes: int, progress: Progress | None = None) -> Imported:
        """Admit a bundle's intents and apply its confirms (nothing, when the device is revoked)."""
        device, bundle = await own_thread(self.open_bundle, data, max_bytes)
        imported_at = int(self._clock() * 1000)
        if device.revoked:
            logger.warning(
                "bundle %s from revoked device refused",
                bundle.id,
                extra={"device_id": device.device_id, "tenant": device.tenant, "code": "device_revoked"},
            )
            return Imported(device, bundle, [], imported_at)
        if self._tenants is not None and device.tenant not in self._tenants:
            # A config other than the one `run` uses (a staging file, a stale copy): every intent would end
            # rejected/policy_tenant for good, and the receipt would tell the site so. Nothing is admitted.
            raise OfflineFileError(
                f"the config has no [tenants.{device.tenant}] table: every intent of device {device.device_id}'s"
                " bundle would be rejected policy_tenant; nothing imported (give the config `run` uses, or add the"
                " table: an empty one refuses them on purpose)",
                code="policy_tenant",
            )
        sizes = await own_thread(_batch_sizes, bundle)
        taken = _batches_within(sizes)
        total, done, left_out = sum(sizes[:taken]), 0, sum(sizes[taken:])
        if left_out:
            logger.warning(
                "bundle %s carries %d intents, over the %d a bundle may carry (an edge-outbox before 4 Dec 2026"
                " did not stop there): the first %d admitted, the other %d wait for the device's next bundle",
                bundle.id, total + left_out, MAX_BUNDLE_INTENTS, total, left_out,
                extra={"device_id": device.device_id, "tenant": device.tenant, "code": "bundle_too_large"},
            )  # fmt: skip
        acks: list[Ack] = []
        for batch, size in zip(bundle.batches[:taken], sizes[:taken], strict=True):
            acks.extend(await self._service.handle_intents(device.device_id, batch))
            done += size
            if progress is not None:
                progress(done, total)
        for confirms in bundle.confirms:
            await self._service.handle_confirms(device.device_id, confirms)
        next_key = refused = None
        if bundle.rotation is not None:
            try:
                proposed = await own_thread(accept_rotation, self._registry, bundle.rotation, self._clock())
            except BridgeError as exc:
                refused = await self._rotation_refused(device, bundle, exc)
            else:
                next_key = proposed.next_public_key
        logger.info(
            "bundle %s imported: %d intents",
            bundle.id,
            total,
            extra={"device_id": device.device_id, "tenant": device.tenant},
        )
        refused_key = None if refused is None or bundle.rotation is None else proposed_key(bundle.rotation)
        return Imported(device, bundle, acks, imported_at, next_key, refused, refused_key, left_out)

    async def _rotation_refused(self, device: Device, bundle: Bundle, exc: BridgeError) -> str | None:
        """Log and audit a refused rotation; its code when refused for good, which the receipt tells the device
        (None for a passing fault: the device proposes it again in its next bundle)."""
        transient = isinstance(exc, TransientError)
        logger.warning(
            "key rotation in bundle %s refused: %s%s", bundle.id, exc.code,
            " (a passing fault: the device proposes it again in its next bundle)" if transient else "",
            extra={"device_id": device.device_id, "tenant": device.tenant, "code": exc.code},
        )  # fmt: skip
        detail = f"key rotation in bundle {bundle.id} refused: {exc.detail}"
        record = AuditRecord(self._clock(), device.device_id, device.tenant, "", "", AuditEvent.REFUSE,
                             code=exc.code, detail=detail)  # fmt: skip
        try:
            await self._ledger.note([record])
        except BridgeError as fault:
            logger.warning("refused key rotation not audited: %s", fault.code, extra={"device_id": device.device_id})
        return None if transient else exc.code

    async def wait_final(
        self, device_id: str, ids: set[str], wait_s: float, progress: Progress | None = None
    ) -> list[Ack]:
        """Final results of `ids` as they come (a running bridge executes them), for up to `wait_s` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            final = [a for a in await self._ledger.unconfirmed(device_id) if a.id in ids]
            if progress is not None:
                progress(len(final), len(ids))
            if len(final) >= len(ids) or time.monotonic() >= deadline:
                return final
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    async def receipt(
        self, device_id: str, imported: Imported | None = None, later: Iterable[Ack] = ()
    ) -> tuple[bytes, int]:
        """A receipt for the device, signed by the bridge: results so far, revocation, the bridge's time; and
        how many final results it carries (this bundle's and every earlier one the device has not confirmed)."""
        device = await own_thread(self._registry.get, device_id)
        if device is None:
            raise OfflineFileError(f"no device {device_id!r}", code="unknown_device")
        acks: list[Ack] = []
        if not device.revoked:
            acks = merge_acks(imported.acks if imported else (), later, await self._ledger.unconfirmed(device_id))
        echo = None
        if imported is not None:
            echo = BundleEcho(imported.bundle.id, imported.bundle.made_at, imported.imported_at)
        body = Receipt(
            device_id=device.device_id,
            bridge_key=self._keys.public.key_id,
            id=self._new_id(),
            made_at=int(self._clock() * 1000),
            revoked_at=None if device.revoked_at is None else int(device.revoked_at * 1000),
            bundle=echo,
            acks=tuple(encode_acks(acks[i : i + ACKS_PER_MESSAGE]) for i in range(0, len(acks), ACKS_PER_MESSAGE)),
            next_key=imported.next_key if imported is not None else None,
            rotation_refused=imported.rotation_refused if imported is not None else None,
            refused_key=imported.refused_key if imported is not None else None,
        )
        final = sum(1 for ack in acks if ack.state.final)
        return signed.sign(body.encode(), self._keys.signing_key, typ=RECEIPT_TYPE, kid=self._keys.public.key_id), final


def _batches_within(sizes: list[int]) -> int:
    """How many of the bundle's first batches together hold at most MAX_BUNDLE_INTENTS intents. A larger bundle was
    refused whole, and an edge before 4 Dec 2026, which does not stop its bundles there, made the same bundle
    again at every export: its site could never send its backlog. The bridge holds an ack per intent admitted
    until the receipt is written, so the bound on memory stays."""
    done = 0
    for index, size in enumerate(sizes):
        if done + size > MAX_BUNDLE_INTENTS:
            return index
        done += size
    return len(sizes)


def _batch_sizes(bundle: Bundle) -> list[int]:
    """Intents per batch; every batch must decode (it was signed by the device: a bad one is refused whole)."""
    sizes = []
    for index, batch in enumerate(bundle.batches):
        try:
            decoded = decode_batch(batch)
        except UnsupportedVersionError as exc:
            sizes.append(len(exc.ids))  # admission answers these with unsupported_version, as over MQTT
            continue
        except DecodeError as exc:
            raise OfflineFileError(f"bundle batch {index} is not readable: {exc}", code="bundle_unreadable") from None
        sizes.append(len(decoded.envelopes) + len(decoded.invalid))
    return sizes
