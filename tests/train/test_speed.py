"""The pinned peak FLOP/s table: device names as torch reports them, dense bf16 figures as the data sheets print
them (half the 2:4-sparsity figure where the sheet prints only that), and a GPU the table does not know."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from nca_scale.train import dist as tdist
from nca_scale.train import speed
from nca_scale.train.callbacks import SpeedMonitor
from nca_scale.train.config import from_args

# torch.cuda.get_device_name() strings -> the data sheet's dense bf16 tensor FLOP/s (docs/gpu.md lists the sheets)
DATA_SHEETS = [
    ("NVIDIA H100 80GB HBM3", 1979e12 / 2),  # SXM5
    ("NVIDIA H100 PCIe", 1513e12 / 2),
    ("NVIDIA H100 NVL", 1671e12 / 2),
    ("NVIDIA H200", 1979e12 / 2),
    ("NVIDIA H200 NVL", 1671e12 / 2),
    ("NVIDIA H800", 1979e12 / 2),
    ("NVIDIA H800 PCIe", 1513e12 / 2),
    ("NVIDIA H20", 148e12),  # not the H200: whole model names only
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA A800-SXM4-80GB", 312e12),
    ("NVIDIA L40S", 362.05e12),
    ("NVIDIA L4", 242e12 / 2),  # not the L40S
    ("NVIDIA B200", 4.5e15 / 2),
    ("NVIDIA GB200", 5e15 / 2),  # not the B200
    ("NVIDIA GH200 480GB", 1979e12 / 2),  # not the H200
    ("NVIDIA GH200 144G HBM3e", 1979e12 / 2),
    ("AMD Instinct MI300X", 1307.4e12),
    ("AMD Instinct MI300X VF", 1307.4e12),
]


@pytest.mark.parametrize("name, flops", DATA_SHEETS)
def test_peak_of_each_known_gpu(name, flops):
    assert speed.gpu_peak(name) == pytest.approx(flops, rel=2e-3)


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "NVIDIA RTX PRO 6000 Blackwell", "NVIDIA H2000", ""])
def test_unknown_gpu_has_no_peak(name):
    assert speed.gpu_peak(name) is None


def _gpu_named(monkeypatch, name: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)


def test_unknown_gpu_warns_and_logs_mfu_null(monkeypatch, caplog):
    """Before, an unknown name raised KeyError in SpeedMonitor.pre_train: the run died before step 1."""
    _gpu_named(monkeypatch, "NVIDIA Future 9000")
    monkeypatch.setattr(tdist, "rank_and_world", lambda: (0, 8))  # 8 GPUs: the peak is 8 x one GPU's
    cfg = from_args(["configs/train/cpu-tiny.yaml"]).resolved()
    trainer = SimpleNamespace(cfg=cfg, should_log=lambda: False)  # memory: test_phase_timers.py
    monitor = SpeedMonitor()
    with caplog.at_level(logging.WARNING, logger="nca_scale.train.speed"):
        monitor.pre_train(trainer)
    assert [r.getMessage() for r in caplog.records] == [
        "no pinned peak FLOP/s for GPU 'NVIDIA Future 9000': MFU is logged as null; set peak_flops=<dense bf16 "
        "FLOP/s per GPU> to get it"]
    metrics = {"step_time": 0.5}
    monitor.post_step(trainer, metrics)
    assert metrics["mfu"] is None and metrics["tokens_per_s"] == cfg.tokens_per_step / 0.5


def test_known_gpu_mfu(monkeypatch):
    _gpu_named(monkeypatch, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(tdist, "rank_and_world", lambda: (0, 8))  # 8 GPUs: the peak is 8 x one GPU's
    trainer = SimpleNamespace(cfg=from_args(["configs/train/cpu-tiny.yaml"]).resolved(), should_log=lambda: False)
    monitor = SpeedMonitor()
    monitor.pre_train(trainer)
    metrics = {"step_time": 0.25}
    monitor.post_step(trainer, metrics)
    assert metrics["mfu"] == pytest.approx(metrics["tokens_per_s"] * monitor.flops_per_token / (8 * 989e12))
