"""Figures and summaries for looking at what the data engine produces (matplotlib Agg, Pillow)."""
