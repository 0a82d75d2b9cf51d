"""`nca-scale nca show`: what trajectories of each complexity band look like.

For every band in `complexity.BANDS` the first few random candidate rules whose probe score falls in the band
(strict lo < s < hi, the candidates bank 0 of the train split draws from) are rolled out with the real
generator exactly as training rolls them out (`cfg.frames` frames from step `cfg.burn_in`, every `cfg.dt`).
Outputs, all in one directory that appears complete or not at all:

  band_<band>.png    rows = rules (rule id and probe score), columns = evenly spaced frames
  band_<band>.gif    the same rules side by side, animated over every frame
  score_histogram.png  probe scores of all scanned random rules, band edges and acceptance marked
  index.json         files, rule ids and scores shown, how many candidates were scanned
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from nca_scale.errors import UserError
from nca_scale.files import replacing
from nca_scale.nca import rng
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import rule_tables
from nca_scale.nca.complexity import BANDS
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stats import BandScan, scan_bands

SHOW_KEYS = 8  # rng domain of the trajectories shown (rng.py uses 1-6, bank.PROBE 7)
HISTOGRAM = "score_histogram.png"
INDEX = "index.json"
MAX_COLUMNS = 9  # frames per row of a PNG panel


def band_slug(band: str) -> str:
    return band.replace("+", "plus")


def band_label(band: str) -> str:
    """'20-30' -> '20-30%', '50+' -> '50%+' (how the paper names the bands)."""
    return band.replace("+", "%+") if band.endswith("+") else f"{band}%"


def state_colors(states: int) -> np.ndarray:
    """(states, 3) uint8 RGB: tab10 for up to 10 states (distinct, colour-blind-friendlier), else tab20/hsv."""
    from matplotlib import colormaps

    if states <= 10:
        rgb = colormaps["tab10"].colors[:states]
    elif states <= 20:
        rgb = colormaps["tab20"].colors[:states]
    else:
        rgb = colormaps["hsv"](np.linspace(0, 1, states, endpoint=False))[:, :3]
    return (np.asarray(rgb) * 255).round().astype(np.uint8)


# ---- trajectories ---------------------------------------------------------------------------------------
def trajectories(
    cfg: NCAConfig, candidates: list[int], frames: int, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(n, frames, grid, grid) uint8: candidate rules of train bank 0 rolled out training-style."""
    automaton = Automaton(cfg, device)
    ids = torch.tensor(candidates, dtype=torch.int64, device=automaton.device)
    keys = rng.hash32(SHOW_KEYS, cfg.seed, ids, device=automaton.device)
    with torch.inference_mode():
        tables = rule_tables(cfg, "train", 0, ids)
        out = automaton.rollout(tables, keys, frames, cfg.burn_in, cfg.dt)
    return out.cpu().numpy()


# ---- figures ----------------------------------------------------------------------------------------------
def new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg is used for savefig

    return Figure(figsize=(width, height), dpi=100)


