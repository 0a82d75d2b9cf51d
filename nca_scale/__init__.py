"""nca_scale: neural-cellular-automata pre-pre-training for language models, at cluster scale."""

__version__ = "0.1.0"
