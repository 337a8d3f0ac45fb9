"""``python -m host.vboard up|down|status|build|purge [--images]|toolkits|rknn-specs [ROOT]`` (``make board-up`` /
``make board-down``; the last two are ``make demo``'s, see ``host.vboard.demo``)."""

from __future__ import annotations

import json
import sys

from host.vboard.config import VBoardError
from host.vboard.demo import toolkit_venvs, write_rknn_specs
from host.vboard.image import build_image
from host.vboard.run import down, purge, status, up
from host.vboard.system import check_host


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "purge", "build", "toolkits", "rknn-specs"):
        print("usage: python -m host.vboard up|down|status|build|purge [--images]|toolkits|rknn-specs [ROOT]",
              file=sys.stderr)
        return 2
    try:
        if argv[0] == "up":
            up()
        elif argv[0] == "down":
            down()
        elif argv[0] == "build":
            check_host()
            build_image()
        elif argv[0] == "purge":
            purge(images="--images" in argv)
        elif argv[0] == "toolkits":
            print(toolkit_venvs())
        elif argv[0] == "rknn-specs":
            from host.plan import artifacts_root

            write_rknn_specs(artifacts_root(argv[1] if len(argv) > 1 else None))
        else:
            print(json.dumps(status(), indent=1))
    except VBoardError as e:
        print(f"rkdeploy: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
