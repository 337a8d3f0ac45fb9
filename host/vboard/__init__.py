"""The virtual RK3588 board ``vrk3588``: arm64 Debian under qemu-user (binfmt_misc), its own sshd.

What runs where::

    ~/.cache/rkdeploy/vboard/images/<key>/rootfs   arm64 Debian (mmdebstrap, built once, ~15 min; read-only
                                                  lower layer; <key> hashes the recipe: suite, packages, script)
    ~/.cache/rkdeploy/vboard/boards/vrk3588/       the board's state: overlay upper (provisioned venv, pushed
                                                  files survive board-down), host/client SSH keys, fake sysfs,
                                                  cross-compiled NPU shims, sshd.pid, sshd.log
    mounts while up (all under boards/vrk3588/root): overlay, proc, dev (bind), sys (the fake RK3588
                                                  identity, read-only bind), tmp and run (tmpfs)

The board's own aarch64 ``sshd`` runs chrooted (every board process is emulated by qemu-aarch64) on
127.0.0.9:2222 with its own host key; the host trusts it through ``rkdeploy boards trust vrk3588``.
Its identity (device tree, 4×A55 + 4×A76 cpufreq policies, devfreq npu/dmc, rknpu 0.9.8, thermal
zones) is a fake sysfs, and ``/etc/rkdeploy/virtual-board.json`` says it is virtual. The NPU
libraries are shims cross-compiled with ``aarch64-linux-gnu-gcc``: ``board/testing/rkllm_shim.c``
as ``librkllmrt.so`` (ABI 1.3.0) and ``board/testing/rknn_shim.c`` as ``librknnrt.so``; their
injected latencies are ``SHIM_LATENCY`` (set for every SSH session through sshd's ``SetEnv``).

Named instances (``--name vfarm-a``; the farm tests run two): each its own 127.0.0.N (the lowest free from
.10, recorded in its state folder until purge), state folder, host and client keys, all on the same cached
rootfs as their read-only overlay lower layer; vrk3588 keeps 127.0.0.9:2222.

``python -m host.vboard up|down|status|build|purge [--name NAME]`` (``make board-up`` / ``make board-down``). Needs root
(mounts, chroot) and the Debian packages in ``HOST_TOOLS``. Stopped by PID; ``down`` kills every
process whose root is the board's root, unmounts everything under it and checks /proc/mounts.

Modules: ``config`` (constants, paths, image key), ``system`` (host checks, mounts, processes), ``image``
(the rootfs), ``identity`` (fake sysfs, shims), ``run`` (sshd, up/down/status/purge), ``__main__`` (CLI).
"""

from __future__ import annotations

from host.vboard.config import (
                                ADDRESS,
                                ARCH,
                                HOME,
                                NAME,
                                NAME_RE,
                                PACKAGES,
                                PORT,
                                PYTHON,
                                QEMU_PREFIX,
                                RKLLM_ABI,
                                SHIM_ECHO,
                                SHIM_LATENCY,
                                SHIM_SOURCES,
                                SUITE,
                                USER,
                                WORKDIR,
                                Instance,
                                Paths,
                                VBoardError,
                                cache_root,
                                check_name,
                                image_key,
                                recipe,
)
from host.vboard.demo import toolkit_venvs, write_rknn_specs
from host.vboard.identity import COMPATIBLE, build_shims, marker, write_identity, write_qemu_prefix
from host.vboard.image import build_image, customize_image
from host.vboard.run import down, instance, purge, running, sshd_config, status, up
from host.vboard.system import (
                                board_pids,
                                check_host,
                                ensure_binfmt,
                                missing_host_tools,
                                mounts_under,
                                safe_rmtree,
                                unmount_all,
)

__all__ = ["ADDRESS", "ARCH", "COMPATIBLE", "HOME", "NAME", "NAME_RE", "PACKAGES", "PORT", "PYTHON", "QEMU_PREFIX", "RKLLM_ABI",
           "SHIM_ECHO", "SHIM_LATENCY", "SHIM_SOURCES", "SUITE", "USER", "WORKDIR", "Instance", "Paths",
           "VBoardError", "board_pids", "build_image", "build_shims", "cache_root", "check_host", "check_name",
           "customize_image", "down", "ensure_binfmt", "image_key", "instance", "marker", "missing_host_tools",
           "mounts_under", "purge", "recipe", "running", "safe_rmtree", "sshd_config", "status", "toolkit_venvs", "unmount_all", "up", "write_identity",
           "write_qemu_prefix", "write_rknn_specs"]
