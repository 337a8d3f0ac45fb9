"""Deploy to boards: inventory → verified transport → content-addressed push → remote bench.

Public names: ``load_inventory``, ``Board``, ``Inventory`` (inventory); ``Transport``, ``RunResult``,
``RemoteCommandFailed`` (transport); ``SshTransport`` (ssh), ``LocalTransport`` (local),
``FakeTransport`` (fake); ``push_board``, ``push_boards`` (push); ``bench_boards``,
``doctor_boards`` (remote_bench); ``trust_board`` (hostkeys).

Running one command on a board and fetching a file::

    from host.deploy import SshTransport, load_inventory
    board = load_inventory().boards["rock5b"]
    with SshTransport(board) as t:                 # verified host key, keys/agent only
        res = t.run(["python3", "-m", "board", "doctor", "--json"], cwd=board.workdir / "runner")
        t.get(board.workdir / "runner" / "out.json", Path("out.json"))

``run`` quotes every argument and raises ``RemoteCommandFailed`` (``command``, ``returncode``,
``stderr_tail``) on a non-zero exit unless ``check=False``.
"""

from host.deploy.fake import FakeTransport
from host.deploy.hostkeys import trust_board
from host.deploy.inventory import Board, Inventory, load_inventory
from host.deploy.local import LocalTransport
from host.deploy.push import push_board, push_boards
from host.deploy.remote_bench import bench_boards, doctor_boards
from host.deploy.ssh import SshTransport
from host.deploy.transport import RemoteCommandFailed, RunResult, Transport

__all__ = ["Board", "FakeTransport", "Inventory", "LocalTransport", "RemoteCommandFailed", "RunResult", "SshTransport",
           "Transport", "bench_boards", "doctor_boards", "load_inventory", "push_board", "push_boards", "trust_board"]
