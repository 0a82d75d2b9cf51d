"""Launching nca-scale jobs through submitit: Slurm on a cluster, local processes without one.

profile   cluster profiles (YAML) and their check against the live cluster
rendezvous torch.distributed environment from Slurm's (the same variables torchrun sets)
task      what runs in each Slurm task: rendezvous, the nca-scale command, requeue after preemption
submit    `nca-scale submit`: sweeps as job arrays, dependencies, the job record
status    `nca-scale status`: state, step, last loss, restarts and logs of recorded jobs
"""
