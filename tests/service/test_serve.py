"""``skiprec serve``: an address other than loopback needs an API key or an opt-out.

The decision is a function (every host form is checked on it); the command is run for
real twice: refused on 0.0.0.0 without a key, started on loopback without one and on
0.0.0.0 with the opt-out (what the compose demo does).
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

import service.serve
from benchmarks import processes
from service.serve import exposure_refusal, is_loopback, main

LOOPBACK = ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]"]
EXPOSED = ["0.0.0.0", "::", "[::]", "10.1.2.3", "192.168.0.7", "api.example.com"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_hosts_need_no_key(host, make_settings):
    assert is_loopback(host)
    assert exposure_refusal(host, make_settings()) is None


@pytest.mark.parametrize("host", EXPOSED)
def test_other_hosts_need_a_key_or_the_opt_out(host, make_settings):
    assert not is_loopback(host)
    refusal = exposure_refusal(host, make_settings())
    assert refusal is not None
    assert host in refusal
    assert "SKIPREC_API_KEY" in refusal
    assert "SKIPREC_ALLOW_UNAUTHENTICATED=true" in refusal
    assert exposure_refusal(host, make_settings(api_key="k")) is None
    assert exposure_refusal(host, make_settings(allow_unauthenticated=True)) is None


def test_opt_out_reads_from_the_environment(monkeypatch, make_settings):
    monkeypatch.setenv("SKIPREC_ALLOW_UNAUTHENTICATED", "true")
    assert exposure_refusal("0.0.0.0", make_settings()) is None


def _clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any SKIPREC_ setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPREC_")}
    env.update({f"SKIPREC_{name.upper()}": value for name, value in settings.items()})
    return env


def test_serve_on_all_interfaces_without_a_key_exits_with_the_message(
    tiny_bundle_dir, redis_url
):
    command = [sys.executable, "-m", "skiprec_cli", "serve"]
    command += ["--bundle", str(tiny_bundle_dir), "--host", "0.0.0.0"]
    command += ["--port", str(processes.free_port())]
    done = subprocess.run(
        command,
        env=_clean_env(redis_url=redis_url),
        cwd=processes.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to serve on 0.0.0.0 without an API key" in done.stderr
    assert "SKIPREC_API_KEY" in done.stderr
    assert "SKIPREC_ALLOW_UNAUTHENTICATED=true" in done.stderr


def test_serve_main_refuses_before_starting_anything(
    tiny_bundle_dir, tmp_path, monkeypatch, caplog
):
    for name in ("SKIPREC_API_KEY", "SKIPREC_ALLOW_UNAUTHENTICATED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SKIPREC_REDIS_URL", raising=False)
    # main() installs the JSON log handler on the root logger; keep pytest's.
    monkeypatch.setattr(service.serve, "configure_logging", lambda level: None)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # main() exports settings
    data_dir = tmp_path / "redis"
    argv = ["--bundle", str(tiny_bundle_dir), "--host", "::", "--data-dir"]
    assert main([*argv, str(data_dir)]) == 2
    assert not data_dir.exists()  # refused before the embedded Redis was started
    assert "refusing to serve on ::" in caplog.text


@pytest.mark.parametrize(
    ("host", "settings"),
    [("127.0.0.1", {}), ("0.0.0.0", {"allow_unauthenticated": "true"})],
    ids=["loopback", "all interfaces with the opt-out"],
)
def test_serve_starts_without_a_key(
    host, settings, tiny_bundle_dir, redis_url, tmp_path
):
    command = [sys.executable, "-m", "skiprec_cli", "serve"]
    command += ["--bundle", str(tiny_bundle_dir), "--host", host, "--port", "{port}"]
    log = tmp_path / "serve.log"
    env = _clean_env(redis_url=redis_url, **settings)
    unset = [name for name in os.environ if name.startswith("SKIPREC_")]
    with processes.http_server(
        command, log, ready_path="/readyz", env=env, env_remove=unset
    ) as server:
        assert httpx.get(f"{server.base_url}/users/u/session").status_code == 200
    if settings:
        assert "without an API key (SKIPREC_ALLOW_UNAUTHENTICATED)" in log.read_text()
