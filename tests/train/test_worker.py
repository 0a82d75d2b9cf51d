"""A process megatron's checkpoint writer spawns from a rank re-imports the worker module as __mp_main__; it
must die with the rank (the death signal is not inherited across fork/spawn), or a kill -9 leaves it behind."""

import os
import subprocess
import sys
import time

CHILD = ("import runpy, time; runpy.run_module('nca_scale.train.worker', run_name='__mp_main__'); "
         "print('imported', flush=True); time.sleep(120)")
RANK = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
        "print(p.pid, flush=True); time.sleep(120)")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_process_spawned_by_a_rank_dies_with_it():
    # the launch record of a rank `nca-scale train` started (launcher pid 1): must not make the child kill itself
    env = dict(os.environ, NCA_SCALE_LAUNCH='{"launcher": "nca-scale torchrun", "verifies": "launcher", '
               '"folder": "launcher", "launcher_pid": 1}')
    rank = subprocess.Popen([sys.executable, "-c", RANK, CHILD], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = int(rank.stdout.readline())
        assert rank.stdout.readline().strip() == "imported"  # the child shares the rank's stdout
        assert _alive(child), "the spawned process killed itself while its rank was alive"
        rank.kill()
        rank.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the spawned process outlived its rank"
    finally:
        rank.kill()

