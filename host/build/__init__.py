"""Builders: one module per artifact kind, same small interface, found through the kind registry.

``host.build.registry`` holds one ``Kind`` record per artifact kind (name, recipe field, schemes
with the toolkit's spelling, board backend) and the ``Builder`` protocol its module implements:

- ``inputs(job) -> dict``: everything the artifact depends on besides the recipe model's own
  fields (tool versions, calibration sha256, builder options …). ``host.export`` hashes it with
  the model sha256 into ``inputs_hash``: same hash + intact files = "up to date".
- ``build(job, out_dir, *, log) -> dict``: build into ``out_dir`` (an empty temp folder that
  ``host.export`` renames into place on success) and return the manifest fields
  (``board.manifest.Manifest``; at least ``format`` and ``entry``). ``log`` takes one line of text.
  Raise ``ToolkitMissingError`` before any work when the vendor toolkit is absent (the job is then
  listed as skipped), ``BuildError`` for failures. A builder never writes the results store:
  metrics it measures go into the manifest, and ``rows(job, manifest)`` turns them into rows.
- optional ``check(job)``, ``scheme_problems(model, target, scheme)``, ``depends_on(job)``, ``rows``.
"""

from __future__ import annotations

from types import ModuleType


def builder_for(kind: str) -> ModuleType:
    from host.build import registry

    return registry.get(kind).builder()
