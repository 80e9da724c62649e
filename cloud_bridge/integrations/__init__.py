"""Integrations: one per intent kind, built from the `[integrations]` config table."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from cloud_bridge.errors import ConfigError
from cloud_bridge.integrations.base import Integration, Job, Outcome

log = logging.getLogger(__name__)

# Config section -> (kind it enables, module, class). Modules are imported only when configured,
# so a bridge without notify never imports Apprise.
_SECTIONS: Final = {
    "smtp": ("email.send", "cloud_bridge.integrations.smtp", "SmtpIntegration"),
    "sms": ("sms.send", "cloud_bridge.integrations.sms", "SmsIntegration"),
    "http": ("http.request", "cloud_bridge.integrations.http", "HttpIntegration"),
    "notify": ("notify", "cloud_bridge.integrations.notify", "NotifyIntegration"),
}

if TYPE_CHECKING:  # mypy proves each class satisfies the Integration protocol
    from cloud_bridge.integrations.http import HttpIntegration
    from cloud_bridge.integrations.notify import NotifyIntegration
    from cloud_bridge.integrations.sms import SmsIntegration
    from cloud_bridge.integrations.smtp import SmtpIntegration

    _CONFORMS: tuple[type[Integration], ...] = (SmtpIntegration, SmsIntegration, HttpIntegration, NotifyIntegration)

__all__ = ["Integration", "Job", "Outcome", "build_integrations"]


def build_integrations(config: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Integration]:
    """The configured integrations keyed by kind, from the `[integrations]` table; raises ConfigError.

    Secrets are read from `env` (or files) now, so a missing one stops the bridge at start.
    """
    if not isinstance(config, Mapping):
        raise ConfigError("[integrations] must be a table")
    unknown = set(config) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"[integrations]: unknown sections {sorted(unknown)}; known: {sorted(_SECTIONS)}")
    built: dict[str, Integration] = {}
    for section, (kind, module, name) in _SECTIONS.items():
        table = config.get(section)
        if table is None:
            continue
        if not isinstance(table, Mapping):
            raise ConfigError(f"[integrations.{section}] must be a table")
        integration: Integration = getattr(importlib.import_module(module), name).from_config(table, env)
        built[kind] = integration
        log.info("integration %s enabled (concurrency %d)", kind, integration.concurrency)
    return built
