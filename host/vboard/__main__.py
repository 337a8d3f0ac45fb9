"""``python -m host.vboard up|down|status|purge [--images] [--name NAME]|build|toolkits|rknn-specs [ROOT]``
(``make board-up`` / ``make board-down``; the last two are ``make demo``'s, see ``host.vboard.demo``).

``--name NAME`` (default vrk3588, 127.0.0.9:2222) picks another instance: its own loopback address, state,
host and client keys over the same cached rootfs; ``down --name NAME`` stops only the processes inside
that instance's root."""

from __future__ import annotations

import json
import sys

from host.vboard.config import NAME, VBoardError, check_name
from host.vboard.demo import toolkit_venvs, write_rknn_specs
from host.vboard.image import build_image
from host.vboard.run import down, purge, status, up
from host.vboard.system import check_host

USAGE = "usage: python -m host.vboard up|down|status|purge [--images] [--name NAME]|build|toolkits|rknn-specs [ROOT]"


def _split(argv: list[str]) -> tuple[str, list[str]]:
    """(the --name value or vrk3588, the other arguments after the verb)."""
    if "--name" not in argv:
        return NAME, argv[1:]
    i = argv.index("--name")
    if i + 1 >= len(argv):
        raise VBoardError("--name needs a value (e.g. --name vfarm-a)")
    return check_name(argv[i + 1]), argv[1:i] + argv[i + 2:]


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "purge", "build", "toolkits", "rknn-specs"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        name, rest = _split(argv)
        if argv[0] == "up":
            up(name)
        elif argv[0] == "down":
            down(name)
        elif argv[0] == "build":
            check_host()
            build_image()
        elif argv[0] == "purge":
            purge(name, images="--images" in rest)
        elif argv[0] == "toolkits":
            print(toolkit_venvs())
        elif argv[0] == "rknn-specs":
            from host.plan import artifacts_root

            write_rknn_specs(artifacts_root(rest[0] if rest else None), name)
        else:
            print(json.dumps(status(name), indent=1))
    except VBoardError as e:
        print(f"rkdeploy: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
