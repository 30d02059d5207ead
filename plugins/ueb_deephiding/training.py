"""Training the hiding network (paper Sec. IV-A2), checkpointed, resumable, self-healing.

Each step draws a batch of clean images, gives every image a hidden image from its class's
group (a random member, so one hider serves both DH(C) and DH(S)), hides, reveals from the
container plus a fresh Gaussian r, and minimises L_total (eqs. 7-11) with Adam.

HiNet's training is known to blow up: its issue #12 reports the reconstruction loss jumping
from 7e-4 to 1e9 within ten mini-batches. A step whose loss or gradients are not finite, or
whose loss exceeds `explode_factor` times the median of the recent losses, is not applied:
the run rolls back to the last good checkpoint, multiplies the learning rate by
`rollback_lr_factor` and says so in the log. Checkpoints (network, optimiser, random state,
loss history) are written every `checkpoint_every` steps into the artifact folder, so a
killed run resumes where it stopped; a resumed run is bit-identical to an uninterrupted one
on the CPU.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ueb.errors import UebError
from ueb.imageset import ImageSet
from ueb.progress import Progress, silent
from ueb_deephiding.hidden import HiddenGroups
from ueb_deephiding.inn import HidingNetwork
from ueb_deephiding.losses import LossWeights, total_loss


@dataclass(frozen=True)
class HiderConfig:
    """Architecture (HiNet) and optimisation (paper Sec. IV-A2) of one hider training."""

    blocks: int = 16
    growth: int = 32
    dense_layers: int = 5
    clamp: float = 2.0
    init_scale: float = 0.01
    iterations: int = 5000
    batch_size: int = 24
    lr: float = 10**-4.5
    beta1: float = 0.5
    beta2: float = 0.999
    adam_eps: float = 1e-6
    weights: LossWeights = LossWeights()
    checkpoint_every: int = 100
    explode_factor: float = 100.0
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 8
    seed: int = 0

    def network(self, channels: int) -> HidingNetwork:
        return HidingNetwork(
            self.blocks, channels, self.clamp, self.growth, self.dense_layers, self.init_scale
        )

    def arch(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "growth": self.growth,
            "dense_layers": self.dense_layers,
            "clamp": self.clamp,
        }


class TrainingDiverged(UebError):
    pass


def _save(obj: dict[str, Any], path: Path) -> None:
    from ueb.atomic import save_torch

    save_torch(obj, path, what="a hider checkpoint")


def train_hider(
    train: ImageSet,
    groups: HiddenGroups,
    cfg: HiderConfig,
    folder: Path,
    *,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    fault: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    after_checkpoint: Callable[[int], None] | None = None,
) -> tuple[HidingNetwork, dict[str, Any]]:
    """Train (or resume training) a hider; returns it and a summary of the run.

    `fault(step, terms)` and `after_checkpoint(step)` are test hooks: the first may corrupt
    a step's loss terms, the second may raise to simulate a kill right after a checkpoint.
    """
    progress = progress or silent()
    device = torch.device(device)
    folder = Path(folder)
    ckpt_dir = folder / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "last.pt"

    torch.manual_seed(cfg.seed)
    net = cfg.network(train.channels).to(device)
    opt = torch.optim.Adam(
        net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    images = train.uint8()
    labels = train.labels
    hidden = groups.images
    m = hidden.shape[1]
    history: list[dict[str, float]] = []
    events: list[str] = []
    step, lr = 0, cfg.lr

    def snapshot() -> dict[str, Any]:
        return {
            "step": step,
            "lr": lr,
            "net": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "opt": copy.deepcopy(opt.state_dict()),
            "gen": gen.get_state(),
            "history": list(history),
            "events": list(events),
        }

    def restore(state: dict[str, Any]) -> None:
        nonlocal step, lr, history, events
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, lr = int(state["step"]), float(state["lr"])
        history = list(state["history"])
        events = list(state["events"])
        for group in opt.param_groups:
            group["lr"] = lr

    if ckpt_path.exists():
        restore(torch.load(ckpt_path, map_location="cpu", weights_only=False))
        log(f"deephiding: resuming hider training from step {step} ({ckpt_path})")
    good = snapshot()
    rollbacks = sum(1 for e in events if e.startswith("rollback"))

    with progress.task(f"hider ({cfg.blocks} blocks)", total=cfg.iterations) as bar:
        bar.advance(step)
        while step < cfg.iterations:
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
            pick = torch.randint(0, m, (cfg.batch_size,), generator=gen)
            y = labels[idx]
            x_c = images[idx].to(device).float().div_(255)
            x_h = hidden[y, pick].to(device).float().div_(255)
            noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            net.train()
            container, z_h = net.hide(x_c, x_h)
            r = torch.randn(z_h.shape, generator=torch.Generator().manual_seed(noise_seed)).to(
                device
            )
            _, revealed = net.reveal(container, r)
            terms = total_loss(x_c, x_h, y.to(device), container, revealed, features, cfg.weights)
            if fault is not None:
                fault(step, terms)
            loss = terms["total"]
            value = float(loss.detach())
            recent = [h["total"] for h in history[-50:]]
            exploded = len(recent) >= 10 and value > cfg.explode_factor * max(
                statistics.median(recent), 1e-12
            )
            ok = math.isfinite(value) and not exploded
            if ok:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                ok = all(
                    p.grad is None or bool(torch.isfinite(p.grad).all()) for p in net.parameters()
                )
            if not ok:
                rollbacks += 1
                if rollbacks > cfg.max_rollbacks:
                    raise TrainingDiverged(
                        f"hider training diverged {rollbacks} times (last at step {step}, lr {lr:.3g})",
                        "lower 'lr' or 'clamp', or check the hidden images",
                    )
                why = (
                    "non-finite loss or gradient"
                    if not exploded
                    else f"loss {value:.4g} > {cfg.explode_factor:g} x recent median"
                )
                bad_step = step
                restore(good)
                lr *= cfg.rollback_lr_factor
                for group in opt.param_groups:
                    group["lr"] = lr
                msg = f"rollback at step {bad_step}: {why}; back to step {step}, lr now {lr:.3g}"
                events.append(msg)
                log(f"deephiding: {msg}")
                bar.update(description=f"hider (rolled back to {step})")
                continue
            opt.step()
            step += 1
            history.append({"step": step, **{k: float(v.detach()) for k, v in terms.items()}})
            bar.advance()
            if step % 10 == 0 or step == cfg.iterations:
                bar.update(loss=value, reveal=history[-1]["reveal"])
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                good = snapshot()
                _save(good, ckpt_path)
                if after_checkpoint is not None:
                    after_checkpoint(step)

    from ueb.atomic import save_torch, write_text

    save_torch(
        {"arch": cfg.arch(), "channels": train.channels, "state": net.state_dict()},
        folder / "hider.pt",
        what="the trained hider",
    )
    write_text(
        folder / "history.json",
        json.dumps({"history": history, "events": events}),
        what="the hider's history",
    )
    plot_losses(history, folder / "loss.png", events)
    tail = history[-max(1, min(50, len(history) // 5)) :]
    final = {k: statistics.fmean(h[k] for h in tail) for k in TERMS} if tail else {}
    summary = {
        "iterations": step,
        "final_lr": lr,
        "rollbacks": len([e for e in events if e.startswith("rollback")]),
        "events": events,
        "final_losses": final,
        "loss_balance": loss_balance(final, cfg.weights) if final else None,
        "loss_curve": loss_curve(history),
        "config": json.loads(json.dumps(asdict(cfg))),
    }
    net.eval()
    return net, summary


TERMS = ("total", "hide", "freq", "reveal", "conc")


def loss_balance(losses: dict[str, float], w: LossWeights) -> float | None:
    """w3 L_conc / (w1 L_freq + w2 L_reveal): near 1 when LFC weighs as much as hiding
    precision does (the paper's reason for w3 = 1e-4, appendix A.2.1); None if undefined."""
    other = w.w_freq * losses["freq"] + w.w_reveal * losses["reveal"]
    return w.w_conc * losses["conc"] / other if other > 0 else None


def loss_curve(history: list[dict[str, float]], points: int = 50) -> dict[str, list[float]]:
    """Every loss term through training, each the mean over one of `points` equal windows."""
    if not history:
        return {}
    n = min(points, len(history))
    bounds = [round(i * len(history) / n) for i in range(n + 1)]
    windows = [history[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    curve: dict[str, list[float]] = {"step": [w[-1]["step"] for w in windows]}
    for key in TERMS:
        curve[key] = [statistics.fmean(h[key] for h in w) for w in windows]
    return curve


def load_hider(path: Path, device: str | torch.device = "cpu") -> HidingNetwork:
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    a = blob["arch"]
    net = HidingNetwork(a["blocks"], blob["channels"], a["clamp"], a["growth"], a["dense_layers"])
    net.load_state_dict(blob["state"])
    return net.to(device).eval()


def plot_losses(
    history: list[dict[str, float]], path: Path, events: list[str] | None = None
) -> None:
    """Loss curves (log scale) as a PNG beside the checkpoint."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in TERMS:
        vals = [max(h[key], 1e-12) for h in history]
        ax.plot(steps, vals, label=key, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(f"Deep Hiding hider training ({len(events or [])} rollbacks)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