def plot_histogram(
    scores: np.ndarray, path: Path, *, title: str, config_band: tuple | None = None, mode: str = "gzip"
) -> None:
    fig = new_figure(8.0, 4.2)
    ax = fig.add_subplot()
    top = max(0.7, float(scores.max()) + 0.02) if scores.size else 0.7
    ax.hist(scores, bins=np.linspace(0.0, top, 71), color="0.35", edgecolor="white", linewidth=0.4)
    shades = ["#fde0c5", "#d8ecd0", "#d5e3f5", "#ecd5f2"]
    ymax = ax.get_ylim()[1] * 1.18
    ax.set_ylim(0, ymax)
    for (name, (lo, hi)), shade in zip(BANDS.items(), shades):
        right = min(hi, top)
        ax.axvspan(lo, right, color=shade, zorder=0)
        ax.axvline(lo, color="0.2", linestyle="--", linewidth=0.8)
        frac = float(((scores > lo) & (scores < hi)).mean()) if scores.size else 0.0
        ax.text((lo + right) / 2, ymax * 0.97, f"{band_label(name)}\n{100 * frac:.1f}% of rules", ha="center", va="top",
                fontsize=8.5)
    if config_band is not None:
        lo, hi = config_band
        ax.annotate("", xy=(lo, ymax * 0.76), xytext=(min(hi, top), ymax * 0.76),
                    arrowprops={"arrowstyle": "<->", "color": "tab:red", "linewidth": 1.4})
        ax.text((lo + min(hi, top)) / 2, ymax * 0.775, "config band", color="tab:red", ha="center", va="bottom",
                fontsize=8)
    ax.set_xlim(0, top)
    ax.set_xlabel(
        "gzip complexity score (compressed / raw bytes of the probe trajectory)" if mode == "gzip"
        else "diff score (fraction of cells changing per step on the probe trajectory)"
    )
    ax.set_ylabel("random rules")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def frame_columns(frames: int, max_columns: int = MAX_COLUMNS) -> list[int]:
    """Up to `max_columns` frame indices at a constant stride from the first frame."""
    if frames <= max_columns:
        return list(range(frames))
    stride = max(1, (frames - 1) // (max_columns - 1))
    return list(range(0, frames, stride))[:max_columns]


def plot_band_grid(
    traj: np.ndarray, rules: list[tuple[int, float]], path: Path, *, band: str, states: int, start: int, dt: int,
    subtitle: str = "",
) -> None:
    """Rows = trajectories, columns = evenly spaced frames, one colour per state."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cols = frame_columns(traj.shape[1])
    rows = len(rules)
    cmap = ListedColormap(state_colors(states) / 255.0)
    norm = BoundaryNorm(np.arange(states + 1) - 0.5, states)
    fig = new_figure(1.25 * len(cols) + 2.2, 1.35 * rows + 1.1)
    axes = fig.subplots(rows, len(cols), squeeze=False)
    image = None
    for r, (rule, score) in enumerate(rules):
        for c, f in enumerate(cols):
            ax = axes[r, c]
            image = ax.imshow(traj[r, f], cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={start + f * dt}", fontsize=9)
        axes[r, 0].set_ylabel(f"rule {rule}\nscore {score:.3f}", fontsize=9, rotation=0, ha="right", va="center")
    lo, hi = BANDS[band]
    fig.suptitle(f"complexity band {band_label(band)}  ({lo} < probe score < {hi}){subtitle}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.915, 0.15, 0.018, 0.7))
    bar = fig.colorbar(image, cax=cax, ticks=range(states))
    bar.set_label("cell state", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    fig.savefig(path)


def write_gif(
    traj: np.ndarray, rules: list[tuple[int, float]], path: Path, *, band: str, states: int, start: int, dt: int,
    cell: int = 12, ms_per_frame: int = 300,
) -> None:
    """The trajectories side by side, one GIF frame per rollout frame, labelled with rule id, score and t."""
    from PIL import Image, ImageDraw, ImageFont

    n, frames, g, _ = traj.shape
    white, ink = states, states + 1
    palette = np.concatenate([state_colors(states), [[255, 255, 255], [30, 30, 30]]]).astype(np.uint8)
    size = g * cell
    gap, head, label = 14, 24, 18
    width = n * size + (n + 1) * gap
    height = head + label + size + gap
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    images = []
    for f in range(frames):
        canvas = np.full((height, width), white, dtype=np.uint8)
        for i in range(n):
            x = gap + i * (size + gap)
            canvas[head + label : head + label + size, x : x + size] = np.kron(
                traj[i, f].astype(np.uint8), np.ones((cell, cell), dtype=np.uint8)
            )
        img = Image.frombytes("P", (width, height), canvas.tobytes())
        img.putpalette(palette.flatten().tolist())
        draw = ImageDraw.Draw(img)
        draw.text((gap, 5), f"band {band_label(band)}   t={start + f * dt}   (frame {f + 1}/{frames})", fill=ink, font=font)
        for i, (rule, score) in enumerate(rules):
            draw.text((gap + i * (size + gap), head + 1), f"rule {rule}  s={score:.3f}", fill=ink, font=font)
        images.append(img)
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0, optimize=False,
                   disposal=1)


# ---- the whole `show` output, written atomically ----------------------------------------------------------
def check_out(out: Path) -> None:
    """`out` must be new, empty, or a previous `nca show` output (which is replaced as a whole)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file; pass a directory path for the figures")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX).is_file():
        raise UserError(
            f"out={out} is a non-empty directory that is not an earlier `nca show` output; "
            "pass a new or empty directory"
        )


def make_show(
    cfg: NCAConfig, out: str | Path, *, per_band: int = 4, frames: int | None = None, max_rules: int = 4000,
    min_rules: int = 1000, threads: int = 1, device: str | torch.device = "cpu", config_path: str | None = None,
    on_chunk=None,
) -> dict:
    """Scan random rules, render every band and the histogram into `out`; returns the index written."""
    out = Path(out)
    check_out(out)
    frames = frames or cfg.frames
    scan: BandScan = scan_bands(
        cfg, per_band, max_rules, min_rules=min(min_rules, max_rules), device=device, threads=threads,
        on_chunk=on_chunk,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:  # the whole output appears at once, replacing an earlier one
        tmp.mkdir()
        name = Path(config_path).name if config_path else "defaults"
        subtitle = (
            f"\n{name}, seed {cfg.seed}; training-style rollout of {frames} frames from t={cfg.burn_in}; "
            f"score = {cfg.complexity.mode} score of the rule's separate probe rollout"
        )
        index: dict = {
            "config": config_path,
            "seed": cfg.seed,
            "split": "train",
            "bank": 0,
            "scanned": scan.scanned,
            "per_band": per_band,
            "frames": frames,
            "burn_in": cfg.burn_in,
            "dt": cfg.dt,
            "complexity": {"mode": cfg.complexity.mode, "probe": cfg.complexity.probe},
            "histogram": HISTOGRAM,
            "bands": {},
            "files": [],
        }
        plot_histogram(
            scan.scores, tmp / HISTOGRAM,
            title=f"probe complexity of {scan.scanned} random rules ({name}, seed {cfg.seed})",
            config_band=None if cfg.complexity.lo is None else (cfg.complexity.lo, cfg.complexity.hi),
            mode=cfg.complexity.mode,
        )
        index["files"].append(HISTOGRAM)
        for band, (lo, hi) in BANDS.items():
            rules = scan.picked[band]
            entry = {
                "lo": lo, "hi": hi,
                "accepted": float(((scan.scores > lo) & (scan.scores < hi)).mean()) if scan.scanned else 0.0,
                "rules": [{"id": r, "score": s} for r, s in rules],
                "png": None, "gif": None,
            }
            if rules:
                traj = trajectories(cfg, [r for r, _ in rules], frames, device)
                slug = band_slug(band)
                png, gif = f"band_{slug}.png", f"band_{slug}.gif"
                kw = {"band": band, "states": cfg.states, "start": cfg.burn_in, "dt": cfg.dt}
                plot_band_grid(traj, rules, tmp / png, subtitle=subtitle, **kw)
                write_gif(traj, rules, tmp / gif, **kw)
                entry["png"], entry["gif"] = png, gif
                index["files"] += [png, gif]
            index["bands"][band] = entry
        index["files"].append(INDEX)
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index

