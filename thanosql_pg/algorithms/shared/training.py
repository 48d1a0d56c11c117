"""The training loop, for every family: the optimizer (AdamW, warm-up then cosine decay,
no weight decay on norms and biases, the AMP scaler, gradient clipping, one step per
batch), seeding, and ``Trainer``: the epochs with running means on the device, a
validation part of the rows scored every epoch (validation_split), early stopping with
the best epoch's weights kept (early_stopping, patience), the per-epoch history
(Trained.epochs), progress notices and the thanosql.progress view.

A family gives the trainer two functions: ``batches(part, epoch, training)``, an
iterator over a part's decoded batches, and ``forward(epoch, batch, training)``, one
batch's forward pass as a ``Step`` (loss, items, the metric's sums). The trainer owns
the rest: the optimizer step, train/eval mode, no_grad for validation, cancels, the
history and what is kept.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

from thanosql_pg import progress_text
from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import RowSource
from thanosql_pg.algorithms.shared import distributed
from thanosql_pg.algorithms.shared.devices import cuda_indices
from thanosql_pg.errors import DataError, InvalidOption

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

    def step(self, loss: Any, items: int = 0, *, shared: bool = False) -> int:
        """One step on ``loss``, the mean over ``items`` samples. ``shared``: one of several
        ranks (shared.distributed), whose gradients become the global batch's mean first;
        ``loss`` is then None for a rank without samples in this step, which still takes
        part. Returns the samples the step was taken on (0: none anywhere, no step)."""
        import torch

        self.opt.zero_grad(set_to_none=True)
        if loss is not None:
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        elif self.scaler is not None:
            self.scaler.scale(torch.zeros((), device=self.params[0].device))  # its scale, made once
        if shared:
            items = distributed.average_gradients(self.params, items if loss is not None else 0,
                                                  self.params[0].device)
            if items == 0:
                return 0
        if self.scaler is not None:
            if self.max_grad_norm is not None:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.opt.step()
        self.sched.step()
        return items

    def learning_rate(self) -> float:
        """The learning rate of the last step (the schedule's, of the first parameter group)."""
        return float(self.opt.param_groups[0]["lr"])

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


def refuse_base_model(opts: registry.Options) -> None:
    """FIT starts from the model named after USING: base_model is BUILD's."""
    if opts.base_model:
        raise InvalidOption('option "base_model" does not apply to FIT MODEL',
                            hint="FIT MODEL starts from the model named after USING.")


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return math.ceil(max(1, rows) / batch_size)


# --- what is scored -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """What a family scores every epoch, on the training batches and the validation part."""

    name: str  # as thanosql.model_epochs.metric and the result's metrics name it
    label: str  # in notices
    higher_is_better: bool
    is_loss: bool = False  # the metric is the loss itself: the result's metrics do not repeat it

    def better(self, value: float, than: float | None) -> bool:
        if math.isnan(value):
            return False
        if than is None or math.isnan(than):
            return True
        return value > than if self.higher_is_better else value < than


ACCURACY = Metric("accuracy", "accuracy", higher_is_better=True)
CER = Metric("cer", "CER", higher_is_better=False)
CONTRASTIVE_LOSS = Metric("contrastive_loss", "contrastive loss", higher_is_better=False, is_loss=True)


@dataclass
class Step:
    """One batch's forward pass, as a family's ``forward`` returns it."""

    loss: Any  # the batch's mean loss: a scalar tensor, backpropagated when training
    items: int  # samples in the batch
    score: Any  # the metric summed over the batch (a tensor or a number): its numerator ...
    weight: float  # ... and its denominator (items for accuracy, reference characters for CER)
    extra: Mapping[str, Any] = field(default_factory=dict)  # other per-item sums, averaged per epoch
    # validation with a ``Judge``: what it scores the pass by as a whole (a batch's embeddings,
    # say): a metric such as retrieval precision is not a sum over batches
    keep: Any = None


# --- the rows trained on and validated with ---------------------------------------------------------
@dataclass(frozen=True)
class Parts:
    """The rows a BUILD/FIT trains on, and those it holds out to validate each epoch."""

    train: RowSource
    validation: RowSource | None  # None without validation_split
    early_stopping: bool = False
    patience: int = 3


def holdout(source: RowSource, opts: registry.Options, seed: int = 0) -> Parts:
    """Split ``source`` as the options say (validation_split, early_stopping, patience;
    registry.VALIDATION): deterministic and stratified by label (RowSource.split)."""
    registry.check_training(opts)
    fraction = float(opts.validation_split or 0.0)
    if fraction <= 0:
        return Parts(source, None)
    train, validation = source.split(fraction, seed)
    stratified = ", stratified by label" if source.label_type is not None else ""
    source.notice(f"validation: {validation.count} of {source.count - source.skipped} rows held out"
                  f" (validation_split={fraction:g}){stratified}")
    return Parts(train, validation, opts.early_stopping, opts.patience)


class Sums:
    """A pass's running sums, on the device: no sync per step, only when read."""

    def __init__(self, device: Any) -> None:
        import torch

        self.loss = torch.zeros((), device=device)
        self.score = torch.zeros((), device=device)
        self.extra: dict[str, Any] = {}
        self.weight = 0.0
        self.items = 0

    def add(self, out: Step) -> None:
        self.loss += out.loss.detach() * out.items
        self.score += out.score
        for k, v in out.extra.items():
            self.extra[k] = self.extra.get(k, 0) + v
        self.weight += out.weight
        self.items += out.items

    def reduce(self, world: distributed.World, device: Any) -> None:
        """Sum over the ranks (shared.distributed): the whole pass, as one process sees it.
        Extras are summed where every rank has the same ones (a rank without a batch has
        none: the pass's extras are then this rank's)."""
        import torch

        keys = sorted(self.extra)
        sizes = distributed.reduce_sums([len(keys), len(keys) ** 2], device)
        same = sizes == [world.size * len(keys), world.size * len(keys) ** 2]
        values = [float(self.loss), float(self.score), self.weight, float(self.items)]
        if same:
            values += [float(self.extra[k]) for k in keys]
        total = distributed.reduce_sums(values, device)
        self.loss = torch.tensor(total[0], device=device)
        self.score = torch.tensor(total[1], device=device)
        self.weight, self.items = total[2], round(total[3])
        if same:
            self.extra = dict(zip(keys, total[4:], strict=True))

    def means(self) -> tuple[float, float]:
        """(mean loss, metric) so far; waits for the device."""
        if not self.items:
            return float("nan"), float("nan")
        metric = (self.score / self.weight).item() if self.weight else float("nan")
        return (self.loss / self.items).item(), metric

    def result(self, seconds: float) -> Pass:
        loss, metric = self.means()
        extra = {k: float(v) / self.items for k, v in self.extra.items()} if self.items else {}
        return Pass(loss, metric, extra, self.items, seconds)


# --- one epoch's record ------------------------------------------------------------------------------
@dataclass
class Pass:
    """Means of one pass over a part: loss, metric, extras; items and seconds."""

    loss: float = float("nan")
    metric: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)
    items: int = 0
    seconds: float = 0.0


