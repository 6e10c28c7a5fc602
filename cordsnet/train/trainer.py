"""One training loop for every stage, single process or ``torchrun`` DistributedDataParallel.

:class:`Trainer` runs a sequence of :class:`~cordsnet.train.stages.StageSpec` over one
:class:`~cordsnet.model.CordsNet` (plus the trainer-side :class:`~cordsnet.train.cnn.BatchNormSet`
and :class:`~cordsnet.train.cnn.FoldedCNN`). Per stage it picks the trainable parameters, the forward
wiring (:data:`FORWARDS`), the evaluation (:data:`EVALUATORS`), the optimiser and the lr / slope
schedules from the spec.

Checkpoints (rank 0 only, atomic): ``OUT/last.safetensors`` after every epoch and stage,
``OUT/<k>-<stage>.safetensors`` at the end of stage k, ``OUT/final.safetensors`` at the end. They are
the project's format (:func:`cordsnet.checkpoint.save_checkpoint`): the model's published-layout
tensors, plus extra tensors (optimiser state, BatchNorm layers, folded biases, best-epoch weights) and
string metadata (``train.state``: stage, epoch, iteration, scheduler and slope state, metric history).
Randomness is re-seeded from (seed, stage, epoch, rank) at every epoch, so ``resume=True`` continues
exactly as an uninterrupted run would. Per-epoch metrics are appended to ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .._io import atomic_path
from ..checkpoint import load_checkpoint, read_extra_tensors, read_metadata, save_checkpoint
from ..config import CordsNetConfig, get_preset
from ..data import batch_augment, build_dataset, get_dataset_spec
from ..model import CordsNet
from .cnn import BatchNormSet, FoldedCNN, compat_forward, fold_batchnorm, folded_activity, folded_forward
from .losses import inverse_loss, spontaneous_penalty, time_weighted_ce, time_weights
from .stages import StageSpec, lr_at, resolve_stage, resolve_stages, slope_at

__all__ = ["EVALUATORS", "FORWARDS", "TrainOptions", "Trainer", "evaluate_accuracy", "train"]

log = logging.getLogger("cordsnet.train")

LAST = "last.safetensors"
FINAL = "final.safetensors"
METRICS = "metrics.jsonl"


@dataclass
class TrainOptions:
    """Everything a training run needs. Defaults are the published recipe (§4) for R8 on ImageNet
    except dataset/depth; per-stage settings go in `epochs`, `lr` and `stage_overrides`.

    Attributes:
        dataset: a key of :data:`cordsnet.data.DATASETS`.
        depth: 2, 4, 6 or 8.
        image_size: model input side (default: the dataset preset's).
        stages: a pipeline name ("all", "finetune"), a stage name, or a sequence of stage names.
        out: output directory (checkpoints, metrics.jsonl).
        batch_size: global batch size (split evenly across ranks).
        epochs: per-stage epochs, e.g. {"compat": 30}; an int sets every trained stage.
        lr: per-stage learning rates, e.g. {"linear": 1e-4}; a float sets every trained stage.
        stage_overrides: any other :class:`StageSpec` field per stage, e.g. {"anneal": {"slope_decrement": 0.25}}.
        steps / spontaneous_steps / alpha: the protocol of the recurrent stages (100 / 100 / 0.2).
        recovery_steps / penalty_window: blank steps after the stimulus and how many of the last ones
            the spontaneous-stability penalty averages (100 / 10).
        ce_window: how many final stimulus steps the time-weighted cross-entropy covers (30).
        seed: seeds the initial weights, data order and augmentation.
        device: "cpu", "cuda", "cuda:1", ... (default: the local GPU under torchrun, else cuda if
            available, else cpu).
        data_root / download / augment / dense / val_fraction / num_workers: data options.
        dataset_kwargs: builder-specific options (``fake``: num_classes, in_channels, fake_size).
        limit_train / limit_val: use only the first N samples of a split (tests, benchmarks).
        max_batches: stop every epoch after N batches (benchmarks).
        init: start from this checkpoint (its extra tensors restore BatchNorm / folded biases).
        progress: show a rich progress bar (rank 0).
        threads: torch intra-op threads for this process (None: leave torch's default). On a shared
            or oversubscribed CPU, 1 is often several times faster than the default.
    """

    dataset: str = "digits"
    depth: int = 4
    image_size: int | None = None
    stages: str | Sequence[str] = "all"
    out: str | os.PathLike = "runs/train"
    batch_size: int = 256
    epochs: Mapping[str, int] | int | None = None
    lr: Mapping[str, float] | float | None = None
    stage_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    steps: int = 100
    spontaneous_steps: int = 100
    alpha: float = 0.2
    recovery_steps: int = 100
    penalty_window: int = 10
    ce_window: int = 30
    seed: int = 0
    device: str | None = None
    data_root: str | None = None
    download: bool = True
    augment: bool = True
    dense: bool = False
    val_fraction: float = 0.1
    num_workers: int = 0
    dataset_kwargs: Mapping[str, Any] = field(default_factory=dict)
    limit_train: int | None = None
    limit_val: int | None = None
    max_batches: int | None = None
    init: str | os.PathLike | None = None
    progress: bool = False
    threads: int | None = None

    def stage_specs(self) -> list[StageSpec]:
        """The resolved stages, overrides applied."""
        names = resolve_stages(self.stages)
        specs = []
        for name in names:
            over: dict[str, Any] = dict(self.stage_overrides.get(name, {}))
            for key, value in (("epochs", self.epochs), ("lr", self.lr)):
                if value is None:
                    continue
                if isinstance(value, Mapping):
                    unknown = sorted(set(value) - set(names))
                    if unknown:
                        raise ValueError(f"{key}: stages {unknown} are not in this run's stages {list(names)}")
                    if name in value:
                        over[key] = value[name]
                elif name != "fold":
                    over[key] = value
            unknown = sorted(set(self.stage_overrides) - set(names))
            if unknown:
                raise ValueError(f"stage_overrides: stages {unknown} are not in this run's stages {list(names)}")
            specs.append(resolve_stage(name, over))
        return specs

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        data["init"] = None if self.init is None else str(self.init)
        data["stages"] = list(resolve_stages(self.stages))
        return json.dumps(data, sort_keys=True, default=str)


# ------------------------------------------------------------------------------ forward modes
class _Context:
    """What a forward mode may use: the model, the trainer-side containers, the protocol."""

    def __init__(self, model: CordsNet, bn: BatchNormSet, folded: FoldedCNN | None, opts: TrainOptions) -> None:
        self.model = model
        self.bn = bn
        self.folded = folded
        self.opts = opts


def _forward_compat(ctx: _Context, spec: StageSpec, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict]:
    logits = compat_forward(ctx.model, ctx.bn, x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss, logits, {}


def _forward_inverse(ctx: _Context, spec: StageSpec, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict]:
    model = ctx.model
    if ctx.folded is None:
        raise ValueError("stage 'inverse': needs the folded CNN; run 'compat' and 'fold' first or start "
                         "from a checkpoint written after 'fold' (--init)")
    with torch.no_grad():
        act = folded_activity(model, ctx.folded, x)
    total, mse_total = 0.0, 0.0
    for i in range(model.depth):
        loss, mse = inverse_loss(model.area_conv[i].weight, model.conv_bias[i], act.ff[i], act.pre[i],
                                 iterations=spec.iterations, contraction=spec.contraction)
        total = total + loss
        mse_total = mse_total + mse.detach()
    return total, act.logits, {"mse": mse_total}


def _forward_rnn(ctx: _Context, spec: StageSpec, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict]:
    """The recurrent dynamics through the model's own time loop: stimulus, then blank recovery steps."""
    model, opts = ctx.model, ctx.opts
    W = model.effective_weights()
    terms = model.unchecked_drive_terms(W, model.unchecked_drive(W, x))
    batch = x.shape[0]
    if spec.spontaneous and opts.spontaneous_steps > 0:
        spont = model.cached_spontaneous_state(opts.spontaneous_steps, opts.alpha)  # no gradient, image-independent
    else:
        spont = model.initial_state(1)
    state = tuple(r.expand(batch, *r.shape[1:]) for r in spont)
    window = min(opts.ce_window, opts.steps)
    logits = []
    for t, state in enumerate(model.unchecked_trajectory(W, state, terms, opts.steps, opts.alpha)):
        if t >= opts.steps - window:
            logits.append(model.unchecked_readout(W, state))
    stacked = torch.stack(logits)
    ce = time_weighted_ce(stacked, y, time_weights(window, device=x.device, dtype=stacked.dtype))
    extra = {"ce": ce.detach()}
    loss = ce
    if spec.penalty > 0 and opts.recovery_steps > 0:
        keep = min(opts.penalty_window, opts.recovery_steps)
        late = [s for t, s in enumerate(model.unchecked_trajectory(W, state, None, opts.recovery_steps, opts.alpha))
                if t >= opts.recovery_steps - keep]
        pen = spontaneous_penalty(late, spont)
        loss = loss + spec.penalty * pen
        extra["penalty"] = pen.detach()
    return loss, stacked[-1], extra


FORWARDS: dict[str, Callable[[_Context, StageSpec, Tensor, Tensor], tuple[Tensor, Tensor, dict]]] = {
    "compat": _forward_compat,
    "inverse": _forward_inverse,
    "rnn": _forward_rnn,
}


def _eval_compat(ctx: _Context, x: Tensor) -> Tensor:
    return compat_forward(ctx.model, ctx.bn, x)


def _eval_folded(ctx: _Context, x: Tensor) -> Tensor:
    return folded_forward(ctx.model, ctx.folded, x)


def _eval_linear(ctx: _Context, x: Tensor) -> Tensor:
    return ctx.model.run(x, steps=ctx.opts.steps, spontaneous_steps=0, alpha=ctx.opts.alpha)


def _eval_rnn(ctx: _Context, x: Tensor) -> Tensor:
    return ctx.model.run(x, steps=ctx.opts.steps, spontaneous_steps=ctx.opts.spontaneous_steps,
                         alpha=ctx.opts.alpha)


EVALUATORS: dict[str, Callable[[_Context, Tensor], Tensor]] = {
    "compat": _eval_compat,
    "folded": _eval_folded,
    "linear": _eval_linear,
    "rnn": _eval_rnn,
}


class _StageModule(nn.Module):
    """The stage's forward as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, ctx: _Context, spec: StageSpec) -> None:
        super().__init__()
        self.model = ctx.model
        self.bn = ctx.bn
        self.ctx = ctx
        self.spec = spec
        self.fn = FORWARDS[spec.kind]

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, dict]:
        return self.fn(self.ctx, self.spec, x, y)


# ----------------------------------------------------------------------------------- helpers
def _trainable(model: CordsNet, bn: BatchNormSet, which: str) -> list[nn.Parameter]:
    """The parameters a stage trains, in a fixed order (the optimiser state is saved by index)."""
    if which == "none":
        return []
    if which == "recurrent":
        return [p for m in model.area_conv for p in m.parameters()] + list(model.conv_bias)
    if which == "all":
        return list(model.parameters())
    bias_ids = {id(p) for p in model.conv_bias}
    return [p for p in model.parameters() if id(p) not in bias_ids] + list(bn.parameters())


_OPTIMIZERS: dict[str, Callable[[list, StageSpec], torch.optim.Optimizer]] = {
    "sgd": lambda params, s: torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay),
    "adamw": lambda params, s: torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay),
}


def _accuracy_counts(logits: Tensor, y: Tensor) -> tuple[int, int]:
    target = y.argmax(1) if y.dim() == 2 else y
    return int((logits.argmax(1) == target).sum()), int(target.numel())


@torch.no_grad()
def evaluate_accuracy(fn: Callable[[Tensor], Tensor], loader: Iterable, device: torch.device | str = "cpu"
                      ) -> float:
    """Top-1 accuracy of ``fn(images) -> logits`` over a loader of (images, labels)."""
    correct = total = 0
    for x, y in loader:
        c, n = _accuracy_counts(fn(x.to(device)), y.to(device))
        correct += c
        total += n
    return correct / max(total, 1)


def _epoch_seed(seed: int, stage_index: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + stage_index * 10_007 + epoch * 101 + rank) % (2**63 - 1)


# -------------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs the staged pipeline of §4 for one :class:`TrainOptions`.

    Args:
        options: the run.
        on_epoch: called on rank 0 with each epoch's metrics dict (the CLI prints JSON lines).
    """

    def __init__(self, options: TrainOptions, *, on_epoch: Callable[[dict], None] | None = None) -> None:
        self.opts = options
        self.specs = options.stage_specs()
        self.on_epoch = on_epoch
        self.out = Path(options.out)
        self._check_options()
        self.world, self.rank, self.local_rank = _dist_info()
        self.device = self._pick_device()
        if options.batch_size % self.world:
            raise ValueError(f"batch_size: the global batch {options.batch_size} must divide evenly over "
                             f"{self.world} processes")
        self.ds_spec = get_dataset_spec(options.dataset)

    # ---------------------------------------------------------------------------------- setup
    def _check_options(self) -> None:
        o = self.opts
        for name in ("batch_size", "steps"):
            v = getattr(o, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        for name in ("spontaneous_steps", "recovery_steps", "penalty_window", "ce_window"):
            v = getattr(o, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        if o.threads is not None and (isinstance(o.threads, bool) or not isinstance(o.threads, int) or o.threads < 1):
            raise ValueError(f"threads: expected a positive int or None, got {o.threads!r}")
        if o.ce_window < 1:
            raise ValueError(f"ce_window: expected an int >= 1, got {o.ce_window!r}")

    def _pick_device(self) -> torch.device:
        if self.opts.device is not None:
            try:
                device = torch.device(self.opts.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {self.opts.device!r}") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device: {self.opts.device!r} requested but no CUDA device is available here")
            return device
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank if self.world > 1 else 0)
        return torch.device("cpu")

    def _config(self) -> CordsNetConfig:
        o, spec = self.opts, self.ds_spec
        kw = dict(o.dataset_kwargs)
        num_classes = int(kw.get("num_classes", spec.num_classes))
        in_channels = int(kw.get("in_channels", spec.in_channels))
        size = o.image_size
        if size is None:
            size = 32 if o.dense or spec.preset is None else get_preset(spec.preset).default_image_size
        return CordsNetConfig(depth=o.depth, num_classes=num_classes, in_channels=in_channels, image_size=size,
                              alpha=o.alpha, steps=o.steps, spontaneous_steps=o.spontaneous_steps,
                              dataset=spec.preset)

    def _datasets(self, config: CordsNetConfig) -> tuple[Dataset, Dataset]:
        o = self.opts
        kw = dict(o.dataset_kwargs)
        if o.dataset == "fake":
            kw.setdefault("num_classes", config.num_classes)
            kw.setdefault("in_channels", config.in_channels)
        common = dict(root=o.data_root, image_size=config.image_size, dense=o.dense, download=o.download,
                      val_fraction=o.val_fraction, **kw)
        train = build_dataset(o.dataset, "train", augment=o.augment, **common)
        val = build_dataset(o.dataset, "val", augment=False, **common)
        if o.limit_train is not None:
            train = Subset(train, range(min(o.limit_train, len(train))))
        if o.limit_val is not None:
            val = Subset(val, range(min(o.limit_val, len(val))))
        return train, val

    # ------------------------------------------------------------------------------------ run
    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Train every stage; returns the summary (per-stage metrics, times, checkpoint paths)."""
        o = self.opts
        if o.threads is not None:
            torch.set_num_threads(o.threads)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        config = self._config()
        torch.manual_seed(o.seed)
        self.model = CordsNet(config).to(self.device)
        self.bn = BatchNormSet(self.model).to(self.device)
        self.folded: FoldedCNN | None = None
        self.history: list[dict] = []
        self.stage_summary: dict[str, dict] = {}
        start_stage, start_epoch, self.iteration = 0, 0, 0
        self._best: tuple[float, dict[str, Tensor]] | None = None
        self._optim_state: dict | None = None
        if o.init is not None:
            self._load_weights(Path(o.init))
        last = self.out / LAST
        if resume:
            if not last.is_file():
                raise FileNotFoundError(f"resume: no checkpoint {str(last)!r} to resume from")
            start_stage, start_epoch = self._restore(last)
        self.train_set, self.val_set = self._datasets(config)
        self.val_loader = DataLoader(self.val_set, batch_size=max(1, o.batch_size // self.world), shuffle=False,
                                     num_workers=o.num_workers)
        t0 = time.perf_counter()
        for k in range(start_stage, len(self.specs)):
            self._run_stage(k, start_epoch if k == start_stage else 0)
        summary = {"stages": self.stage_summary, "time_s": time.perf_counter() - t0,
                   "final": str(self.out / FINAL)}
        if self.rank == 0:
            save_checkpoint(self.model, self.out / FINAL, metadata={
                "train.summary": json.dumps(self.stage_summary),
                "train.options": o.to_json(),
                "train.update_slope": repr(self.model.update_slope)})
        _barrier(self.world)
        return summary

    def _run_stage(self, k: int, start_epoch: int) -> None:
        spec, o = self.specs[k], self.opts
        model, bn = self.model, self.bn
        ctx = _Context(model, bn, self.folded, o)
        stage_t0 = time.perf_counter()
        self.stage_best_acc: float | None = None
        if spec.kind == "fold":
            self.folded = fold_batchnorm(model, bn)
            ctx.folded = self.folded
            metrics = self._epoch_metrics(k, spec, 0, ctx, {}, 0.0)
            self._finish_stage(k, spec, metrics, time.perf_counter() - stage_t0)
            return

        params = _trainable(model, bn, spec.trainable)
        train_ids = {id(p) for p in params}
        for p in list(model.parameters()) + list(bn.parameters()):
            p.requires_grad_(id(p) in train_ids)
        optim = _OPTIMIZERS[spec.optimizer](params, spec)
        if self._optim_state is not None:
            optim.load_state_dict(self._optim_state)
            self._optim_state = None
        module: nn.Module = _StageModule(ctx, spec)
        if self.world > 1 and params:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=o.seed + 7919 * k)
        loader = DataLoader(self.train_set, batch_size=o.batch_size // self.world, sampler=sampler,
                            num_workers=o.num_workers)
        ipe = min([len(loader)] + [n for n in (spec.batches, o.max_batches) if n is not None])
        mixer = batch_augment(model.num_classes) if (spec.mix and self.ds_spec.batch_mix and o.augment) else None
        if start_epoch == 0:
            self.iteration = 0
            self._best = None
        for epoch in range(start_epoch, spec.epochs):
            t0 = time.perf_counter()
            model.update_slope = slope_at(spec, epoch)
            torch.manual_seed(_epoch_seed(o.seed, k, epoch, self.rank))
            sampler.set_epoch(epoch)
            bn.train(spec.kind == "compat")
            sums: dict[str, float] = {}
            correct = seen = 0
            progress = self._progress(spec, epoch, ipe)
            for b, (x, y) in enumerate(loader):
                if b >= ipe:
                    break
                x, y = x.to(self.device), y.to(self.device)
                if mixer is not None:
                    x, y = mixer(x, y)
                lr = lr_at(spec, epoch, self.iteration, ipe)
                for g in optim.param_groups:
                    g["lr"] = lr
                loss, logits, extra = module(x, y)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                if spec.clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, spec.clip)
                optim.step()
                self.iteration += 1
                c, n = _accuracy_counts(logits.detach(), y)
                correct, seen = correct + c, seen + n
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                for key, val in extra.items():
                    sums[key] = sums.get(key, 0.0) + float(val)
                if progress is not None:
                    progress.advance(loss=sums["loss"] / (b + 1), acc=correct / max(seen, 1))
            if progress is not None:
                progress.close()
            nb = max(min(len(loader), ipe), 1)
            train_metrics = {f"train_{key}": val / nb for key, val in sums.items()}
            train_metrics["train_acc"] = correct / max(seen, 1) if spec.kind != "inverse" else float("nan")
            train_metrics["lr"] = lr_at(spec, epoch, self.iteration - 1, ipe)
            validate = epoch + 1 == spec.epochs or (spec.eval_every > 0 and (epoch + 1) % spec.eval_every == 0)
            metrics = self._epoch_metrics(k, spec, epoch + 1, ctx, train_metrics, time.perf_counter() - t0,
                                          validate=validate)
            if spec.select_best and self.rank == 0 and validate:
                if self._best is None or metrics["val_acc"] > self._best[0]:
                    self._best = (metrics["val_acc"], {kk: v.detach().clone() for kk, v in model.state_dict().items()})
            self._save_last(k, spec, epoch + 1, optim)
        if spec.select_best:
            self._load_best()
        final = self.history[-1] if self.history and self.history[-1]["stage"] == spec.name else \
            self._epoch_metrics(k, spec, spec.epochs, ctx, {}, 0.0)
        for p in list(model.parameters()) + list(bn.parameters()):
            p.requires_grad_(True)
        self._finish_stage(k, spec, final, time.perf_counter() - stage_t0)

    def _load_best(self) -> None:
        best = [self._best] if self.rank == 0 else [None]
        if self.world > 1:
            dist.broadcast_object_list(best, src=0)
        if best[0] is not None:
            with torch.no_grad():
                self.model.load_state_dict({k: v.to(self.device) for k, v in best[0][1].items()})
            self.stage_best_acc = best[0][0]
        self._best = None

    def _epoch_metrics(self, k: int, spec: StageSpec, epoch: int, ctx: _Context, train: dict,
                       seconds: float, *, validate: bool = True) -> dict:
        metrics: dict[str, Any] = {"stage": spec.name, "stage_index": k, "epoch": epoch,
                                   "slope": self.model.update_slope, **train, "time_s": round(seconds, 3)}
        if self.rank == 0:
            if validate:
                self.bn.eval()
                self.model.eval()
                fn = EVALUATORS[spec.eval]
                t0 = time.perf_counter()
                metrics["val_acc"] = evaluate_accuracy(lambda x: fn(ctx, x), self.val_loader, self.device)
                metrics["eval_time_s"] = round(time.perf_counter() - t0, 3)
                self.model.train()
            else:
                metrics["val_acc"] = None
            self.history.append(metrics)
            with open(self.out / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
            if self.on_epoch is not None:
                self.on_epoch(metrics)
        return metrics

    def _finish_stage(self, k: int, spec: StageSpec, metrics: dict, seconds: float) -> None:
        epochs = [h for h in self.history if h["stage"] == spec.name and h["epoch"] > 0]
        summary = {"val_acc": metrics.get("val_acc"), "epochs": spec.epochs, "time_s": round(seconds, 2),
                   "epoch_time_s": (round(sum(h["time_s"] for h in epochs) / len(epochs), 3) if epochs else None)}
        if spec.select_best and getattr(self, "stage_best_acc", None) is not None:
            summary["val_acc"] = self.stage_best_acc
            summary["selected"] = "best"
        self.stage_summary[spec.name] = summary
        log.info("stage %s done: %s", spec.name, summary)
        if self.rank == 0:
            extra = self._extra_tensors(None)
            meta = self._metadata(k, spec, spec.epochs, done=True)
            save_checkpoint(self.model, self.out / f"{k}-{spec.name}.safetensors", metadata=meta, extra_tensors=extra)
            save_checkpoint(self.model, self.out / LAST, metadata=meta, extra_tensors=extra)
        _barrier(self.world)

    # ----------------------------------------------------------------------------- checkpoints
    def _extra_tensors(self, optim: torch.optim.Optimizer | None) -> dict[str, Tensor]:
        extra = {f"bn.{k}": v for k, v in self.bn.state_dict().items()}
        if self.folded is not None:
            extra.update({f"folded.{k}": v for k, v in self.folded.state_dict().items()})
        if optim is not None:
            for idx, st in optim.state_dict()["state"].items():
                for key, val in st.items():
                    extra[f"optim.{idx}.{key}"] = val if isinstance(val, Tensor) else torch.tensor(val)
        if self._best is not None:
            extra["best_acc"] = torch.tensor(self._best[0], dtype=torch.float64)
            extra.update({f"best.{k}": v for k, v in self._best[1].items()})
        return extra

    def _metadata(self, k: int, spec: StageSpec, epoch: int, *, done: bool,
                  optim: torch.optim.Optimizer | None = None) -> dict[str, str]:
        state = {"stage_index": k, "stage": spec.name, "epoch": epoch, "done": done,
                 "stages": [s.name for s in self.specs], "scheduler": {"iteration": self.iteration},
                 "update_slope": self.model.update_slope, "summary": self.stage_summary}
        meta = {"train.state": json.dumps(state), "train.options": self.opts.to_json(),
                "train.stage_spec": json.dumps(spec.to_dict()), "train.metrics": json.dumps(self.history)}
        if optim is not None:
            groups = [{k: v for k, v in g.items()} for g in optim.state_dict()["param_groups"]]
            meta["train.optimizer"] = json.dumps(groups)
        return meta

    def _save_last(self, k: int, spec: StageSpec, epoch: int, optim: torch.optim.Optimizer) -> None:
        if self.rank == 0:
            save_checkpoint(self.model, self.out / LAST, metadata=self._metadata(k, spec, epoch, done=False, optim=optim),
                            extra_tensors=self._extra_tensors(optim))
        _barrier(self.world)

    def _load_weights(self, path: Path) -> None:
        loaded = load_checkpoint(path, map_location=self.device)
        if loaded.config.state_shapes != self.model.config.state_shapes:
            raise ValueError(f"init: {str(path)!r} is CordsNet-R{loaded.depth} at {loaded.config.image_size} px, "
                             f"expected R{self.model.depth} at {self.model.config.image_size} px")
        with torch.no_grad():
            self.model.load_state_dict(loaded.state_dict())
        extra = read_extra_tensors(path) if str(path).endswith(".safetensors") else {}
        bn = {k[3:]: v for k, v in extra.items() if k.startswith("bn.")}
        if bn:
            self.bn.load_state_dict(bn)
        folded = {k[7:]: v for k, v in extra.items() if k.startswith("folded.")}
        if folded:
            self.folded = FoldedCNN(self.model).to(self.device)
            self.folded.load_state_dict(folded)
        return None

    def _restore(self, path: Path) -> tuple[int, int]:
        """Load `path` (written by this trainer) and return (stage index, epoch) to continue from."""
        meta = read_metadata(path)
        if "train.state" not in meta:
            raise ValueError(f"resume: {str(path)!r} was not written by the trainer (no train.state metadata)")
        state = json.loads(meta["train.state"])
        names = [s.name for s in self.specs]
        if state["stages"] != names:
            raise ValueError(f"resume: the checkpoint's stages {state['stages']} differ from this run's {names}")
        self._load_weights(path)
        extra = read_extra_tensors(path)
        self.history = json.loads(meta.get("train.metrics", "[]"))
        if self.rank == 0:  # metrics.jsonl = the checkpoint's history (drops lines of an epoch that never saved)
            with atomic_path(self.out / METRICS) as tmp:
                tmp.write_text("".join(json.dumps(m) + "\n" for m in self.history), encoding="utf-8")
        self.stage_summary = state.get("summary", {})
        self.iteration = int(state["scheduler"]["iteration"])
        self.model.update_slope = float(state["update_slope"])
        k, epoch = int(state["stage_index"]), int(state["epoch"])
        if "best_acc" in extra:
            self._best = (float(extra["best_acc"]), {kk[5:]: v.to(self.device) for kk, v in extra.items()
                                                     if kk.startswith("best.")})
        if state["done"]:
            return k + 1, 0
        groups = json.loads(meta["train.optimizer"])
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, val in extra.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = val.to(self.device) if name != "step" else val
        self._optim_state = {"state": opt_state, "param_groups": groups}
        return k, epoch

    # ------------------------------------------------------------------------------ progress
    def _progress(self, spec: StageSpec, epoch: int, total: int) -> "_Bar | None":
        if not self.opts.progress or self.rank != 0:
            return None
        return _Bar(f"{spec.name} {epoch + 1}/{spec.epochs}", total)


class _Bar:
    """A rich progress bar for one epoch with running loss and accuracy."""

    def __init__(self, title: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
        self.progress.start()
        self.task = self.progress.add_task(title, total=total, loss=float("nan"), acc=float("nan"))

    def advance(self, **fields: float) -> None:
        self.progress.update(self.task, advance=1, **fields)

    def close(self) -> None:
        self.progress.stop()


def _dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment (1, 0, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _barrier(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.barrier()


def train(options: TrainOptions | None = None, *, resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run a training (see :class:`TrainOptions`); keyword arguments build the options.

    Returns:
        The summary: per-stage validation accuracy and times, the final checkpoint's path.
    """
    if options is None:
        options = TrainOptions(**kwargs)
    elif kwargs:
        options = dataclasses.replace(options, **kwargs)
    return Trainer(options, on_epoch=on_epoch).run(resume=resume)
