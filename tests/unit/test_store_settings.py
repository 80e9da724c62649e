"""The store setting and the other [bridge] settings of the scale-out work: parsing, bounds, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_bridge.errors import ConfigError
from cloud_bridge.settings import build_settings
from cloud_bridge.store.url import StoreKind, StoreUrl


def settings_from(tmp_path: Path, bridge: str, env: dict[str, str] | None = None, **kwargs: str) -> object:
    config = tmp_path / "bridge.toml"
    config.write_text(f"[bridge]\n{bridge}\n")
    return build_settings(data_dir=tmp_path / "data", env=env or {}, config_path=config, **kwargs)


def test_default_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = build_settings(data_dir=tmp_path, env={})
    assert settings.store_url == StoreUrl.sqlite(tmp_path)
    assert not settings.store_url.shared
    assert settings.max_intent_age == 90 * 86_400
    assert settings.node_id


def test_postgresql_store_with_a_password_from_the_environment(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        'store = "postgresql://bridge@db.internal:5432/bridge"\nstore_password_env = "PGPW"\nmax_intent_age = "30d"',
        env={"PGPW": "hunter2-very-secret"},
    )
    url = settings.store_url  # type: ignore[attr-defined]
    assert url.kind is StoreKind.POSTGRESQL
    assert url.shared
    assert "password=hunter2-very-secret" in url.conninfo()
    for shown in (repr(settings), str(url), repr(url)):
        assert "hunter2" not in shown
    assert settings.max_intent_age == 30 * 86_400  # type: ignore[attr-defined]


def test_the_flag_overrides_the_file(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, 'store = "postgresql://a@h/db"', store="sqlite:///var/lib/bridge")
    assert settings.store_url == StoreUrl.sqlite(Path("/var/lib/bridge"))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bridge", "message"),
    [
        ('store = "postgresql://bridge:pw@db/bridge"', "no password in the URL"),
        ('store = "mysql://db/bridge"', "store must be sqlite"),
        ('store = "postgresql://db/bridge?nonsense=1"', "not a valid postgresql"),
        ('store = "sqlite://"', "needs a directory"),
        ('store = "postgresql://db/b"\nstore_password = "pw"', "must not be written in the config"),
        ('max_intent_age = "12h"', "at least 86400"),
        ('max_intent_age = "soon"', "not a duration"),
        ("lease = 1", "lease must be within"),
        ("tokens_per_device = 0", "tokens_per_device: Input should be greater than 0"),
        ("stores = 1", "unknown key"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path: Path, bridge: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        settings_from(tmp_path, bridge)
    assert "pw@" not in str(info.value)


def test_node_ids_are_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node-id"):
        build_settings(data_dir=tmp_path, env={}, node_id="a b")
    assert build_settings(data_dir=tmp_path, env={}, node_id="node-1").node_id == "node-1"
