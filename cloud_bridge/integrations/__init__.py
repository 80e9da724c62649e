"""Integrations: one per intent kind, built from the `[integrations]` config table (`cloud_bridge.config`)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from cloud_bridge.integrations.base import Integration, Job, Outcome

log = logging.getLogger(__name__)

# Config section (a field of IntegrationsConfig) -> (kind it enables, module, class). Modules are
# imported only when configured, so a bridge without notify never imports Apprise.
_SECTIONS: Final = {
    "smtp": ("email.send", "cloud_bridge.integrations.smtp", "SmtpIntegration"),
    "sms": ("sms.send", "cloud_bridge.integrations.sms", "SmsIntegration"),
    "http": ("http.request", "cloud_bridge.integrations.http", "HttpIntegration"),
    "notify": ("notify", "cloud_bridge.integrations.notify", "NotifyIntegration"),
}

if TYPE_CHECKING:  # mypy proves each class satisfies the Integration protocol
    from cloud_bridge.config.integrations import IntegrationsConfig
    from cloud_bridge.config.tenants import TenantConfig
    from cloud_bridge.integrations.http import HttpIntegration
    from cloud_bridge.integrations.notify import NotifyIntegration
    from cloud_bridge.integrations.sms import SmsIntegration
    from cloud_bridge.integrations.smtp import SmtpIntegration

    _CONFORMS: tuple[type[Integration], ...] = (SmtpIntegration, SmsIntegration, HttpIntegration, NotifyIntegration)

__all__ = ["Integration", "Job", "Outcome", "build_integrations", "build_tenant_integrations"]


def build_integrations(config: IntegrationsConfig, tenant: str | None = None) -> dict[str, Integration]:
    """The configured integrations keyed by kind, from the validated `[integrations]` (or a tenant's own).

    Secrets were read when the config was; building makes clients but opens no connection.
    """
    built: dict[str, Integration] = {}
    for section, (kind, module, name) in _SECTIONS.items():
        table = getattr(config, section)
        if table is None:
            continue
        integration: Integration = getattr(importlib.import_module(module), name).from_settings(table)
        built[kind] = integration
        whose = f"tenant {tenant}'s own" if tenant is not None else "integration"
        log.info("%s %s enabled (concurrency %d)", whose, kind, integration.concurrency, extra={"tenant": tenant or ""})
    return built


def build_tenant_integrations(tenants: Mapping[str, TenantConfig]) -> dict[str, dict[str, Integration]]:
    """Each tenant's own integrations (`[tenants.T.integrations]`) keyed by tenant, then kind; tenants
    without any are left out. Used instead of the vendor's for that tenant's rows of those kinds."""
    return {
        name: built
        for name, tenant in tenants.items()
        if tenant.integrations.any and (built := build_integrations(tenant.integrations, name))
    }
