"""Deploy to boards over SSH: inventory → verified transport → content-addressed push → remote bench.

Public names: ``load_inventory``, ``Board``, ``Inventory`` (inventory), ``Transport``,
``SshTransport`` (ssh), ``push_board``, ``push_boards`` (push), ``bench_boards``,
``doctor_boards`` (remote_bench), ``trust_board`` (hostkeys).
"""

from host.deploy.hostkeys import trust_board
from host.deploy.inventory import Board, Inventory, load_inventory
from host.deploy.push import push_board, push_boards
from host.deploy.remote_bench import bench_boards, doctor_boards
from host.deploy.ssh import SshTransport, Transport

__all__ = ["Board", "Inventory", "SshTransport", "Transport", "bench_boards", "doctor_boards", "load_inventory",
           "push_board", "push_boards", "trust_board"]
