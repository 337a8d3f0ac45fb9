"""Helpers for deploy tests: artifact folders with a real manifest, boards pointing at a test sshd."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path, PurePosixPath

from host.deploy.inventory import Board
from host.fsutil import sha256_file
from host.testing.sshd import TestSshd


def write_artifact(folder: Path, files: dict[str, bytes], **manifest) -> Path:
    """An artifact folder whose ``manifest.json`` lists the files' real sha256 and size."""
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, data in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        table[name] = {"sha256": sha256_file(p), "size": len(data)}
    m = {"schema": 1, "model": folder.parts[-3], "target": folder.parts[-2], "scheme": folder.parts[-1],
         "model_kind": "llm", "artifact_kind": "onnx", "format": "onnx-genai", "entry": next(iter(files)),
         **manifest, "files": table}
    (folder / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    return folder


def board_for(sshd: TestSshd, name: str = "local-ssh", **overrides) -> Board:
    """A ``Board`` record for the test sshd (override any field, e.g. ``workdir=``, ``python=``)."""
    b = Board(name=name, host=sshd.host, port=sshd.port, user=sshd.user, key_file=sshd.client_key, soc="rk3588",
              workdir=PurePosixPath(sshd.dir / "board-workdir"), groups=("local",))
    if "workdir" in overrides:
        overrides["workdir"] = PurePosixPath(overrides["workdir"])
    return dataclasses.replace(b, **overrides)


def rehash_manifest(folder: Path | str) -> Path:
    """Rewrite ``manifest.json``'s file table with the real sha256/size (for doubles that write dummies)."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    m = json.loads(mpath.read_text())
    m["files"] = {n: {"sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size} for n in m["files"]}
    mpath.write_text(json.dumps(m, indent=1, sort_keys=True))
    return folder


RECEIVER_MARK = "# rkdeploy receiver"


def receiver_pids(workdir: Path | str) -> list[int]:
    """PIDs of board-side receivers (``remote.RECEIVER``) writing into ``workdir`` on this machine."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[2].startswith(RECEIVER_MARK.encode()) and argv[3] == str(workdir).encode():
            out.append(int(cmdline.parent.name))
    return out


def blob_problems(workdir: Path | str) -> list[str]:
    """Every ``blobs/<sha>`` whose bytes do not hash to its name (empty: all intact)."""
    bad = []
    for p in sorted((Path(workdir) / "blobs").glob("[0-9a-f]" * 64)):
        if sha256_file(p) != p.name:
            bad.append(f"{p.name[:16]}…: {p.stat().st_size} bytes, sha256 {sha256_file(p)[:16]}…")
    return bad


def push_artifacts(inventory: Path | str, selection: str, root: Path | str, target: str, known: Path | str,
                   stall: float | None = None) -> list:
    """Push the runner and every artifact of ``target`` under ``root`` (as ``rkdeploy push`` does, without
    a recipe) to the selected boards; returns the ``PushResult`` rows."""
    from host.deploy.inventory import load_inventory
    from host.deploy.push import artifact_dir, push_boards, runner_dir
    from host.deploy.ssh import SshTransport

    boards = load_inventory(Path(inventory)).select(selection)
    folders = sorted(m.parent for m in Path(root).glob(f"*/{target}/*/manifest.json"))
    arts = [artifact_dir(f, Path(root)) for f in folders]
    dirs = [runner_dir(artifacts=arts), *arts]
    if os.environ.get("RKDEPLOY_TEST_READY"):  # imported and planned: start when told (one line on stdin)
        print("ready", flush=True)
        sys.stdin.readline()
    return push_boards(boards, dirs, jobs=len(boards), show_progress=False,
                       transport=lambda b: SshTransport(b, known_hosts=[Path(known)], stall_timeout=stall))


def _push_main(argv: list[str]) -> int:
    """``python -m host.testing.deploy push INVENTORY BOARDS ARTIFACTS TARGET KNOWN_HOSTS [STALL]``: push the
    runner and every artifact of TARGET under ARTIFACTS; one JSON line per board; exit 1 when a board failed.
    For tests that kill pushes at random."""
    results = push_artifacts(*argv[:5], stall=float(argv[5]) if len(argv) > 5 else None)
    for r in results:
        print(json.dumps(dataclasses.asdict(r)), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["push"] or len(sys.argv) < 7:
        print(_push_main.__doc__, file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_push_main(sys.argv[2:]))


def random_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path`` (written in 8 MiB blocks, no second read); their sha256."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            b = os.urandom(min(8 << 20, left))
            h.update(b)
            f.write(b)
            left -= len(b)
    return h.hexdigest()
