"""Fixtures for the image checks: the image's config, and a working container made from it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.image.buildah import EMULATOR_IMAGE, IMAGE, Container, image_config, image_size

SEEN: list[str] = []


def _config(image: str) -> dict[str, Any]:
    try:
        return image_config(image)
    except (AssertionError, FileNotFoundError) as exc:
        pytest.fail(f"{image} is not in buildah's storage: run `make image` ({exc})")


@pytest.fixture(scope="session")
def config() -> dict[str, Any]:
    """The service image's config; its name, base and size go in the session's summary."""
    found = _config(IMAGE)
    base = found.get("Labels", {}).get("org.opencontainers.image.base.name", "unknown")
    SEEN.append(f"{IMAGE}: {image_size(IMAGE)}, on {base}")
    return found


@pytest.fixture(scope="session")
def emulator_config() -> dict[str, Any]:
    return _config(EMULATOR_IMAGE)


@pytest.fixture(scope="session")
def container(config: dict[str, Any]) -> Iterator[Container]:
    """A working container from the service image, shared by the checks that only read."""
    made = Container.from_image(IMAGE)
    try:
        yield made
    finally:
        made.remove()


@pytest.fixture(scope="session")
def image_commands(config: dict[str, Any], container: Container) -> set[str]:
    """The commands `escalator --help` lists inside the image."""
    done = container.run(*config["Entrypoint"], "--help")
    assert done.returncode == 0, done.stderr
    # argparse lists each subcommand on its own line, indented four spaces, under COMMAND.
    listed = set(re.findall(r"^    ([a-z][a-z-]*)(?:\s|$)", done.stdout, flags=re.MULTILINE))
    assert listed, f"no commands in `escalator --help`:\n{done.stdout}"
    return listed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in SEEN:
        terminalreporter.write_line(f"image under test: {line}")
