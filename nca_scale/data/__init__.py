"""NCA sequences as WebDataset shards: writing (`generate`, `write_shards`), reading (`ShardReader`), locations (`urls`).

The data contract (index -> sample, shard layout, manifest, atomic commit, resume) is in docs/data.md.
"""

from nca_scale.data.reader import ShardReader, open_shards
from nca_scale.data.urls import Location, parse_location, register_gopen
from nca_scale.data.writer import GenerateJob, WriteResult, generate, plan_shards, sequences_for, write_shards

__all__ = [
    "GenerateJob", "Location", "ShardReader", "WriteResult", "generate", "open_shards", "parse_location",
    "plan_shards", "register_gopen", "sequences_for", "write_shards",
]
