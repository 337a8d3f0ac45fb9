"""``rkdeploy clean``: what rkdeploy leaves on disk that can go, with sizes; deletes only with ``--yes``.

Three kinds of things:
- ``float-reference``: the quality cache's float references (``float-*``, 0.5-2.3 GB each) and encoder
  embeddings (``embed-*.npy``) under ``host.quality.reference.quality_cache()``; recomputed when needed.
  Finished quality rows (``rows/``, kilobytes) stay.
- ``stale-temp``: what an interrupted atomic build left beside an artifact (``.tmp-<scheme>-XXXXXXXX``,
  ``.old-<scheme>-<pid>``, ``host.fsutil.stale_atomic_dirs``) — only where the artifact's build lock is free,
  so a running export keeps its temp folder — and ``.tmp-*`` folders older than a day in the model and
  quality caches (no lock there; a day is far past any build).
- ``artifact``: with a recipe, its artifact folders (every target, or one) and their failure records.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_TEMP_AGE_S = 24 * 3600


@dataclass(frozen=True)
class CleanItem:
    what: str       # float-reference | stale-temp | artifact
    path: Path
    size: int

    def to_dict(self) -> dict:
        return {"what": self.what, "path": str(self.path), "bytes": self.size}


def _size(p: Path) -> int:
    if p.is_symlink() or p.is_file():
        return p.lstat().st_size
    return sum(f.lstat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _lock_is_free(lock: Path) -> bool:
    """True when no export holds ``lock`` (``host.export._lock_job``); a missing lock file is free."""
    import fcntl

    if not lock.exists():
        return True
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def float_references() -> list[CleanItem]:
    from host.quality.reference import quality_cache

    root = quality_cache()
    if not root.is_dir():
        return []
    found = sorted([*root.glob("float-*"), *root.glob("embed-*.npy")])
    return [CleanItem("float-reference", p, _size(p)) for p in found if not p.name.startswith(".")]


def stale_artifact_temps(root: Path) -> list[CleanItem]:
    """Leftovers of interrupted builds under ``<root>/<model>/<target>/``, skipping artifacts being built now."""
    from host.fsutil import stale_atomic_dirs

    out = []
    for target_dir in sorted(p for p in root.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
        names = {p.name for p in target_dir.iterdir() if not p.name.startswith(".")}
        names |= {p.name[len(".lock-"):] for p in target_dir.glob(".lock-*")}
        for name in sorted(names):
            if not _lock_is_free(target_dir / f".lock-{name}"):
                continue
            out += [CleanItem("stale-temp", p, _size(p)) for p in stale_atomic_dirs(target_dir / name)]
    return out


def stale_cache_temps(now: float | None = None) -> list[CleanItem]:
    from host.models import cache_root
    from host.quality.reference import quality_cache

    now = time.time() if now is None else now
    out = []
    for root in (cache_root(), cache_root() / "gguf", quality_cache()):
        if root.is_dir():
            out += [CleanItem("stale-temp", p, _size(p)) for p in sorted(root.glob(".tmp-*"))
                    if now - p.lstat().st_mtime > CACHE_TEMP_AGE_S]
    return out


def recipe_artifacts(recipe_path: Path, root: Path, target: str | None) -> list[CleanItem]:
    from host.config import load_recipe
    from host.export import failure_record

    recipe = load_recipe(recipe_path)
    out = []
    for m in recipe.models:
        targets = sorted(p for p in (root / m.name).glob("*") if p.is_dir()) if target is None \
            else [root / m.name / target.lower()]
        for tdir in targets:
            if not tdir.is_dir():
                continue
            for art in sorted(p for p in tdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                # an export rebuilding this artifact right now holds its lock: leave it (and its failure record)
                if (art / "manifest.json").is_file() and _lock_is_free(tdir / f".lock-{art.name}"):
                    out.append(CleanItem("artifact", art, _size(art)))
                    rec = failure_record(art)
                    if rec.is_file():
                        out.append(CleanItem("artifact", rec, _size(rec)))
    return out


def plan_clean(*, root: Path, references: bool = True, temps: bool = True, recipe: Path | None = None,
               target: str | None = None) -> list[CleanItem]:
    items: list[CleanItem] = []
    if references:
        items += float_references()
    if temps:
        items += stale_artifact_temps(root) + stale_cache_temps()
    if recipe is not None:
        items += recipe_artifacts(recipe, root, target)
    return items


def remove(items: list[CleanItem]) -> int:
    """Delete ``items``; the bytes freed (a path already gone counts 0, one that could not be removed whole
    counts what left)."""
    freed = 0
    for it in items:
        p = it.path
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)
        else:
            continue
        freed += it.size - (_size(p) if p.exists() else 0)
    return freed
