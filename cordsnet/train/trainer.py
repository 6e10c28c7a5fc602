"""One training loop for every stage, single process or ``torchrun`` DistributedDataParallel.

:class:`Trainer` runs a sequence of :class:`~cordsnet.train.stages.StageSpec` over one
:class:`~cordsnet.model.CordsNet` (plus the trainer-side :class:`~cordsnet.train.cnn.BatchNormSet`
and :class:`~cordsnet.train.cnn.FoldedCNN`). Per stage it looks up the trainable parameters, the
forward mode, the evaluation and the optimiser in :mod:`cordsnet.train.forwards`, and the lr / slope
schedules in :mod:`cordsnet.train.stages`.

Checkpoints (rank 0 only, atomic): ``OUT/last.safetensors`` after every epoch and stage,
``OUT/<k>-<stage>.safetensors`` at the end of stage k, ``OUT/final.safetensors`` at the end. They are
the project's format (:func:`cordsnet.checkpoint.save_checkpoint`) with the run's state in extra
tensors and metadata (layout: :mod:`cordsnet.train.run_state`). Randomness is re-seeded from
(seed, stage, epoch, rank) at every epoch, so ``resume=True`` continues exactly as an uninterrupted run
would. Per-epoch metrics are appended to ``OUT/metrics.jsonl``. A directory that already holds a run is
refused unless the run resumes it (``resume=True``) or replaces it (``TrainOptions.overwrite``).

Progress (:mod:`cordsnet.progress`): a rich progress bar per epoch when ``TrainOptions.progress`` is on, else
``logging`` lines (logger ``cordsnet.train``, level INFO) per epoch and stage, and at least every 10 s within
an epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .._io import atomic_path, forget_input, load_json, output_lock
from ..checkpoint import (
    read_checkpoint,
    read_checkpoint_metadata,
    read_extra_tensors,
    save_checkpoint,
)
from ..config import CordsNetConfig, get_preset
from ..data import batch_augment, build_dataset, get_dataset_spec
from ..model import CordsNet
from ..progress import Progress
from ..threads import set_num_threads
from ..quantization import ActivationRanges
from .cnn import BatchNormSet, FoldedCNN, fold_batchnorm
from .distributed import barrier, dist_info, pick_device
from .forwards import (
    EVALUATORS,
    FORWARDS,
    OPTIMIZERS,
    StageContext,
    StageModule,
    accuracy_counts,
    calibrate_ranges,
    evaluate_accuracy,
    trainable_parameters,
)
from .options import TRAIN_DTYPES, TrainOptions
from .run_state import (
    CHANGES_KEY,
    METRICS_KEY,
    OPTIMIZER_KEY,
    OPTIONS_KEY,
    SPEC_KEY,
    SUMMARY_KEY,
    RunExtras,
    TrainState,
    describe_changes,
    option_changes,
    pack_extras,
    parse_train_state,
    unpack_extras,
)
from .stages import STAGES, StageSpec, lr_at, slope_at

__all__ = ["TRAIN_DTYPES", "EVALUATORS", "FORWARDS", "TrainOptions", "Trainer", "evaluate_accuracy", "pick_device", "train"]

log = logging.getLogger("cordsnet.train")

LAST = "last.safetensors"
FINAL = "final.safetensors"
METRICS = "metrics.jsonl"
# The files a run writes into its directory (stage checkpoints: "<k>-<stage>.safetensors").
_STAGE_CHECKPOINT = re.compile(r"^\d+-(" + "|".join(map(re.escape, STAGES)) + r")\.safetensors$")

@dataclass
class _StageRun:
    """What one trained stage sets up once: its parameters, optimiser, forward module and data loader."""

    params: list[nn.Parameter]
    optim: torch.optim.Optimizer
    module: nn.Module
    loader: DataLoader
    sampler: DistributedSampler
    batches: int  # batches per epoch
    mixer: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None


def _epoch_seed(seed: int, stage_index: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + stage_index * 10_007 + epoch * 101 + rank) % (2**63 - 1)


# -------------------------------------------------------------------------------------- trainer

class Trainer:
    """Runs the staged pipeline (docs/specification.md §4) for one :class:`TrainOptions`.

    Builds the model (seeded by ``options.seed``) at construction; :meth:`run` trains it.

    Args:
        options: the run.
        on_epoch: called on rank 0 with each epoch's metrics dict (the CLI prints JSON lines).

    Raises:
        ValueError: an option out of range or an unknown stage / device / dtype.
    """

    def __init__(self, options: TrainOptions, *, on_epoch: Callable[[dict], None] | None = None) -> None:
        options.validate()
        self.opts = options
        self.specs = options.stage_specs()
        self.on_epoch = on_epoch
        self.out = Path(options.out)
        self.world, self.rank, self.local_rank = dist_info()
        if options.batch_size % self.world:
            raise ValueError(f"batch_size: the global batch {options.batch_size} must divide evenly over "
                             f"{self.world} processes")
        self.device = self._pick_device()
        self.dtype = TRAIN_DTYPES[options.dtype]
        self.ds_spec = get_dataset_spec(options.dataset)
        self.protocol = options.protocol()
        self.config = self._config()
        torch.manual_seed(options.seed)
        self.model = CordsNet(self.config).to(device=self.device, dtype=self.dtype)
        self.bn = BatchNormSet(self.model).to(device=self.device, dtype=self.dtype)
        self.folded: FoldedCNN | None = None
        self.ranges: ActivationRanges | None = None  # int8 activation ranges (quantisation-aware stages)
        # The run's state (what a checkpoint stores and a resume restores).
        self.history: list[dict] = []
        self.stage_summary: dict[str, dict] = {}
        self.changes: list[dict[str, Any]] = []  # options changed on resume (allow_changes), train.changes
        self.iteration = 0
        self.best: tuple[float, dict[str, Tensor]] | None = None  # (val_acc, state dict) of a select_best stage
        self.stage_best_acc: float | None = None
        self._optim_state: dict | None = None  # restored optimiser state, consumed by the next stage
        # Data (built by run()).
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.val_loader: DataLoader | None = None

    # ---------------------------------------------------------------------------------- setup
    def _pick_device(self) -> torch.device:
        return pick_device(self.opts.device, self.local_rank if self.world > 1 else 0)

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

    def _datasets(self) -> tuple[Dataset, Dataset]:
        o, config = self.opts, self.config
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

    def existing_run_files(self) -> list[Path]:
        """The files of a run already in the output directory (last, final, stage checkpoints, metrics)."""
        if not self.out.is_dir():
            return []
        return sorted(p for p in self.out.iterdir()
                      if p.name in (LAST, FINAL, METRICS) or _STAGE_CHECKPOINT.match(p.name))

    def _claim_output(self, resume: bool) -> None:
        """Refuse to write into a directory holding a run unless resuming it or told to overwrite it."""
        if resume:
            if self.opts.overwrite:
                raise ValueError("overwrite: a resumed run continues the run in its directory; "
                                 "pass either resume or overwrite, not both")
            return
        existing = self.existing_run_files()
        if not existing:
            return
        names = ", ".join(p.name for p in existing)
        if not self.opts.overwrite:
            raise ValueError(f"out: {str(self.out)!r} already holds a training run ({names}); resume it "
                             "(resume=True / --resume), replace it (overwrite=True / --overwrite) or choose "
                             "another directory")
        if self.opts.init is not None:
            init = Path(self.opts.init).resolve()
            if any(p.resolve() == init for p in existing):
                raise ValueError(f"init: {str(self.opts.init)!r} is a file of the run that overwrite would "
                                 "replace; copy it elsewhere first or write the new run to another directory")
        if self.rank == 0:
            log.info("overwrite: removing the previous run's %s from %s", names, self.out)
            for p in existing:
                p.unlink()
        barrier(self.world)

    # ------------------------------------------------------------------------------------ run
    def run(self, *, resume: bool = False) -> dict[str, Any]:
        """Train every stage; returns the summary (per-stage metrics, times, checkpoint paths).

        Args:
            resume: continue the run in ``options.out`` from its ``last.safetensors``.

        Raises:
            ValueError: the output directory holds a run (and neither `resume` nor ``overwrite``), or
                the checkpoint to resume from / start from does not fit this run.
            FileNotFoundError: `resume` without a checkpoint to resume from.
        """
        o = self.opts
        if o.threads is not None:  # the process's one thread budget (cordsnet.threads), torch included
            set_num_threads(o.threads)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        with contextlib.ExitStack() as stack:
            if self.rank == 0:  # one run at a time in OUT: a second one refuses instead of mixing its files in
                self.out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(output_lock(self.out / LAST, "out"))
            return self._run(resume)

    def _run(self, resume: bool) -> dict[str, Any]:
        o = self.opts
        self._claim_output(resume)
        start_stage, start_epoch = 0, 0
        if o.init is not None:
            self._load_weights(Path(o.init), strict_extras=False)
        if resume:
            last = self.out / LAST
            if not last.is_file():
                raise FileNotFoundError(f"resume: no checkpoint {str(last)!r} to resume from")
            start_stage, start_epoch = self._restore(last)
            log.info("resuming %s at stage %d, epoch %d", last, start_stage, start_epoch)
        log.info("loading the %r data", o.dataset)
        self.train_set, self.val_set = self._datasets()
        self.val_loader = DataLoader(self.val_set, batch_size=max(1, o.batch_size // self.world), shuffle=False,
                                     num_workers=o.num_workers)
        t0 = time.perf_counter()
        for k in range(start_stage, len(self.specs)):
            self._run_stage(k, start_epoch if k == start_stage else 0)
        summary = {"stages": self.stage_summary, "time_s": time.perf_counter() - t0,
                   "final": str(self.out / FINAL)}
        if self.rank == 0:
            save_checkpoint(self.model, self.out / FINAL, metadata={
                SUMMARY_KEY: json.dumps(self.stage_summary),
                OPTIONS_KEY: o.to_json(),
                **({CHANGES_KEY: json.dumps(self.changes, default=str)} if self.changes else {}),
                "train.update_slope": repr(self.model.update_slope)},
                extra_tensors=self.ranges.to_tensors() if self.ranges is not None else None)
            log.info("done in %.1f s: %s", summary["time_s"], self.out / FINAL)
        barrier(self.world)
        return summary

    def _context(self) -> StageContext:
        return StageContext(self.model, self.bn, self.folded, self.protocol, self.ranges)

    def _run_stage(self, k: int, start_epoch: int) -> None:
        spec = self.specs[k]
        stage_t0 = time.perf_counter()
        self.stage_best_acc = None
        if not spec.quantize:  # a float stage changes the weights under int8 activation ranges: drop them
            self.ranges = None
        log.info("stage %d/%d %s: %d epoch(s)%s", k + 1, len(self.specs), spec.name, spec.epochs,
                 f", from epoch {start_epoch}" if start_epoch else "")
        if spec.kind == "fold":
            self.folded = fold_batchnorm(self.model, self.bn)
            metrics = self._epoch_metrics(k, spec, 0, {}, 0.0)
            self._finish_stage(k, spec, metrics, time.perf_counter() - stage_t0)
            return
        stage = self._setup_stage(k, spec)
        if start_epoch == 0:
            self.iteration = 0
            self.best = None
        for epoch in range(start_epoch, spec.epochs):
            t0 = time.perf_counter()
            train_metrics = self._train_epoch(k, spec, epoch, stage)
            validate_now = epoch + 1 == spec.epochs or (spec.eval_every > 0 and (epoch + 1) % spec.eval_every == 0)
            metrics = self._epoch_metrics(k, spec, epoch + 1, train_metrics, time.perf_counter() - t0,
                                          validate=validate_now)
            if spec.select_best and self.rank == 0 and validate_now:
                if self.best is None or metrics["val_acc"] > self.best[0]:
                    self.best = (metrics["val_acc"],
                                 {kk: v.detach().clone() for kk, v in self.model.state_dict().items()})
            self._save_last(k, spec, epoch + 1, stage.optim)
        if spec.select_best:
            self._load_best()
        final = self.history[-1] if self.history and self.history[-1]["stage"] == spec.name else \
            self._epoch_metrics(k, spec, spec.epochs, {}, 0.0)
        for p in list(self.model.parameters()) + list(self.bn.parameters()):
            p.requires_grad_(True)
        self._finish_stage(k, spec, final, time.perf_counter() - stage_t0)

    def _setup_stage(self, k: int, spec: StageSpec) -> _StageRun:
        """Trainable parameters, optimiser (restored state if resuming), DDP module, data loader."""
        model, bn, o = self.model, self.bn, self.opts
        params = trainable_parameters(model, bn, spec.trainable)
        train_ids = {id(p) for p in params}
        for p in list(model.parameters()) + list(bn.parameters()):
            p.requires_grad_(id(p) in train_ids)
        optim = OPTIMIZERS[spec.optimizer](params, spec)
        if spec.quantize and self.ranges is None:
            self.ranges = self._calibrate_ranges(k, spec)
        if self.ranges is not None:
            self.ranges.momentum = spec.range_momentum
        if self._optim_state is not None:
            optim.load_state_dict(self._optim_state)
            self._optim_state = None
        module: nn.Module = StageModule(self._context(), spec)
        if self.world > 1 and params:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        assert self.train_set is not None
        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=o.seed + 7919 * k)
        loader = DataLoader(self.train_set, batch_size=o.batch_size // self.world, sampler=sampler,
                            num_workers=o.num_workers)
        batches = min([len(loader)] + [n for n in (spec.batches, o.max_batches) if n is not None])
        mixer = batch_augment(model.num_classes) if (spec.mix and self.ds_spec.batch_mix and o.augment) else None
        return _StageRun(params, optim, module, loader, sampler, batches, mixer)

    def _calibrate_ranges(self, k: int, spec: StageSpec) -> ActivationRanges:
        """First int8 activation ranges: float trajectories of a few training batches (the same on every rank)."""
        assert self.train_set is not None
        g = torch.Generator().manual_seed(self.opts.seed + 104729 * (k + 1))
        loader = DataLoader(self.train_set, batch_size=self.opts.batch_size, shuffle=True, generator=g,
                            num_workers=self.opts.num_workers)
        batches = (x.to(device=self.device, dtype=self.dtype) for b, (x, _) in enumerate(loader)
                   if b < spec.calibration_batches)
        t0 = time.perf_counter()
        ranges = calibrate_ranges(self.model, batches, self.protocol, spec.range_momentum)
        log.info("stage %s: int8 activation ranges of %d tensors calibrated on %d batch(es) in %.1f s",
                 spec.name, len(ranges), spec.calibration_batches, time.perf_counter() - t0)
        return ranges

    def _train_epoch(self, k: int, spec: StageSpec, epoch: int, stage: _StageRun) -> dict[str, float]:
        """One epoch of optimiser steps; returns the training metrics (mean loss terms, accuracy, lr)."""
        self.model.update_slope = slope_at(spec, epoch)
        torch.manual_seed(_epoch_seed(self.opts.seed, k, epoch, self.rank))
        stage.sampler.set_epoch(epoch)
        self.bn.train(spec.kind == "compat")
        sums: dict[str, float] = {}
        correct = seen = 0
        with self._progress(spec, epoch, stage.batches) as progress:
            for b, (x, y) in enumerate(stage.loader):
                if b >= stage.batches:
                    break
                x = x.to(device=self.device, dtype=self.dtype)
                y = y.to(device=self.device, dtype=self.dtype if y.is_floating_point() else None)
                if stage.mixer is not None:
                    x, y = stage.mixer(x, y)
                lr = lr_at(spec, epoch, self.iteration, stage.batches)
                for g in stage.optim.param_groups:
                    g["lr"] = lr
                loss, logits, extra = stage.module(x, y)
                stage.optim.zero_grad(set_to_none=True)
                loss.backward()
                if spec.clip is not None:
                    torch.nn.utils.clip_grad_norm_(stage.params, spec.clip)
                stage.optim.step()
                self.iteration += 1
                c, n = accuracy_counts(logits.detach(), y)
                correct, seen = correct + c, seen + n
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                for key, val in extra.items():
                    sums[key] = sums.get(key, 0.0) + float(val)
                progress.advance(loss=sums["loss"] / (b + 1), acc=correct / max(seen, 1))
        nb = max(min(len(stage.loader), stage.batches), 1)
        metrics = {f"train_{key}": val / nb for key, val in sums.items()}
        metrics["train_acc"] = correct / max(seen, 1) if spec.kind != "inverse" else float("nan")
        metrics["lr"] = lr_at(spec, epoch, self.iteration - 1, stage.batches)
        return metrics

    def _load_best(self) -> None:
        best = [self.best] if self.rank == 0 else [None]
        if self.world > 1:
            dist.broadcast_object_list(best, src=0)
        if best[0] is not None:
            with torch.no_grad():
                self.model.load_state_dict({k: v.to(self.device) for k, v in best[0][1].items()})
            self.stage_best_acc = best[0][0]
        self.best = None

    def _epoch_metrics(self, k: int, spec: StageSpec, epoch: int, train: dict, seconds: float, *,
                       validate: bool = True) -> dict:
        metrics: dict[str, Any] = {"stage": spec.name, "stage_index": k, "epoch": epoch,
                                   "slope": self.model.update_slope, **train, "time_s": round(seconds, 3)}
        if self.rank == 0:
            if validate:
                assert self.val_loader is not None
                self.bn.eval()
                self.model.eval()
                fn, ctx = EVALUATORS[spec.eval], self._context()
                t0 = time.perf_counter()
                metrics["val_acc"] = evaluate_accuracy(lambda x: fn(ctx, x), self.val_loader, self.device,
                                                       self.dtype)
                metrics["eval_time_s"] = round(time.perf_counter() - t0, 3)
                self.model.train()
            else:
                metrics["val_acc"] = None
            self.history.append(metrics)
            with open(self.out / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
            self._log_epoch(spec, metrics)
            if self.on_epoch is not None:
                self.on_epoch(metrics)
        return metrics

    def _log_epoch(self, spec: StageSpec, m: dict) -> None:
        """One line per epoch (INFO without progress bars, DEBUG beside them)."""
        parts = [f"{spec.name} epoch {m['epoch']}/{spec.epochs}"]
        parts += [f"{key[6:]} {m[key]:.4g}" for key in sorted(m) if key.startswith("train_")]
        if m.get("val_acc") is not None:
            parts.append(f"val_acc {m['val_acc']:.4f}")
        parts.append(f"{m['time_s']:.1f} s")
        log.log(logging.DEBUG if self.opts.progress else logging.INFO, "%s", ", ".join(parts))

    def _finish_stage(self, k: int, spec: StageSpec, metrics: dict, seconds: float) -> None:
        epochs = [h for h in self.history if h["stage"] == spec.name and h["epoch"] > 0]
        summary = {"val_acc": metrics.get("val_acc"), "epochs": spec.epochs, "time_s": round(seconds, 2),
                   "epoch_time_s": (round(sum(h["time_s"] for h in epochs) / len(epochs), 3) if epochs else None)}
        if spec.select_best and self.stage_best_acc is not None:
            summary["val_acc"] = self.stage_best_acc
            summary["selected"] = "best"
        self.stage_summary[spec.name] = summary
        log.info("stage %s done: %s", spec.name, summary)
        if self.rank == 0:
            extra = self._extra_tensors(None)
            meta = self._metadata(k, spec, spec.epochs, done=True)
            save_checkpoint(self.model, self.out / f"{k}-{spec.name}.safetensors", metadata=meta, extra_tensors=extra)
            save_checkpoint(self.model, self.out / LAST, metadata=meta, extra_tensors=extra)
        barrier(self.world)

    # ----------------------------------------------------------------------------- checkpoints
    def _extra_tensors(self, optim: torch.optim.Optimizer | None) -> dict[str, Tensor]:
        return pack_extras(RunExtras(
            bn=self.bn.state_dict(),
            folded=self.folded.state_dict() if self.folded is not None else {},
            optim=optim.state_dict()["state"] if optim is not None else {},
            best=self.best, ranges=self.ranges.to_tensors() if self.ranges is not None else {}))

    def _metadata(self, k: int, spec: StageSpec, epoch: int, *, done: bool,
                  optim: torch.optim.Optimizer | None = None) -> dict[str, str]:
        state = TrainState(stage_index=k, stage=spec.name, epoch=epoch, done=done,
                           stages=[s.name for s in self.specs], iteration=self.iteration,
                           update_slope=self.model.update_slope, summary=self.stage_summary)
        meta = {"train.state": state.to_json(), OPTIONS_KEY: self.opts.to_json(),
                SPEC_KEY: json.dumps(spec.to_dict()), METRICS_KEY: json.dumps(self.history)}
        if self.changes:
            meta[CHANGES_KEY] = json.dumps(self.changes, default=str)
        if optim is not None:
            meta[OPTIMIZER_KEY] = json.dumps(optim.state_dict()["param_groups"])
        return meta

    def _save_last(self, k: int, spec: StageSpec, epoch: int, optim: torch.optim.Optimizer) -> None:
        if self.rank == 0:
            save_checkpoint(self.model, self.out / LAST, metadata=self._metadata(k, spec, epoch, done=False, optim=optim),
                            extra_tensors=self._extra_tensors(optim))
        barrier(self.world)

    def _load_weights(self, path: Path, *, strict_extras: bool = True) -> RunExtras:
        """Load a checkpoint's weights (at their stored precision) and its BatchNorm / folded extras."""
        state, _ = read_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            c = self.config
            raise ValueError(f"init: {str(path)!r} does not fit this run's CordsNet-R{c.depth} "
                             f"({c.num_classes} classes, {c.in_channels} channels, {c.image_size} px): "
                             f"{str(exc).splitlines()[0]}") from None
        extra = read_extra_tensors(path) if _is_own_format(path) else {}
        extras = unpack_extras(extra, strict=strict_extras)
        if extras.bn:
            self.bn.load_state_dict(extras.bn)
        if extras.folded:
            self.folded = FoldedCNN(self.model).to(device=self.device, dtype=self.dtype)
            self.folded.load_state_dict(extras.folded)
        if extras.ranges:  # kept for a quantisation-aware stage; the first float stage to run drops them
            self.ranges = ActivationRanges.from_tensors(extras.ranges)
            assert self.ranges is not None
            self.ranges.check(self.model)
        return extras

    def _restore(self, path: Path) -> tuple[int, int]:
        """Load `path` (written by this trainer) and return (stage index, epoch) to continue from."""
        forget_input(path)  # the run's own checkpoint: read here, rewritten by this run
        meta = read_checkpoint_metadata(path)
        state = parse_train_state(meta, "resume")
        self._check_same_run(meta, state, path)
        names = [s.name for s in self.specs]
        if state.stages != names:
            raise ValueError(f"resume: the checkpoint's stages {state.stages} differ from this run's {names}")
        extras = self._load_weights(path)
        self.history = load_json(meta.get(METRICS_KEY, "[]"), f"resume: {str(path)!r} {METRICS_KEY}",
                                 allow_nan=True)  # an epoch's loss or accuracy may be NaN
        if not isinstance(self.history, list) or not all(isinstance(m, dict) and isinstance(m.get("stage"), str)
                                                         and isinstance(m.get("epoch"), int) for m in self.history):
            raise ValueError(f"resume: {str(path)!r} has a malformed {METRICS_KEY} (expected one object with "
                             "'stage' and 'epoch' per epoch); resume from an intact checkpoint")
        if self.rank == 0:  # metrics.jsonl = the checkpoint's history (drops lines of an epoch that never saved)
            with atomic_path(self.out / METRICS) as tmp:
                tmp.write_text("".join(json.dumps(m) + "\n" for m in self.history), encoding="utf-8")
        self.stage_summary = state.summary
        self.iteration = state.iteration
        self.model.update_slope = state.update_slope
        if extras.best is not None:
            self.best = (extras.best[0], {k: v.to(self.device) for k, v in extras.best[1].items()})
        if state.done:
            return state.stage_index + 1, 0
        groups = load_json(meta.get(OPTIMIZER_KEY, "null"), f"resume: {str(path)!r} {OPTIMIZER_KEY}", allow_nan=True)
        if not isinstance(groups, list):
            raise ValueError(f"resume: {str(path)!r} has a missing or malformed {OPTIMIZER_KEY} (expected the "
                             "optimiser's parameter groups); resume from an intact checkpoint")
        self._optim_state = {"state": {idx: {name: v.to(self.device) if name != "step" else v
                                             for name, v in st.items()} for idx, st in extras.optim.items()},
                             "param_groups": groups}
        return state.stage_index, state.epoch

    def _check_same_run(self, meta: Mapping[str, str], state: TrainState, path: Path) -> None:
        """Refuse a resume whose result-shaping options differ from the run's, unless ``allow_changes``
        (then recorded in ``train.changes``)."""
        stored = load_json(meta.get(OPTIONS_KEY, "{}"), f"resume: {str(path)!r} {OPTIONS_KEY}")
        changes_so_far = load_json(meta.get(CHANGES_KEY, "[]"), f"resume: {str(path)!r} {CHANGES_KEY}")
        self.changes = list(changes_so_far) if isinstance(changes_so_far, list) else []
        if not isinstance(stored, dict):
            raise ValueError(f"resume: {str(path)!r} has a malformed {OPTIONS_KEY} (expected a JSON object)")
        changes = option_changes(stored, json.loads(self.opts.to_json()))
        if not changes:
            return
        if not self.opts.allow_changes:
            raise ValueError(f"resume: this call differs from the run in {str(self.out)!r}: {describe_changes(changes)}; "
                             "repeat the run's options, or pass --allow-changes (allow_changes=True) to continue "
                             "with these and record them")
        log.warning("resume: continuing %s with changed options (recorded in %s): %s", self.out, CHANGES_KEY,
                    describe_changes(changes))
        self.changes.append({"stage": state.stage, "epoch": state.epoch,
                             "changes": {k: [a, b] for k, (a, b) in changes.items()}})

    # ------------------------------------------------------------------------------ progress
    def _progress(self, spec: StageSpec, epoch: int, total: int) -> Progress:
        """One epoch's progress (cordsnet.progress): a bar with ``progress`` on, else log lines at least every
        10 s within the epoch; nothing on other ranks."""
        style = "none" if self.rank != 0 else ("bar" if self.opts.progress else "log")
        return Progress(f"{spec.name} {epoch + 1}/{spec.epochs}", total, style=style, logger=log, ends=False)


def _is_own_format(path: Path) -> bool:
    try:
        read_checkpoint_metadata(path)
    except ValueError:
        return False
    return True


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
