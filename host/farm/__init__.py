"""A shared board farm on labgrid: reserve boards by tag through a labgrid coordinator, use them as
ordinary ``Board`` records (verified host keys, the same SSH transport), release them.

Public names: ``FarmClient``, ``FarmError``, ``coordinator_address``, ``parse_filter`` (client);
``farm_boards``, ``FarmBoard`` (session); ``bench_farm``, ``push_farm``, ``doctor_farm`` (run);
``exporter_config``, ``write_exporter_config``, ``register_places``, ``board_from_place`` (export).
labgrid is the optional extra ``rkdeploy[farm]``; importing this package does not import it.
"""

from host.farm.client import FarmClient, FarmError, coordinator_address, parse_filter
from host.farm.export import board_from_place, exporter_config, register_places, write_exporter_config
from host.farm.run import bench_farm, doctor_farm, push_farm
from host.farm.session import FarmBoard, farm_boards

__all__ = ["FarmBoard", "FarmClient", "FarmError", "bench_farm", "board_from_place", "coordinator_address",
           "doctor_farm", "exporter_config", "farm_boards", "parse_filter", "push_farm", "register_places",
           "write_exporter_config"]
