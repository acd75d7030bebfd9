"""The sweep chart: time (and adherence) against the X axis, one line per Y value (and Z value).

matplotlib is imported here, on first use, with the Agg backend: no display is needed and importing
hayai stays light.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["time_chart"]


def _series(rows: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """Line label -> [(x index, value)], for the rows that have the metric."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if row.get(metric) is None:
            continue
        label = " / ".join(part for part in (row["y"], row["z"]) if part) or "all cells"
        lines.setdefault(label, []).append((row["ix"], float(row[metric])))
    return lines


def time_chart(rows: list[dict], x_values: list, x_title: str, path: Path, *, title: str = "") -> Path:
    """Seconds per cell (text encoding + denoising + decoding, without model load and saving) against
    X, and the adherence score below it when the rows have one. Numeric X values are placed by value."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_values)
    positions = list(x_values) if numeric else list(range(len(x_values)))
    panels = [("seconds", "seconds per cell (encode + denoise + decode)")]
    if any(row.get("adherence") is not None for row in rows):
        panels.append(("adherence", "adherence (demo shapes score, 0-1)"))
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 3.2 * len(panels) + 0.6), sharex=True, squeeze=False)
    for (metric, ylabel), ax in zip(panels, axes[:, 0]):
        for label, points in _series(rows, metric).items():
            points.sort()
            ax.plot([positions[i] for i, _ in points], [v for _, v in points], marker="o", label=label)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if metric == "seconds":
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylim(-0.05, 1.05)
        if len(_series(rows, metric)) > 1:
            ax.legend(fontsize="small")
    bottom = axes[-1, 0]
    bottom.set_xlabel(x_title)
    if not numeric:
        bottom.set_xticks(positions, [str(v) for v in x_values], rotation=20 if len(x_values) > 4 else 0)
    elif len(x_values) <= 12:
        bottom.set_xticks(positions)
    if title:
        figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