@dataclass
class Epoch:
    number: int  # 1-based
    train: Pass
    validation: Pass | None
    learning_rate: float
    seconds: float

    def row(self, metric: Metric) -> dict[str, Any]:
        """A contract.Trained.epochs row (contract.EPOCH_KEYS)."""
        val = self.validation
        return {"epoch": self.number, "metric": metric.name, "train_loss": _finite(self.train.loss),
                "train_metric": _finite(self.train.metric),
                "validation_loss": _finite(val.loss) if val else None,
                "validation_metric": _finite(val.metric) if val else None,
                "learning_rate": self.learning_rate, "seconds": round(self.seconds, 3),
                "samples_per_second": (round(self.train.items / self.train.seconds, 2) if self.train.seconds
                                       else None)}


def _epoch(d: dict[str, Any]) -> Epoch:
    """An Epoch from its checkpointed form (dataclasses.asdict)."""
    val = d["validation"]
    return Epoch(d["number"], Pass(**d["train"]), Pass(**val) if val is not None else None,
                 d["learning_rate"], d["seconds"])


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


@dataclass
class Outcome:
    """What the epochs did: every epoch's record, and the one whose weights the model keeps
    (the last, or the best validated one with early stopping)."""

    metric: Metric
    history: list[Epoch]
    kept: Epoch
    best: Epoch | None  # the best validated epoch (None without validation)
    items: int  # training samples over all epochs
    stopped_early: bool
    rate: float  # training samples per second

    def rows(self) -> list[dict[str, Any]]:
        return [e.row(self.metric) for e in self.history]

    def metrics(self) -> dict[str, Any]:
        """BUILD/FIT's result metrics: the kept epoch's training (and validation) scores,
        and with validation which epoch was best and how many ran."""
        m = self.metric
        kept = self.kept
        out: dict[str, Any] = {"train_loss": _finite(kept.train.loss)}
        if not m.is_loss and not math.isnan(kept.train.metric):  # NaN: a metric of validation only
            out[f"train_{m.name}"] = _finite(kept.train.metric)
        out.update({k: _finite(v) for k, v in kept.train.extra.items()})
        if kept.validation is not None and self.best is not None:
            out["validation_loss"] = _finite(kept.validation.loss)
            if not m.is_loss:
                out[f"validation_{m.name}"] = _finite(kept.validation.metric)
            out.update(best_epoch=self.best.number, epochs_run=len(self.history), kept_epoch=kept.number,
                       stopped_early=self.stopped_early)
        return out


