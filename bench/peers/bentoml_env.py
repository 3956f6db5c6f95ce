"""BentoML's own environment, .venv-bentoml/ at the repository root, made on first use.

    python -m bench.peers.bentoml_env          # create or update it; prints where, or why not

BentoML pins many packages (opentelemetry, cattrs, ...), so it never goes into the project's
.venv: a venv of its own gets bench/peers/requirements-bentoml.txt, every package pinned,
installed with --no-deps. A stamp file holds the requirements' sha256, so a changed list
reinstalls and an unchanged one costs nothing. `ensure()` never raises: where the install
fails (no network, no wheel for this Python) it says why, and the benchmark reports BentoML as
skipped with that reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VAE_BENTOML_VENV") or ROOT / ".venv-bentoml")
REQUIREMENTS = Path(__file__).resolve().parent / "requirements-bentoml.txt"
STAMP = ".requirements-sha256"
INSTALL_TIMEOUT_S = 900


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def python() -> Path:
    return VENV / "bin" / "python"


def bentoml_cli() -> Path:
    return VENV / "bin" / "bentoml"


def ready() -> bool:
    """The environment exists and matches requirements-bentoml.txt."""
    stamp = VENV / STAMP
    return bentoml_cli().is_file() and stamp.is_file() and stamp.read_text().strip() == _digest()


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def ensure(quiet: bool = False) -> tuple[Path | None, str]:
    """(the `bentoml` executable, "") once the environment is ready, else (None, why)."""
    if ready():
        return bentoml_cli(), ""
    if not quiet:
        print(f"setting up BentoML's environment in {VENV} (pip, from PyPI)", file=sys.stderr)
    try:
        if not python().is_file():
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(VENV)],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
        pip = [str(python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, "--no-deps", "-r", str(REQUIREMENTS)],
            check=True,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        subprocess.run(
            [str(python()), "-c", "import bentoml, onnxruntime, numpy, PIL"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.CalledProcessError as exc:
        return None, f"installing BentoML failed: {_tail(exc.stderr or exc.stdout or str(exc))}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"installing BentoML failed: {exc}"
    (VENV / STAMP).write_text(_digest() + "\n")
    return bentoml_cli(), ""


def version() -> str | None:
    """BentoML's version in its environment (None where it is not set up)."""
    if not python().is_file():
        return None
    out = subprocess.run(
        [str(python()), "-c", "import importlib.metadata as m; print(m.version('bentoml'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def remove() -> None:
    shutil.rmtree(VENV, ignore_errors=True)


def main() -> int:
    cli, why = ensure()
    if cli is None:
        print(why, file=sys.stderr)
        return 1
    print(f"{cli} (bentoml {version()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
