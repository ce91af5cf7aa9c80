"""Draw a block's affinity matrices: each head's N x N matrices and one query token's row as an image.

The paper's picture of attention against Container affinity, for the user's own block and weights.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import container
from bench.kit import save_figure
from bench.targets import BenchInputError, BlockTarget


def block_and_input(kind: str | None = None, dim: int = 64, side: int = 14, heads: int | None = None,
                    kernel_size: int = 5, network: str | None = None, block: str | None = None,
                    weights: str | Path | None = None, seed: int = 0) -> tuple[container.ContainerBlock, torch.Tensor]:
    """A block and the input it sees: standalone (random weights or a block state_dict), or taken
    from inside a network (a named network or a config JSON file, with optional network weights)."""
    torch.manual_seed(seed)
    if network is None:
        module = BlockTarget(kind or "mix", dim, side, heads, kernel_size).build().eval()
        if weights:
            module.load_state_dict(_load_state_dict(weights), strict=True)
        return module, torch.randn(1, dim, side, side)

    path = Path(network)
    config = (container.NetworkConfig.from_json(path.read_text()) if path.suffix == ".json"
              else container.model_config(network))
    net = container.build(config).eval()
    if weights:
        net.load_state_dict(_load_state_dict(weights), strict=True)
    block = block or f"blocks{len(config.stages)}.0"
    modules = dict(net.named_modules())
    if not isinstance(modules.get(block), container.ContainerBlock):
        valid = [n for n, m in modules.items() if isinstance(m, container.ContainerBlock)]
        raise BenchInputError(f"--block {block!r}: not a block of this network; e.g. {', '.join(valid[-3:])}")
    seen: dict[str, torch.Tensor] = {}
    handle = modules[block].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        net(torch.randn(1, config.in_chans, config.image_size, config.image_size))
    handle.remove()
    return modules[block], seen["x"]


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state


def draw_affinity(block: container.ContainerBlock, x: torch.Tensor, out: str | Path,
                  query: tuple[int, int] | None = None, max_heads: int = 4) -> Path:
    mats = block.affinity(x)
    h, w = x.shape[-2:]
    query = query or (h // 2, w // 2)
    if not (0 <= query[0] < h and 0 <= query[1] < w):
        raise BenchInputError(f"--query {query[0]},{query[1]}: outside the {h}x{w} token grid")
    q_index = query[0] * w + query[1]
    heads = min(block.heads, max_heads)
    per_head = block.dim // block.heads
    panels = [("dynamic: softmax(QK^T)", "dynamic"), ("static", "static"), ("combined", "combined")]
    panels = [(title, key) for title, key in panels if key in mats]
    fig, axes = plt.subplots(heads, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3 * heads), squeeze=False)
    for m in range(heads):
        channels = slice(m * per_head, (m + 1) * per_head)
        for ax, (title, key) in zip(axes[m], panels):
            a = mats[key]
            if key == "dynamic":
                a = a[0, m]
            elif key == "static":
                groups = a.shape[0]  # one matrix (mlp), one per head (mhmlp) or one per channel (conv)
                a = a[0] if groups == 1 else (a[m] if groups == block.heads else a[channels].mean(0))
            else:
                a = a[0, channels].mean(0)
            ax.imshow(a.detach().float().numpy(), cmap="viridis")
            ax.set_title(f"head {m}: {title}", fontsize=8)
            ax.axis("off")
        row = mats["combined"][0, channels].mean(0)[q_index].reshape(h, w)
        axes[m][-1].imshow(row.detach().float().numpy(), cmap="magma")
        axes[m][-1].scatter([query[1]], [query[0]], marker="x", c="cyan")
        axes[m][-1].set_title(f"head {m}: query token {query} row", fontsize=8)
        axes[m][-1].axis("off")
    alpha, beta = (float(v) for v in (mats["alpha"], mats["beta"]))
    fig.suptitle(f"{block.kind.name} block, dim {block.dim}, {block.heads} heads, {h}x{w} tokens; "
                 f"alpha={alpha:.3f}, beta={beta:.3f}", fontsize=10)
    fig.tight_layout()
    path = save_figure(fig, out, dpi=110)
    plt.close(fig)
    return path
