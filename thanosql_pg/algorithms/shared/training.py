"""The training loop's shared parts: the optimizer (AdamW, warm-up then cosine decay,
no weight decay on norms and biases, the AMP scaler, gradient clipping, one step per
batch), seeding, the epoch loop with running means on the device, and progress notices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from thanosql_pg.algorithms.contract import RowSource
from thanosql_pg.algorithms.shared.devices import cuda_indices
from thanosql_pg.errors import InvalidOption

B = TypeVar("B")


def param_groups(net: Any, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters, weight decay on weights only (none on norms and biases)."""
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_schedule(groups: Any, lr: float, total_steps: int, warmup_fraction: float,
                       device: Any) -> tuple[Any, Any, Any]:
    """AdamW with a linear warm-up then cosine decay (stepped once per batch),
    and a GradScaler only where fp16 autocast needs one (CUDA without bf16).
    Returns (optimizer, scheduler, scaler or None)."""
    import torch

    total_steps = max(1, total_steps)
    warmup = max(1, int(warmup_fraction * total_steps))
    opt = torch.optim.AdamW(groups, lr=lr)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return opt, sched, (torch.amp.GradScaler("cuda") if use_scaler else None)


class Stepper:
    """One optimizer step per batch: backward (scaled where fp16 needs it), optional
    gradient clipping, the step, and the schedule's step."""

    def __init__(self, net: Any, *, learning_rate: float, weight_decay: float, total_steps: int,
                 warmup_fraction: float, device: Any, max_grad_norm: float | None = None) -> None:
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.opt, self.sched, self.scaler = optimizer_schedule(
            param_groups(net, weight_decay), learning_rate, total_steps, warmup_fraction, device)
        self.max_grad_norm = max_grad_norm

    def step(self, loss: Any) -> None:
        import torch

        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.max_grad_norm is not None:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.opt.step()
        self.sched.step()

    def release(self) -> None:
        """Free gradients and optimizer state (3x the weights), before the weights are serialized."""
        self.opt.zero_grad(set_to_none=True)
        self.opt.state.clear()


@contextmanager
def seeded(device: Any, seed: int = 0) -> Iterator[None]:
    """Same data, same options → same model: seed this statement's random state
    without disturbing the session's."""
    import torch

    with torch.random.fork_rng(devices=cuda_indices(device)):
        torch.manual_seed(seed)
        yield


def refuse_base_model(opts: dict[str, Any]) -> None:
    """FIT starts from the model named after USING: base_model is BUILD's."""
    if opts.get("base_model"):
        raise InvalidOption('option "base_model" does not apply to FIT MODEL',
                            hint="FIT MODEL starts from the model named after USING.")


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return math.ceil(max(1, rows) / batch_size)


# --- the epoch loop --------------------------------------------------------------------------
@dataclass
class EpochStats:
    """What the epochs did: the last epoch's mean loss and score, the items trained on."""

    loss: float = float("nan")
    score: float = float("nan")
    items: int = 0


def run_epochs(source: RowSource, progress: Progress, device: Any, epochs: int,
               batches: Callable[[int], Iterator[B]],
               step: Callable[[int, B], tuple[Any, Any, int] | None]) -> EpochStats:
    """For each epoch, ``step(epoch, batch)`` over ``batches(epoch)`` (closed at the end,
    and on an error or cancel: no decoding outlives the statement), a pending cancel
    checked before each batch. ``step`` returns (loss tensor, score summed over the
    batch, items), or None to pass the batch over. Sums stay on the device: no GPU sync
    per step, only for progress notices."""
    import torch

    out = EpochStats()
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        score_sum = torch.zeros((), device=device)
        seen = steps = 0
        with closing(batches(epoch)) as it:  # type: ignore[type-var]
            for batch in it:
                source.check_interrupts()  # a pending cancel stops training here, within one batch
                done = step(epoch, batch)
                if done is None:
                    continue
                loss, score, n = done
                loss_sum += loss.detach() * n
                score_sum += score
                seen += n
                steps += 1
                progress.step(n)
                if progress.due():
                    progress.report(epoch, steps, (loss_sum / seen).item(), (score_sum / seen).item())
        out.items += seen
        if seen:
            out.loss, out.score = (loss_sum / seen).item(), (score_sum / seen).item()
    return out


# --- progress --------------------------------------------------------------------------------
class Progress:
    """Progress NOTICEs at most every ``interval`` seconds: epoch, step, loss, a score
    (``score_name``), throughput (``speed``) and ETA."""

    score_name = "accuracy"

    def __init__(self, notice: Callable[[str], None], interval: float, *, label: str, epochs: int,
                 steps_per_epoch: int) -> None:
        self.notice = notice
        self.interval = interval
        self.label = label
        self.epochs = epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.start = self.last = time.monotonic()
        self.images = 0
        self.steps_done = 0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval

    def step(self, images: int) -> None:
        self.images += images
        self.steps_done += 1

    def speed(self, elapsed: float) -> str:
        return f"{self.images / elapsed if elapsed > 0 else 0.0:.1f} images/s"

    def report(self, epoch: int, step: int, loss: float, score: float) -> None:
        now = time.monotonic()
        self.last = now
        elapsed = now - self.start
        total = self.epochs * self.steps_per_epoch
        left = max(0, total - self.steps_done)
        eta = elapsed / self.steps_done * left if self.steps_done else float("nan")
        self.notice(
            f"{self.label}: epoch {epoch + 1}/{self.epochs}, step {step}/{self.steps_per_epoch},"
            f" loss {loss:.4f}, {self.score_name} {score:.4f}, {self.speed(elapsed)}, ETA {duration(eta)}"
        )

    def images_per_second(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0


def duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
