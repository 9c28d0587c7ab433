"""What the benchmarks' plots share: a headless figure, a concurrency axis,
and saving it as a PNG beside the JSON result."""

from __future__ import annotations

from pathlib import Path


def figure(columns: int):
    import matplotlib

    matplotlib.use("Agg")  # no screen: files only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(5.5 * columns, 4.2), squeeze=False)
    return fig, list(axes[0])


def concurrency_axis(ax, xs: list[int], ylabel: str, title: str, log_y: bool = False) -> None:
    ax.set(xscale="log", yscale="log" if log_y else "linear", xlabel="concurrent clients", ylabel=ylabel,
           title=title)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def against_peer(ax, rows: list[dict], peer: str, peer_label: str, ylabel: str, title: str) -> None:
    """Tokens/s by concurrency, this server's and a peer's, each point marked with the ratio."""
    xs = [row["concurrency"] for row in rows]
    ax.plot(xs, [row["impetus"]["tokens_per_s"] for row in rows], "o-", label="impetus")
    ax.plot(xs, [row[peer]["tokens_per_s"] for row in rows], "s--", label=peer_label)
    for x, row in zip(xs, rows):
        if row["throughput_ratio"]:
            ax.annotate(f"{row['throughput_ratio']:.2f}x", (x, row["impetus"]["tokens_per_s"]),
                        textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    concurrency_axis(ax, xs, ylabel, title)


def save(fig, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    path = out.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
