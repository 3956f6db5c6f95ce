"""requirements/serve.lock, what the image installs: it pins every serving dependency of
pyproject.toml to a version that satisfies it, every pin carries hashes, and the Dockerfile
installs from it and from nothing else (offline: the lock is read, not resolved)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from test_deploy import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "serve.lock"
LOCK_IN_REPO = "requirements/serve.lock"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
# The image's interpreter and the machines the lock is resolved for (make lock).
ENVIRONMENTS = [
    {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": "3.11",
        "python_full_version": "3.11.9",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_machine": machine,
    }
    for machine in ("x86_64", "aarch64")
]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def serving_requirements() -> list[Requirement]:
    return [Requirement(spec) for spec in pyproject()["project"]["dependencies"]]


def lock_entries() -> list[str]:
    """The lock's logical lines (continuations joined), comments and blank lines left out."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pins() -> dict[str, tuple[Version, list[str]]]:
    """{canonical name: (pinned version, its hashes)}; fails on any entry that is not a pin."""
    found: dict[str, tuple[Version, list[str]]] = {}
    for entry in lock_entries():
        spec, *options = entry.split()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=]+)", spec)
        assert match, f"not an exact pin: {entry[:120]!r}"
        name = canonicalize_name(match.group(1))
        assert name not in found, f"{name} pinned twice"
        assert all(HASH.fullmatch(option) for option in options), entry[:200]
        found[name] = (Version(match.group(2)), options)
    return found


def test_lock_exists_and_says_how_to_refresh_it():
    assert LOCK.is_file(), "run `make lock`"
    header = LOCK.read_text().splitlines()[:2]
    assert header[0].startswith("#") and header[1].split() == ["#", "make", "lock"], header
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "no `lock` target in the Makefile"
    assert "lock" in re.search(r"^\.PHONY:.*$", makefile, re.M).group(0).split()
    joined = re.sub(r"\\\n\s*", " ", makefile)
    compile_line = re.search(r"^LOCK_COMPILE :=(.*)$", joined, re.M).group(1)
    for option in ("uv pip compile pyproject.toml", "--generate-hashes", "--python-version 3.11"):
        assert option in compile_line
    # Resolved for both machines the image is built for, which must agree.
    assert "x86_64-manylinux" in target.group(1) and "aarch64-manylinux" in target.group(1)


def test_every_line_is_a_pin_with_hashes():
    found = pins()
    assert found
    for name, (_, hashes) in found.items():
        assert hashes, f"{name} has no --hash"
        assert len(set(hashes)) == len(hashes), f"{name} lists a hash twice"


@pytest.mark.parametrize(
    "environment", ENVIRONMENTS, ids=[e["platform_machine"] for e in ENVIRONMENTS]
)
def test_lock_pins_every_serving_dependency_within_its_specifier(environment):
    found = pins()
    for requirement in serving_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in found, f"{requirement} is not in the lock: run `make lock`"
        version, _ = found[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"lock pins {name}=={version}, pyproject wants {requirement}: run `make lock`"
        )


def test_lock_holds_the_serving_set_only():
    found = pins()
    # Nothing of training, and none of uvicorn's [standard] extras the server never uses.
    for name in ("torch", "onnx", "onnxscript", "mlxtend", "matplotlib", "scipy", "tqdm"):
        assert name not in found, name
    for name in ("websockets", "watchfiles", "pyyaml"):
        assert name not in found, name
    for requirement in serving_requirements():
        assert not requirement.extras, f"{requirement}: name the extras' packages instead"


def test_dockerfile_installs_from_the_lock_only():
    instructions = dockerfile_instructions()
    copies = [arg.split() for op, arg in instructions if op == "COPY"]
    (lock_copy,) = [c for c in copies if c[0] == LOCK_IN_REPO]
    target = lock_copy[-1]
    installs = [arg for op, arg in instructions if op == "RUN" and re.search(r"pip install\b", arg)]
    assert len(installs) == 1, installs
    install = re.search(r"pip install\b(.*?)(?:&&|$)", installs[0]).group(1).split()
    assert "--require-hashes" in install and "--no-deps" in install
    # -r the copied lock, and no package named besides it.
    assert install[install.index("-r") + 1] == target
    assert [a for a in install if not a.startswith("-") and a != target] == []
    # pip check after the install: the pins are consistent among themselves.
    assert "pip check" in installs[0].split("pip install", 1)[1]
    # The lock is in the build context.
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert f"!{LOCK_IN_REPO}" in dockerignore
