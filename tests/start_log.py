"""What the launch-record tests (tests/train/test_launch_record.py, tests/launch/test_launch_record_slurm.py)
import into every Python process of a job, as its sitecustomize.py on PYTHONPATH (sbatch passes it on): each
checksummed checkpoint file with the process that read it, and each rank's launch record, appended to
$START_LOG."""

SITECUSTOMIZE = """
import json, os
from dataclasses import asdict
from nca_scale.train.checkpoint import verify
from nca_scale.train import entry
_sha256, _rank = verify.sha256, entry.rank
def _write(line):
    with open(os.environ["START_LOG"], "a") as f:
        f.write(line + "\\n")
verify.sha256 = lambda path: _write(f"sha256 {os.getpid()} {path}") or _sha256(path)
entry.rank = lambda cfg, launch: _write(f"rank {os.environ['RANK']} {json.dumps(asdict(launch))}") or _rank(cfg, launch)
"""
