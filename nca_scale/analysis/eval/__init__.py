"""Evaluation of trained checkpoints (`nca-scale eval CKPT task=...`): held-out perplexity, HumanEval,
GSM8K and BIG-bench-Lite-style tasks, with the paper's prompt formats and sampling (paper.md §4).
See docs/evaluation.md."""
