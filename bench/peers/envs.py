"""Each peer's own environment, .venv-<peer>/ at the repository root, made on first use.

    python -m bench.peers.envs                    # set up every peer's; prints each, or why not
    python -m bench.peers.envs litserve pytriton  # only these

Serving stacks pin many packages (and some pin numpy below the service's), so none goes into
the project's .venv: each gets a venv of its own and bench/peers/requirements-<peer>.txt, every
package pinned (a `pip freeze` of a working install), installed with --no-deps so that what is
installed is exactly the list. A stamp file holds the list's sha256: a changed list reinstalls,
an unchanged one costs nothing. `ensure()` never raises: where the install fails (no network,
no wheel for this Python, TorchServe's torch wheel not on disk) it says why, and the benchmark
reports that peer as skipped with the reason.

The environments are big (LitServe ~0.25 GB, MLServer and Triton ~0.4 GB, Ray ~0.6 GB,
TorchServe with the CPU build of torch ~1.1 GB) and never part of `make test`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STAMP = ".requirements-sha256"
INSTALL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class PeerEnv:
    """One peer's environment: its folder, its pinned list, what must import afterwards."""

    name: str  # the folder is .venv-<name>, the list requirements-<name>.txt
    package: str  # the distribution whose version the results record
    imports: str  # "import a, b": checked after the install

    @property
    def venv(self) -> Path:
        override = os.environ.get(f"VAE_{self.name.upper()}_VENV")
        return Path(override) if override else ROOT / f".venv-{self.name}"

    @property
    def requirements(self) -> Path:
        return HERE / f"requirements-{self.name}.txt"

    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def _digest(self) -> str:
        return hashlib.sha256(self.requirements.read_bytes()).hexdigest()

    def ready(self) -> bool:
        """The environment exists and matches its requirements file."""
        stamp = self.venv / STAMP
        return (
            self.python().is_file()
            and stamp.is_file()
            and stamp.read_text().strip() == self._digest()
        )

    def ensure(self, quiet: bool = False) -> tuple[Path | None, str]:
        """(its python, "") once the environment is ready, else (None, why)."""
        if self.ready():
            return self.python(), ""
        if not quiet:
            print(f"setting up {self.name}'s environment in {self.venv} (pip)", file=sys.stderr)
        try:
            if not self.python().is_file():
                _run([sys.executable, "-m", "venv", "--clear", str(self.venv)], 120)
            pip = [str(self.python()), "-m", "pip", "install", "--quiet"]
            _run([*pip, "--disable-pip-version-check", "--no-deps", "-r", str(self.requirements)])
            _run([str(self.python()), "-c", self.imports], 300)
        except subprocess.CalledProcessError as exc:
            why = _tail(exc.stderr or exc.stdout or str(exc))
            return None, f"installing {self.name} failed: {why}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"installing {self.name} failed: {exc}"
        (self.venv / STAMP).write_text(self._digest() + "\n")
        return self.python(), ""

    def version(self) -> str | None:
        """The peer's version in its environment (None where it is not set up)."""
        if not self.python().is_file():
            return None
        code = f"import importlib.metadata as m; print(m.version({self.package!r}))"
        out = subprocess.run(
            [str(self.python()), "-c", code], capture_output=True, text=True, timeout=60
        )
        return (out.stdout.strip() or None) if out.returncode == 0 else None

    def remove(self) -> None:
        shutil.rmtree(self.venv, ignore_errors=True)


def _run(argv: list[str], timeout: float = INSTALL_TIMEOUT_S) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)


def _tail(text: str, lines: int = 6) -> str:
    keep = [x.strip() for x in text.strip().splitlines() if not x.startswith("WARNING: Location")]
    return " | ".join(keep[-lines:])


ENVS = {
    env.name: env
    for env in (
        PeerEnv("litserve", "litserve", "import litserve, onnxruntime, numpy, PIL, multipart"),
        PeerEnv("pytriton", "nvidia-pytriton", "import pytriton.triton, onnxruntime, numpy, PIL"),
        PeerEnv("rayserve", "ray", "import ray.serve, multipart, onnxruntime, numpy, PIL"),
        PeerEnv("mlserver", "mlserver", "import mlserver, onnxruntime, numpy, PIL"),
        PeerEnv("torchserve", "torchserve", "import ts, torch, onnxruntime, numpy, PIL"),
    )
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("peers", nargs="*", help=f"some of {', '.join(ENVS)} (default: all)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.peers) - set(ENVS))
    if unknown:
        p.error(f"unknown peers {unknown}; the peers: {', '.join(ENVS)}")
    failed = 0
    for name in args.peers or list(ENVS):
        env = ENVS[name]
        python, why = env.ensure()
        if python is None:
            print(f"{name}: {why}", file=sys.stderr)
            failed += 1
        else:
            print(f"{name}: {python} ({env.package} {env.version()})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
