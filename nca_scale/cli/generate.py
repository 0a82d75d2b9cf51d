"""nca-scale generate CONFIG.yaml out=URL tokens=N [job keys] [config overrides]

Writes NCA sequences [start, start + ceil(N / (seq_len + 1))) as WebDataset shards plus manifest.json
(docs/data.md). URL: a local path, file:///dir, s3://bucket/prefix or memory://name.
Job keys: out, tokens, split (train|val), start, sequences_per_shard, batch_size, workers (generating
processes, one thread each; 0 = one per core on CPU, 1 on CUDA; 1 = this process only), threads (intra-op
threads when workers=1; 0 = all cores), device (cpu|cuda|cuda:N), endpoint_url (S3-compatible endpoint;
default $AWS_ENDPOINT_URL), verify (re-hash existing shards before skipping them), progress, tar_workers
(processes building tars when workers=1; 0 = a thread). Any other key=value overrides CONFIG.
Re-running the same command skips complete shards; only the manifest publishes a directory.
"""

from __future__ import annotations

import sys

from nca_scale.cli.common import parse_job
from nca_scale.data.writer import GenerateJob
from nca_scale.nca.config import NCAConfig


def main(args: list[str]) -> int:
    from nca_scale.data.writer import generate

    job, cfg, _ = parse_job(GenerateJob, NCAConfig, args, config_required=True)
    loc, result = generate(cfg, job)
    m = result.manifest
    print(
        f"{loc.url_of('manifest.json')}: {m['sequences']} sequences ({m['tokens']} tokens) in {len(m['shards'])} "
        f"shards; wrote {result.written}, kept {result.skipped}; {result.tokens_per_second:,.0f} tokens/s",
        file=sys.stdout,
    )
    return 0


main.__doc__ = __doc__  # what `nca-scale generate --help` prints
