"""A backend as the rest of nca_scale sees it: its entry in the registry (backends/__init__.py).

Each backend folder's `__init__` makes one `Backend`: its name (the config's `backend:` value), its config section
(TrainConfig's section of that name, imported with it: the config needs the class), what the shared checks need to
know of it, and where its engine, its checkpoint format, its memory terms and its simulation live, imported when
first asked for (megatron-core and DeepSpeed take seconds to import)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    name: str  # the config's `backend:` value, and the name of its section
    engine: str  # "module:Class" of its Engine (backends/base.py)
    format: str  # "module:object" of its Format (backends/base.py): what its checkpoints hold
    memory: str  # "module:object" of its model.memory.Sharding: what a rank holds (the planner's arithmetic)
    simulation: str  # "module:object" of its Simulation (backends/base.py): what `train simulate=` builds of it
    section: type | None = None  # its own keys, TrainConfig's section `name` (validate(backend, optim) checks them)
    check: Callable[[Any], None] | None = None  # its checks of the whole TrainConfig, after the sections' own
    # the environment a rank's process needs before it creates its CUDA context: {variable: default}
    environment: Callable[[Any], dict[str, str]] | None = None
    model_parallel: bool = False  # reads parallel.tp/pp/vpp/sequence_parallel
    selective_recompute: bool = False  # recompute=selective
    buckets: bool = True  # reads parallel.bucket_size
    background_saves: bool = True  # checkpoint.asynchronous

    def load_engine(self) -> type:
        return _load(self.engine)

    def load_format(self):
        return _load(self.format)

    def load_memory(self):
        return _load(self.memory)

    def load_simulation(self):
        return _load(self.simulation)


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
