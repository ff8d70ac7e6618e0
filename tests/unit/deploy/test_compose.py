"""docker-compose.yml stays valid for docker-compose 1.29 (Debian) and `docker compose` v2.

Only `config` is run, which needs no Docker daemon. The tests fail (never skip) when no compose
tool is installed: CI installs docker-compose through deploy/install-deps.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO / "docker-compose.yml"
TIMEOUT_S = 60


@cache
def _find_compose() -> tuple[str, ...] | None:
    legacy = shutil.which("docker-compose")
    if legacy:
        return (legacy,)
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        proc = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (docker, "compose") if proc.returncode == 0 else None


def _config(*args: str, profiles: tuple[str, ...] = ()) -> str:
    compose = _find_compose()
    if compose is None:
        pytest.fail(
            "neither `docker-compose` nor `docker compose` is available to validate docker-compose.yml; "
            "install it with `apt-get install docker-compose` (or run deploy/install-deps)",
            pytrace=False,
        )
    flags = [f for p in profiles for f in ("--profile", p)]
    argv = [*compose, "-f", str(COMPOSE_FILE), *flags, "config", *args]
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(argv)}` did not finish in {TIMEOUT_S}s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr.strip()}\n{proc.stdout.strip()}",
            pytrace=False,
        )
    return proc.stdout


def _lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def test_compose_file_is_valid() -> None:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    _config("-q")


def test_default_services() -> None:
    services = _lines(_config("--services"))
    missing = {"kafka", "redis", "scorer", "prometheus"} - services
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)} (found {sorted(services)})"


def test_trainer_is_in_the_train_profile() -> None:
    # docker-compose 1.29 lists profiled services under `config --services` whatever the active
    # profiles, v2 only the active ones; both list `train` under `config --profiles` and the
    # trainer once that profile is enabled.
    profiles = _lines(_config("--profiles"))
    assert "train" in profiles, f"no `train` profile in docker-compose.yml (found {sorted(profiles)})"
    services = _lines(_config("--services", profiles=("train",)))
    assert "trainer" in services, f"`trainer` missing with --profile train (found {sorted(services)})"
