"""The virtual board's constants, where its image and state live, and the image key (see ``host.vboard``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

NAME = "vrk3588"
#: Other instances (``--name``): lower-case letters, digits and '-', starting with a letter (a folder name and
#: part of the board's model string). Each gets the lowest free 127.0.0.N from FIRST_HOST on its first ``up``,
#: recorded in its state folder until ``purge``; vrk3588 always keeps 127.0.0.9.
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
FIRST_HOST, LAST_HOST = 10, 254
# Bump when the image build or its customisation changes (it is part of the image key).
SCRIPT_VERSION = 1
SUITE = "bookworm"
ARCH = "arm64"
MIRROR = os.environ.get("RKDEPLOY_VBOARD_MIRROR", "http://deb.debian.org/debian")
# No python3-pip / ca-certificates: the venv's pip comes from python3-venv's bundled wheel and installs
# host-fetched wheels offline; configuring ca-certificates alone costs minutes under emulation.
PACKAGES = ("python3", "python3-venv", "openssh-server", "procps")
DPKG_OPTS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/locale/*",
             "path-include=/usr/share/doc/*/copyright")
ADDRESS, PORT, USER = "127.0.0.9", 2222, "rock"
HOME = f"/home/{USER}"
WORKDIR = f"{HOME}/rkdeploy"
PYTHON = f"{WORKDIR}/venv/bin/python3"
#: Known injected latencies of the NPU shims on this board (every SSH session gets them).
SHIM_LATENCY = {"RKLLM_SHIM_PREFILL_MS": "100", "RKLLM_SHIM_TOKEN_MS": "25"}
#: Call logs of the shims (board paths; /tmp is a fresh tmpfs per board-up).
SHIM_ECHO = {"RKNN_SHIM_ECHO": "/tmp/rknn-shim.jsonl", "RKLLM_SHIM_ECHO": "/tmp/rkllm-shim.jsonl"}
#: Paths a chroot on an x86 kernel cannot have (procfs has no device-tree here, there is no rknpu DRM
#: node) come from qemu-user's path prefix: every emulated open/stat of /X looks in PREFIX/X first.
#: rknn-toolkit-lite2 refuses to start without /proc/device-tree/compatible and /dev/dri/renderD129.
QEMU_PREFIX = "/etc/rkdeploy/qemu-prefix"
#: The CPU qemu-user emulates for every board process (set in sshd's and its sessions' environment): RK3588's
#: big core. qemu's default ``max`` offers SVE, SME and i8mm, which RK3588 lacks, so onnxruntime would take
#: kernel paths (UMMLA) a real board never takes; cortex-a76 gives the board's own ISA (asimddp, asimdhp, no
#: i8mm/SVE) and was also faster here (3-token board logprobs 53 s vs 90 s under ``max``, bench/int8_arm_vs_x86.py).
QEMU_CPU = "cortex-a76"
#: Where the librknnrt shim finds the shapes of a REAL .rknn (``<fnv1a64 of its bytes>.spec``, written from its
#: manifest by ``python -m host.vboard rknn-specs``), and the latency it injects per rknn_run for one.
RKNN_SPECS = "/etc/rkdeploy/rknn-shim"
RKNN_SPEC_RUN_MS = 20.0
RKLLM_ABI = "1.3.0"
#: host command -> Debian package (``make setup-system`` installs the missing ones).
HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support",
              "mmdebstrap": "mmdebstrap", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu"}
CROSS_LIBC_HEADER = Path("/usr/aarch64-linux-gnu/include/stdio.h")  # libc6-dev-arm64-cross
BINFMT = Path("/proc/sys/fs/binfmt_misc")
REPO = Path(__file__).resolve().parents[2]
SHIM_SOURCES = {"librkllmrt.so": REPO / "board" / "testing" / "rkllm_shim.c",
                "librknnrt.so": REPO / "board" / "testing" / "rknn_shim.c"}
BUILD_TIMEOUT_S = 45 * 60
SSHD_START_TIMEOUT_S = 90


class VBoardError(RuntimeError):
    """The virtual board cannot be built, started or stopped; the message says what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("RKDEPLOY_VBOARD_CACHE") or Path.home() / ".cache" / "rkdeploy" / "vboard")


def recipe() -> dict:
    """Everything that changes the base image (its hash is the image key)."""
    return {"suite": SUITE, "arch": ARCH, "variant": "minbase", "packages": sorted(PACKAGES),
            "dpkg_opts": list(DPKG_OPTS), "user": USER, "script_version": SCRIPT_VERSION}


def image_key() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise VBoardError(f"virtual board name {name!r}: use 1-32 of a-z, 0-9 and '-', starting with a letter "
                          f"(e.g. vfarm-a); the default is {NAME}")
    return name


@dataclass(frozen=True)
class Instance:
    """One named virtual board: where its sshd listens (every instance has its own loopback address)."""

    name: str
    address: str
    port: int = PORT

    @property
    def login(self) -> str:
        return f"{USER}@{self.address}:{self.port}"


class Paths:
    """Where one virtual board's image and state live (the image is shared by every instance, read-only)."""

    def __init__(self, name: str = NAME) -> None:
        self.name = check_name(name)
        self.images = cache_root() / "images"
        self.image = self.images / image_key()
        self.lower = self.image / "rootfs"
        self.state = cache_root() / "boards" / name
        self.root = self.state / "root"          # the overlay mount: the board's /
        self.upper = self.state / "upper"        # the board's changes (venv, pushed files)
        self.work = self.state / "work"
        self.sys = self.state / "sys"            # the fake RK3588 /sys
        self.shims = self.state / "shims"
        self.pidfile = self.state / "sshd.pid"
        self.log = self.state / "sshd.log"
        self.host_key = self.state / "ssh_host_ed25519_key"
        self.client_key = self.state / "client_ed25519"
        self.lock = self.state / "lock"
        self.info = self.state / "board.json"
        self.image_key_file = self.state / "image-key"
        self.instance = self.state / "instance.json"   # address + port of an instance other than vrk3588

