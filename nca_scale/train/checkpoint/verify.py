"""Is a checkpoint what was written? Manifest file tables (size and sha256 of every file, made once when a save is
committed) and verification against them.

Loading verifies the manifest: sizes first (cheap), then checksums. meta.json files written before manifests
existed (no "files") are accepted unverified.
"""

from __future__ import annotations

from pathlib import Path

from nca_scale.files import file_sha256 as sha256  # module-level: tests count the calls
from nca_scale.files import fsync
from nca_scale.train import faults
from nca_scale.train.checkpoint import META, STAGING, read_meta


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).as_posix() != META)


def _entry(path: Path) -> dict:
    """The manifest entry of the file at `path` (size and sha256), after an fsync: it is final."""
    fsync(path)
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def file_table(path: Path) -> dict[str, dict]:
    faults.hit("verify", path.name.removesuffix(STAGING))
    return {p.relative_to(path).as_posix(): _entry(p) for p in _files(path)}


def file_table_in_parallel(path: Path) -> dict[str, dict] | None:
    """file_table(path), with every rank fsyncing and checksumming a share of the files (the largest first, each
    to the rank with the fewest bytes so far) at the same time: a save's checksums take 1/world of the time they
    take on rank 0 alone. The whole table on global rank 0, None elsewhere; a collective on the side group, so
    the ranks wait for the slowest share under rank0_timeout_s; an error on any rank is raised on all (RankFailure)."""
    from nca_scale.train import dist

    listing = dist.decided_by_rank0(lambda: sorted(((p.stat().st_size, p.relative_to(path).as_posix())
                                                     for p in _files(path)), reverse=True))
    rank, world = dist.rank_and_world()
    load, mine, error = [0] * world, {}, None
    try:
        faults.hit("verify", path.name.removesuffix(STAGING))
        for size, name in listing:
            owner = load.index(min(load))
            load[owner] += size
            if owner == rank:
                mine[name] = _entry(path / name)
    except Exception as e:  # one rank's failure ends every rank, naming it (not a gather that never completes)
        error = e
    dist.shared_failure(error, f"checksumming {path.name}")
    return dist.merged_on_rank0(mine)


def verify(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path` (None if nothing): its manifest against its files."""
    try:
        meta = read_meta(path)
    except FileNotFoundError:
        return f"no {META}: it was interrupted while saving"
    except (OSError, ValueError) as e:
        return f"unreadable {META} ({type(e).__name__})"
    files = meta.get("files")
    if files is None:
        return None  # written before manifests carried checksums
    for name, want in files.items():
        p = path / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want["size"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {want['size']}"
    for name, want in files.items():
        if sha256(path / name) != want["sha256"]:
            return f"{name} does not match its sha256 in {META}"
    return None
