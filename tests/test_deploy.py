"""The compose stack and the image: `docker compose config` accepts docker-compose.yml (where a docker
binary with compose exists), and the Dockerfile keeps its promises (multi-stage with the compiled core
built in the build stage, a non-root user, a health check on /readyz)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> list[str]:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30,
                               check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    why = "no docker binary" if docker is None else "the docker binary has no compose plugin (nor docker-compose)"
    pytest.skip(f"docker compose config not checked: {why}")


def test_docker_compose_config_accepts_the_stack() -> None:
    env = {**os.environ, "HOGX_OPERATOR_KEY": "op_test", "HOGX_OPERATOR_SECRET": "not-a-real-secret"}
    result = subprocess.run([*_compose(), "-f", "docker-compose.yml", "config"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for service in ("postgres", "hogx", "prometheus", "grafana"):
        assert re.search(rf"^  {service}:$", result.stdout, re.MULTILINE), f"service {service} missing"
    for mounted in ("deploy/prometheus/alerts.yml", "deploy/grafana/hogx.json", "deploy/grafana/provisioning"):
        assert mounted in result.stdout
    missing = subprocess.run([*_compose(), "-f", "docker-compose.yml", "config"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False,
                             env={k: v for k, v in env.items() if not k.startswith("HOGX_OPERATOR")})
    assert missing.returncode != 0 and "HOGX_OPERATOR_KEY" in missing.stdout + missing.stderr


def test_the_dockerfile_builds_the_compiled_core_and_runs_unprivileged_with_a_readiness_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "build" and "slim" in stages[1][0]
    assert "HOGX_COMPILE=1" in text and "c.__file__.endswith('.py')" in text  # the build fails uncompiled
    assert "COPY --from=build /opt/hogx /opt/hogx" in text
    assert re.search(r"^USER hogx$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n.*/readyz", text, re.MULTILINE)
