"""ServerSettings: env parsing, and API keys held only as hashes."""

from __future__ import annotations

import pytest

from reward_server.settings import ServerSettings, hash_api_key


def test_defaults() -> None:
    s = ServerSettings()
    assert s.max_body_bytes == 64 * 1024 * 1024
    assert s.batch_max_wait_ms == 5
    assert s.aesthetic_clip_model == "openai/clip-vit-large-patch14"
    assert s.aesthetic_head.endswith("sac+logos+ava1-l14-linearMSE.pth")
    assert not s.allow_download
    assert not s.auth_required


def test_env_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDPO_API_KEYS", " alpha, beta ,")
    monkeypatch.setenv("DDPO_SCORERS", "jpeg_compressibility,aesthetic")
    monkeypatch.setenv("DDPO_PORT", "9001")
    monkeypatch.setenv("DDPO_DEVICE", "cpu")
    s = ServerSettings()
    assert s.scorers == ["jpeg_compressibility", "aesthetic"]
    assert s.port == 9001 and s.device == "cpu"
    assert len(s.api_keys) == 2


def test_empty_scorers_env_means_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDPO_SCORERS", "")
    assert ServerSettings().scorers is None


def test_keys_are_hashed_and_compared() -> None:
    s = ServerSettings(api_keys=["s3cret", hash_api_key("other")])
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()
    assert all(k.startswith("sha256:") and "s3cret" not in k for k in s.api_keys)
    assert s.auth_required
    assert s.check_api_key("s3cret")
    assert s.check_api_key("other")  # given pre-hashed
    assert not s.check_api_key("s3cre")
    assert not s.check_api_key("")
    # Re-validating the stored form does not hash twice.
    again = ServerSettings(api_keys=s.api_keys)
    assert again.check_api_key("s3cret")


def test_bad_device_rejected() -> None:
    with pytest.raises(ValueError, match="device"):
        ServerSettings(device="tpu")