# --- the epochs --------------------------------------------------------------------------------
Batches = Callable[[RowSource, int, bool], Iterator[B]]
Forward = Callable[[int, B, bool], Step | None]
# the validation metric of a whole pass, from its steps' ``keep``s (NaN: nothing to score)
Judge = Callable[[list[Any]], float]


class Trainer:
    """BUILD/FIT's epochs over a network, for every family: it splits the rows as the
    options say (``holdout``), makes the optimizer (``Stepper``) for the training part,
    and ``run`` trains."""

    def __init__(self, net: Any, opts: registry.Options, source: RowSource, *, device: Any, label: str,
                 metric: Metric, weight_decay: float, warmup_fraction: float,
                 max_grad_norm: float | None = None, progress: type[Progress] | None = None,
                 stepper: Callable[[int], Stepper] | None = None) -> None:
        """``stepper``: for a family whose optimizer is its own, makes it from the total
        number of steps (else a ``Stepper`` of ``net``'s trainable parameters)."""
        self.net = net
        self.device = device
        self.metric = metric
        # one of several ranks (a BUILD/FIT with workers): start from rank 0's weights
        self.world = distributed.World.current()
        if self.world is not None:
            distributed.prepare(net, device)
        self.label = label
        if opts.epochs is None:
            raise InvalidOption('option "epochs" has no value', hint="Add epochs=... to OPTIONS.")
        self.epochs = opts.epochs
        self.parts = holdout(source, opts)
        bs = opts.batch_size
        train = self.parts.train
        per_epoch = steps_per_epoch(train.count - train.skipped, bs)
        validation = self.parts.validation
        total = self.epochs * per_epoch
        self.stepper = stepper(total) if stepper is not None else Stepper(
            net, learning_rate=opts.learning_rate or 0.0, weight_decay=weight_decay, total_steps=total,
            warmup_fraction=warmup_fraction, device=device, max_grad_norm=max_grad_norm)
        self.progress = (progress or Progress)(
            source, label=label, metric=metric, epochs=self.epochs, steps_per_epoch=per_epoch,
            validation_steps=steps_per_epoch(validation.count, bs) if validation is not None else 0)
        self.checkpoints = source.checkpoints

    def run(self, batches: Batches[B], forward: Forward[B], judge: Judge | None = None) -> Outcome:
        """Train for the epochs (fewer when early stopping stops), validating after each;
        the network ends with the kept epoch's weights, in eval mode. ``judge``: the
        validation metric is of the whole pass (retrieval precision, say), not a sum of
        the steps' scores; the training batches then score none (their ``weight`` 0)."""
        parts, metric = self.parts, self.metric
        history: list[Epoch] = []
        best: Epoch | None = None
        best_state: dict[str, Any] | None = None
        waited = 0
        stopped = False
        resumed = self._resume()
        if resumed is not None:
            history, best, best_state, waited = resumed
        for epoch in range(len(history), self.epochs):
            start = time.monotonic()
            train = self._pass(parts.train, epoch, training=True, batches=batches, forward=forward)
            validation = None
            if parts.validation is not None:
                validation = self._pass(parts.validation, epoch, training=False, batches=batches,
                                        forward=forward, judge=judge)
            record = Epoch(epoch + 1, train, validation, self.stepper.learning_rate(),
                           time.monotonic() - start)
            history.append(record)
            if validation is not None:
                if metric.better(validation.metric,
                                 best.validation.metric if best and best.validation else None):
                    best, waited = record, 0
                    if parts.early_stopping:  # keep its weights: a copy, off the accelerator
                        best_state = {k: v.detach().to("cpu", copy=True)
                                      for k, v in self.net.state_dict().items()}
                else:
                    waited += 1
                    stopped = parts.early_stopping and waited >= parts.patience
            if self.checkpoints is not None and not stopped and epoch + 1 < self.epochs:
                self.checkpoints.save(epoch + 1, self._checkpoint(history, best, best_state, waited))
            if stopped:
                break
        items = sum(e.train.items for e in history)
        if items == 0:
            what = self.progress.what
            raise DataError(f"no readable {what} to train on", hint="Every row was skipped as unreadable.")
        kept = history[-1]
        if best_state is not None and best is not None:
            self.net.load_state_dict(best_state)
            kept = best
        self.stepper.release()
        self.net.eval()
        outcome = Outcome(metric, history, kept, best, items, stopped, self.progress.samples_per_second())
        self._notices(outcome)
        return outcome

    # -- checkpoints (a background job's, RowSource.checkpoints) ------------------------------
    def _checkpoint(self, history: list[Epoch], best: Epoch | None, best_state: dict[str, Any] | None,
                    waited: int) -> dict[str, Any]:
        """Everything the next epoch depends on: the weights, the optimizer, the schedule and
        the scaler, the random state, the epochs so far and the early-stopping state."""
        import torch

        stepper = self.stepper
        return {
            "epoch": len(history),
            "net": self.net.state_dict(),
            "optimizer": stepper.opt.state_dict(),
            "scheduler": stepper.sched.state_dict(),
            "scaler": stepper.scaler.state_dict() if stepper.scaler is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": [torch.cuda.get_rng_state(i) for i in self._cuda()],
            "history": [dataclasses.asdict(e) for e in history],
            "best": history.index(best) if best is not None else -1,
            "best_state": best_state,
            "waited": waited,
        }

    def _cuda(self) -> list[int]:
        return cuda_indices(self.device) if str(self.device).startswith("cuda") else []

    def _resume(self) -> tuple[list[Epoch], Epoch | None, dict[str, Any] | None, int] | None:
        """The state of the newest checkpoint, restored; None without one."""
        import torch

        state = self.checkpoints.load() if self.checkpoints is not None else None
        if state is None:
            return None
        self.net.load_state_dict(state["net"])
        stepper = self.stepper
        stepper.opt.load_state_dict(state["optimizer"])
        stepper.sched.load_state_dict(state["scheduler"])
        if stepper.scaler is not None and state["scaler"] is not None:
            stepper.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        for i, rng in zip(self._cuda(), state["cuda_rng"], strict=False):
            torch.cuda.set_rng_state(rng, i)
        history = [_epoch(e) for e in state["history"]]
        best = history[state["best"]] if state["best"] >= 0 else None
        self.progress.first_epoch = len(history)
        self.parts.train.notice(f"{self.label}: resuming after epoch {len(history)} of {self.epochs}"
                                " from the job's checkpoint")
        return history, best, state["best_state"], int(state["waited"])

    def _pass(self, part: RowSource, epoch: int, *, training: bool, batches: Batches[B],
              forward: Forward[B], judge: Judge | None = None) -> Pass:
        """One pass over ``part``: training steps, or validation without gradients (scored
        by ``judge`` when given). ``batches`` is closed at the end, and on an error or
        cancel: no decoding outlives the statement."""
        import torch

        self.net.train(training)
        start = time.monotonic()
        sums = Sums(self.device)
        phase = "train" if training else "validate"
        steps = 0
        kept: list[Any] = []
        with closing(batches(part, epoch, training)) as it, (
                nullcontext() if training else torch.no_grad()):
            for batch in it:
                self.parts.train.check_interrupts()  # a pending cancel stops training here, within one batch
                out = forward(epoch, batch, training)
                if self.world is not None and training:
                    # every rank steps on every global batch, with or without samples of its own
                    taken = self.stepper.step(out.loss if out else None, out.items if out else 0, shared=True)
                    if taken:
                        self.progress.step(taken)
                elif out is None:
                    continue
                elif training:
                    self.stepper.step(out.loss)
                    self.progress.step(out.items)
                if out is not None:
                    sums.add(out)
                    if judge is not None and out.keep is not None:
                        kept.append(out.keep)
                steps += 1
                self.progress.update(phase, epoch, steps, sums.means)
        judged = math.nan
        if judge is not None:
            part.check_interrupts()
            judged = judge(kept)
        if self.world is not None:
            if judge is not None:  # each rank judged its own share of the rows: their mean, by rows
                weight = 0.0 if math.isnan(judged) else float(sums.items)
                total = distributed.reduce_sums([judged * weight if weight else 0.0, weight], self.device)
                judged = total[0] / total[1] if total[1] else math.nan
            sums.reduce(self.world, self.device)
            if training:
                distributed.average_buffers(self.net)
        result = sums.result(time.monotonic() - start)
        if judge is not None:
            result.metric = judged
        return result

    def _notices(self, out: Outcome) -> None:
        notice, m = self.parts.train.notice, self.metric
        kept = out.kept
        if out.best is not None and out.best.validation is not None and self.parts.early_stopping:
            how = (f"stopped early at epoch {out.history[-1].number}" if out.stopped_early
                   else f"ran all {len(out.history)} epochs")
            notice(f"{self.label}: {how}; kept epoch {kept.number}"
                   f" (validation {m.label} {out.best.validation.metric:.4f})")
        text = f"{self.label} done: {len(out.history)} epochs, loss {kept.train.loss:.4f}"
        if not m.is_loss and math.isfinite(kept.train.metric):
            text += f", {m.label} {kept.train.metric:.4f}"
        if kept.validation is not None:
            text += f", validation loss {kept.validation.loss:.4f}"
            if not m.is_loss:
                text += f", validation {m.label} {kept.validation.metric:.4f}"
        # the last notice's fields say 'done': a client's bar ends full, whatever the wording
        notice(f"{text}, {self.progress.speed(self.progress.elapsed())}",
               progress=self.progress.fields("done", len(out.history), self.progress.steps_per_epoch,
                                             kept.train.loss, None if m.is_loss else kept.train.metric))


