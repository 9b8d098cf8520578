"""The built image, seen the way a container runtime would see it, through buildah.

Outside: the image's config (``buildah inspect``) and its files (``buildah mount``). Inside:
``buildah run --isolation chroot`` in a working container made from the image, on the host's
network, as the image's user with the image's environment (no Docker engine or OCI runtime
here; buildah's chroot isolation needs none). buildah runs a command, not the entrypoint:
:func:`entrypoint` puts the image's entrypoint in front, as a runtime does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

IMAGE = os.environ.get("ESCALATOR_IMAGE", "localhost/escalator:local")
EMULATOR_IMAGE = os.environ.get("ESCALATOR_EMULATOR_IMAGE", "localhost/escalator-emulator:local")


def buildah(*args: str, timeout_s: float = 120) -> str:
    proc = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def image_config(image: str) -> dict[str, Any]:
    """The image's Docker-format config (the one that keeps HEALTHCHECK)."""
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    config: dict[str, Any] = inspected["Docker"]["config"]
    return config


def image_size(image: str) -> str:
    return buildah("images", "--format", "{{.Size}}", image).strip()


@dataclass
class Container:
    """A buildah working container made from an image; remove it with :meth:`remove`."""

    name: str

    @classmethod
    def from_image(cls, image: str) -> Container:
        return cls(buildah("from", "--pull-never", "--quiet", image).strip())

    def remove(self) -> None:
        buildah("rm", self.name)

    def rootfs(self) -> Path:
        return Path(buildah("mount", self.name).strip())

    def upper_dir(self) -> Path:
        """What processes in the container wrote: overlay's upper directory."""
        return self.rootfs().parent / "diff"

    def command(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return ["buildah", "run", "--isolation", "chroot", *flags, self.name, "--", *argv]

    def run(
        self, *argv: str, env: dict[str, str] | None = None, timeout_s: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv, env=env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def entrypoint(config: dict[str, Any], *args: str) -> list[str]:
    """The image's entrypoint with these arguments, as a runtime starts it."""
    entry: list[str] = config["Entrypoint"]
    return [*entry, *args]


class RunningProcess:
    """A long-running ``buildah run``; :meth:`service_pid` finds the process inside.

    buildah kills its child on SIGTERM instead of passing the signal on, so the graceful stop
    a runtime performs (SIGTERM to the container's first process) is sent to that process
    directly: with chroot isolation it shares the host's PID namespace.
    """

    def __init__(self, argv: list[str], log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def service_pid(self, script: str) -> int | None:
        """The descendant of ``buildah run`` that runs ``script``: the interpreter whose argv[1]
        it is (``buildah-chroot-exec``, its parent, has it in its argv too)."""
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in _children(pid):
                argv = _cmdline(child)
                if argv[1:2] == [script] and Path(argv[0]).name.startswith("python"):
                    return child
                todo.append(child)
        return None

    def terminate_service(self, script: str, timeout_s: float = 60) -> int:
        """SIGTERM the process inside, as a runtime stops a container; its exit status."""
        pid = self.service_pid(script)
        assert pid is not None, "the service process is gone"
        os.kill(pid, signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        """Last resort on failure: SIGKILL this run's process tree."""
        if self.proc.poll() is not None:
            return
        todo, seen = [self.proc.pid], []
        while todo:
            pid = todo.pop()
            seen.append(pid)
            todo.extend(_children(pid))
        for pid in reversed(seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]