# --- progress --------------------------------------------------------------------------------
VIEW_INTERVAL = 0.5  # seconds between updates of thanosql.progress (RowSource.progress): 2 a second at most


class Progress:
    """Progress NOTICEs at most every ``source.progress_interval`` seconds (epoch, step,
    loss, the metric, throughput and ETA), and the thanosql.progress row of the
    statement, updated at most every VIEW_INTERVAL seconds."""

    what = "images"  # what a sample is, in messages

    def __init__(self, source: RowSource, *, label: str, metric: Metric, epochs: int, steps_per_epoch: int,
                 validation_steps: int = 0) -> None:
        self.source = source
        self.interval = source.progress_interval
        self.label = label
        self.metric = metric
        self.epochs = epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.validation_steps = validation_steps
        self.start = self.last = time.monotonic()
        self.last_view = 0.0
        self.samples = 0
        self.steps_done = 0  # training and validation steps
        self.first_epoch = 0  # epochs done before this run (a resumed job's)

    def step(self, samples: int) -> None:
        """A training step of ``samples``."""
        self.samples += samples

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def speed(self, elapsed: float) -> str:
        return f"{self.samples / elapsed if elapsed > 0 else 0.0:.1f} {self.what}/s"

    def samples_per_second(self) -> float:
        elapsed = self.elapsed()
        return self.samples / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        total = (self.epochs - self.first_epoch) * (self.steps_per_epoch + self.validation_steps)
        left = max(0, total - self.steps_done)
        return self.elapsed() / self.steps_done * left if self.steps_done else float("nan")

    def update(self, phase: str, epoch: int, step: int, values: Callable[[], tuple[float, float]]) -> None:
        """After step ``step`` of ``phase`` ('train' or 'validate') in ``epoch`` (0-based):
        a NOTICE (training only) and the view's row when due. ``values`` gives the running
        (loss, metric); called only then, since it waits for the device."""
        self.steps_done += 1
        now = time.monotonic()
        notice = phase == "train" and now - self.last >= self.interval
        view = now - self.last_view >= VIEW_INTERVAL
        if not (notice or view):
            return
        loss, score = values()
        eta = self.eta()
        if view:
            self.last_view = now
            steps = self.steps_per_epoch if phase == "train" else self.validation_steps
            self.source.progress(phase, epoch + 1, self.epochs, step, steps, loss, self.samples_per_second(),
                                 None if math.isnan(eta) else eta)
        if notice:
            self.last = now
            speed, left = self.speed(self.elapsed()), progress_text.duration(eta)
            scored = f", {self.metric.label} {score:.4f}" if math.isfinite(score) else ""
            self.source.notice(progress_text.training(
                self.label, epoch + 1, self.epochs, step, self.steps_per_epoch,
                f"loss {loss:.4f}{scored}, {speed}, ETA {left}"),
                progress=self.fields("train", epoch + 1, step, loss, score, eta))

    def fields(self, phase: str, epoch: int, step: int, loss: float | None, score: float | None,
               eta: float = math.nan) -> progress_text.ProgressInfo:
        """A notice's counters as data (progress_text: what clients read instead of the prose)."""
        def finite(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return progress_text.ProgressInfo(
            label=self.label, phase=phase, epoch=epoch, epochs=self.epochs, step=step,
            steps=self.steps_per_epoch, loss=finite(loss), metric=self.metric.label, score=finite(score),
            samples_per_second=round(self.samples_per_second(), 3), speed=self.speed(self.elapsed()),
            eta_seconds=finite(eta))
