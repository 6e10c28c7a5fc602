"""The staged trainer: folding, losses and schedules, the tiny end-to-end pipeline, resume, DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cordsnet.checkpoint import load_checkpoint, read_checkpoint_metadata
from cordsnet.model import CordsNet
from cordsnet.train import (
    BatchNormSet,
    TrainOptions,
    Trainer,
    anneal_slope,
    compat_forward,
    fold_batchnorm,
    folded_forward,
    inverse_loss,
    lr_at,
    resolve_stage,
    resolve_stages,
    slope_at,
    spontaneous_penalty,
    time_weighted_ce,
    time_weights,
)

# A protocol short enough for CI: every stage runs, on 16 FakeData images of 32 px.
TINY = dict(dataset="fake", depth=2, image_size=32, batch_size=8, steps=8, spontaneous_steps=4,
            recovery_steps=4, penalty_window=2, ce_window=4, dataset_kwargs={"fake_size": 16, "in_channels": 3},
            augment=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions on a shared CPU: one thread avoids OpenMP oversubscription (often 5x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_bn(bn: BatchNormSet, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in bn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(0.2 + 2 * torch.rand(n, generator=gen))
                m.weight.copy_(1.5 * torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen))
    bn.eval()


# ------------------------------------------------------------------------------------ folding
@pytest.mark.parametrize("depth", [2, 4, 6])
def test_folding_is_exact_in_eval_mode(depth: int) -> None:
    # float64: folding changes the arithmetic (BN scales multiplied into the weights), so float32 results
    # differ by rounding that depends on the CPU's kernels; in float64 an exact fold agrees to ~1e-13.
    torch.manual_seed(depth)
    model = CordsNet(depth=depth, num_classes=7, in_channels=3, image_size=64, dataset=None).double()
    bn = BatchNormSet(model).double()
    _randomise_bn(bn, seed=depth)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        reference = compat_forward(model, bn, x)
        folded = fold_batchnorm(model, bn)
        out = folded_forward(model, folded, x)
    assert torch.allclose(out, reference, atol=1e-10, rtol=0), (out - reference).abs().max()
    # The input BN's shift passes a zero-padded avgpool: the spatial bias is not uniform at the border.
    b0 = folded.area_bias(0)
    assert (b0[:, 0, 0] - b0[:, 3, 3]).abs().max() > 1e-3
    # Weight norm stays a valid parametrisation: v is unit-norm per output channel after folding.
    v = model.area_area[0].parametrizations.weight.original1
    assert torch.allclose(v.flatten(1).norm(dim=1), torch.ones(v.shape[0], dtype=v.dtype), atol=1e-12)


def test_folding_with_uniform_biases_would_be_wrong() -> None:
    """The border maps matter: replacing area_bias_0 by its centre value changes the output."""
    torch.manual_seed(0)
    model = CordsNet(depth=2, num_classes=5, in_channels=3, image_size=32, dataset=None)
    bn = BatchNormSet(model)
    _randomise_bn(bn)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = compat_forward(model, bn, x)
        folded = fold_batchnorm(model, bn)
        centre = folded.area_bias(0)[:, 4:5, 4:5].clone()
        folded.area_bias(0).copy_(centre.expand_as(folded.area_bias(0)))
        out = folded_forward(model, folded, x)
    assert (out - reference).abs().max() > 1e-4


# -------------------------------------------------------------------------- losses, schedules
def test_anneal_schedule() -> None:
    slopes = [anneal_slope(e) for e in range(22)]
    assert slopes[0] == pytest.approx(0.95)
    assert slopes[1] == pytest.approx(0.90)
    assert slopes[10] == pytest.approx(0.45)
    assert slopes[18] == pytest.approx(0.05)
    assert slopes[19] == 0.0 and slopes[21] == 0.0
    assert all(a >= b for a, b in zip(slopes, slopes[1:]))
    spec = resolve_stage("anneal")
    assert spec.epochs == 20 and slope_at(spec, 19) == 0.0 and slope_at(spec, 0) == pytest.approx(0.95)
    assert slope_at(resolve_stage("linear"), 3) == 1.0 and slope_at(resolve_stage("finetune"), 0) == 0.0
    fast = resolve_stage("anneal", {"slope_decrement": 0.25})
    assert [slope_at(fast, e) for e in range(5)] == pytest.approx([0.95, 0.7, 0.45, 0.2, 0.0])
    with pytest.raises(ValueError, match="epoch"):
        anneal_slope(-1)


def test_published_defaults() -> None:
    compat = resolve_stage("compat")
    assert (compat.optimizer, compat.lr, compat.momentum, compat.weight_decay, compat.epochs) == ("sgd", 0.1, 0.9, 1e-4, 300)
    inverse = resolve_stage("inverse")
    assert (inverse.optimizer, inverse.lr, inverse.clip, inverse.epochs, inverse.trainable) == \
        ("adamw", 1e-4, 1e-3, 100, "recurrent")
    for name, epochs in (("linear", 100), ("anneal", 20), ("finetune", 20)):
        spec = resolve_stage(name)
        assert (spec.optimizer, spec.lr, spec.clip, spec.epochs) == ("adamw", 1e-5, 1e-4, epochs)
    assert resolve_stage("anneal").penalty == 1e-3 and resolve_stage("linear").spontaneous is False
    # Rounds schedule: three rounds, lr / 10 each, linear warm-up over the first 100 iterations of each.
    assert lr_at(compat, 0, 0, 10) == pytest.approx(0.1 / 100)
    assert lr_at(compat, 0, 99, 10) == pytest.approx(0.1)
    assert lr_at(compat, 100, 1000, 10) == pytest.approx(0.01 / 100)
    assert lr_at(compat, 299, 2999, 10) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="valid ones"):
        resolve_stage("linear", {"learning_rate": 1})
    with pytest.raises(ValueError, match="expected one of"):
        resolve_stage("warmup")
    assert resolve_stages("all") == ("compat", "fold", "inverse", "linear", "anneal", "finetune")
    assert resolve_stages("finetune") == ("finetune",)
    with pytest.raises(ValueError, match="order"):
        resolve_stages("linear,compat")


def test_time_weighted_ce() -> None:
    w = time_weights(30)
    assert w.shape == (30,) and w[0] == pytest.approx(1e-3) and w[-1] == pytest.approx(1.0)
    torch.manual_seed(0)
    logits = torch.randn(30, 5, 4)
    y = torch.randint(0, 4, (5,))
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[t], y) for t in range(30)])
    assert time_weighted_ce(logits, y) == pytest.approx(float((w * expected).mean()), rel=1e-5)
    soft = torch.nn.functional.one_hot(y, 4).float()
    assert time_weighted_ce(logits, soft) == pytest.approx(float(time_weighted_ce(logits, y)), rel=1e-5)


def test_spontaneous_penalty() -> None:
    spont = (torch.zeros(1, 2, 3, 3), torch.ones(1, 4, 2, 2))
    late = [(torch.full((5, 2, 3, 3), 2.0), torch.ones(5, 4, 2, 2)) for _ in range(10)]
    # area 0 is 2 away (squared 4), area 1 sits on its spontaneous state: (10 * 4) / (10 * 2)
    assert float(spontaneous_penalty(late, spont)) == pytest.approx(2.0)


def test_inverse_loss_is_zero_at_the_fixed_point() -> None:
    w = torch.zeros(3, 3, 3, 3)
    b = torch.randn(3, 4, 4)
    u = torch.randn(2, 3, 4, 4)
    loss, mse = inverse_loss(w, b, u, b + u)
    assert float(loss) == pytest.approx(0.0, abs=1e-12) and float(mse) == pytest.approx(0.0, abs=1e-12)
    loss2, _ = inverse_loss(0.1 * torch.randn(3, 3, 3, 3), b, u, b + u)
    assert float(loss2) > 0


# ----------------------------------------------------------------------------------- pipeline
def test_tiny_pipeline_every_stage_and_loss_falls(tmp_path: Path) -> None:
    lines: list[dict] = []
    opts = TrainOptions(**TINY, out=tmp_path, stages="all",
                        epochs={"compat": 6, "inverse": 4, "linear": 4, "anneal": 3, "finetune": 2},
                        lr={"compat": 0.05, "inverse": 1e-3, "linear": 1e-3, "anneal": 1e-4, "finetune": 1e-4},
                        stage_overrides={"compat": {"warmup_iters": 2}})
    summary = Trainer(opts, on_epoch=lines.append).run()
    stages = [m["stage"] for m in lines]
    assert stages == ["compat"] * 6 + ["fold"] + ["inverse"] * 4 + ["linear"] * 4 + ["anneal"] * 3 + ["finetune"] * 2
    by_stage = {s: [m for m in lines if m["stage"] == s] for s in set(stages)}
    for stage in ("compat", "inverse", "linear"):
        losses = [m["train_loss"] for m in by_stage[stage]]
        assert losses[-1] < losses[0], (stage, losses)
    assert [m["slope"] for m in by_stage["anneal"]] == pytest.approx([0.95, 0.90, 0.85])
    assert all(m["slope"] == 0.0 for m in by_stage["finetune"])
    assert all("train_penalty" in m for m in by_stage["anneal"] + by_stage["finetune"])
    assert "train_penalty" not in by_stage["linear"][0]
    # Folding keeps the CNN's validation accuracy exactly (eval mode).
    assert by_stage["fold"][0]["val_acc"] == by_stage["compat"][-1]["val_acc"]
    assert set(summary["stages"]) == {"compat", "fold", "inverse", "linear", "anneal", "finetune"}
    # One checkpoint per stage plus last/final; metrics as JSON lines; the final model loads.
    for k, name in enumerate(("compat", "fold", "inverse", "linear", "anneal", "finetune")):
        assert (tmp_path / f"{k}-{name}.safetensors").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(lines)
    model = load_checkpoint(tmp_path / "final.safetensors")
    assert model.depth == 2 and model.update_slope == 0.0
    meta = read_checkpoint_metadata(tmp_path / "last.safetensors")
    state = json.loads(meta["train.state"])
    assert state["stage"] == "finetune" and state["done"] is True


def test_inverse_stage_reduces_its_loss(tmp_path: Path) -> None:
    lines: list[dict] = []
    opts = TrainOptions(**TINY, out=tmp_path, stages="compat,fold,inverse", epochs={"compat": 1, "inverse": 6},
                        lr={"inverse": 1e-3}, stage_overrides={"inverse": {"eval_every": 0}})
    Trainer(opts, on_epoch=lines.append).run()
    inv = [m for m in lines if m["stage"] == "inverse"]
    assert inv[-1]["train_loss"] < 0.8 * inv[0]["train_loss"]
    assert inv[-1]["train_mse"] < inv[0]["train_mse"]
    assert [m["val_acc"] is None for m in inv] == [True] * 5 + [False]  # eval_every=0: only at the end
    # Only the recurrent weights moved: the feedforward weights equal the folded checkpoint's.
    folded = load_checkpoint(tmp_path / "1-fold.safetensors").state_dict()
    after = load_checkpoint(tmp_path / "2-inverse.safetensors").state_dict()
    for key in folded:
        same = torch.equal(folded[key], after[key])
        assert same == (not key.startswith(("area_conv", "conv_bias"))), key


# --------------------------------------------------------------------------------- resume
class _Killed(Exception):
    pass


def _final_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    epochs = {"compat": 3, "inverse": 2, "linear": 3, "anneal": 2, "finetune": 2}
    lr = {"compat": 0.05, "inverse": 1e-3, "linear": 1e-3, "anneal": 1e-3, "finetune": 1e-3}
    common = dict(TINY, epochs=epochs, lr=lr, stage_overrides={"compat": {"warmup_iters": 2}})
    Trainer(TrainOptions(**common, out=tmp_path / "a")).run()

    for stop in (("compat", 2), ("linear", 2), ("finetune", 2)):  # SGD+BN, AdamW, best-epoch selection
        out = tmp_path / f"b-{stop[0]}"

        def kill(m: dict, stop=stop) -> None:
            if (m["stage"], m["epoch"]) == stop:  # before this epoch's checkpoint is written
                raise _Killed

        with pytest.raises(_Killed):
            Trainer(TrainOptions(**common, out=out), on_epoch=kill).run()
        state = json.loads(read_checkpoint_metadata(out / "last.safetensors")["train.state"])
        assert (state["stage"], state["epoch"]) == (stop[0], stop[1] - 1)
        Trainer(TrainOptions(**common, out=out)).run(resume=True)
        a, b = _final_state(tmp_path / "a" / "final.safetensors"), _final_state(out / "final.safetensors")
        for key in a:  # both runs on this machine, same kernels and order: equal (1e-6: float32 storage only)
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), (stop, key, (a[key] - b[key]).abs().max())
    with pytest.raises(FileNotFoundError, match="resume"):
        Trainer(TrainOptions(**common, out=tmp_path / "none")).run(resume=True)


def test_interrupted_checkpoint_write_keeps_last_good(tmp_path: Path, file_size_limit) -> None:
    opts = TrainOptions(**TINY, out=tmp_path, stages="compat", epochs=2, stage_overrides={"compat": {"warmup_iters": 1}})

    def disk_full_in_epoch_2(m: dict) -> None:  # called just before the epoch's checkpoint is written
        if m["epoch"] == 2:
            file_size_limit((tmp_path / "last.safetensors").stat().st_size // 2)

    try:
        with pytest.raises(OSError):
            Trainer(opts, on_epoch=disk_full_in_epoch_2).run()
    finally:
        file_size_limit(2**62)
    last = tmp_path / "last.safetensors"
    state = json.loads(read_checkpoint_metadata(last)["train.state"])
    assert state["epoch"] == 1 and state["stage"] == "compat"
    load_checkpoint(last)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


# -------------------------------------------------------------------------------- distributed
@pytest.mark.distributed
def test_ddp_two_processes_match_single_process(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import torch
        from cordsnet.train import TrainOptions, Trainer
        opts = TrainOptions(**json.loads(sys.argv[1]))
        trainer = Trainer(opts)
        trainer.run()
        rank = int(os.environ.get("RANK", "0"))
        torch.save(trainer.model.state_dict(), sys.argv[2] + f".rank{rank}.pt")
    """))
    # float64: in float32 the runs agree to ~1 ulp for a few optimiser steps, then a ReLU gate within
    # rounding distance of zero may flip (which depends on the CPU's reduction order) and AdamW, with
    # gradients clipped to norm 1e-4 (per-element gradients near Adam's eps), amplifies it. In float64
    # the same batches, loss scaling, gradient averaging, clipping and optimiser give results that agree
    # to ~1e-15 relative, so a bound of 1e-9 proves them identical on any machine.
    common = dict(TINY, stages="linear,finetune", epochs={"linear": 2, "finetune": 2},
                  lr={"linear": 1e-3, "finetune": 1e-3}, dataset_kwargs={"fake_size": 16, "in_channels": 3},
                  device="cpu", dtype="float64")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    ddp = dict(common, out=str(tmp_path / "ddp"))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(script), json.dumps(ddp), str(tmp_path / "ddp")], check=True, env=env, timeout=300,
                   capture_output=True)
    single = dict(common, out=str(tmp_path / "single"))
    subprocess.run([sys.executable, str(script), json.dumps(single), str(tmp_path / "single")], check=True,
                   env=env, timeout=300, capture_output=True)
    r0 = torch.load(tmp_path / "ddp.rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp.rank1.pt", weights_only=True)
    one = torch.load(tmp_path / "single.rank0.pt", weights_only=True)
    for key in r0:
        assert r0[key].dtype == torch.float64, key
        assert torch.equal(r0[key], r1[key]), key  # DDP keeps the replicas identical
        assert torch.allclose(r0[key], one[key], atol=1e-9, rtol=1e-9), (key, (r0[key] - one[key]).abs().max())
    # Rank 0 alone wrote checkpoints and metrics.
    assert (tmp_path / "ddp" / "final.safetensors").is_file()
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 4


# ---------------------------------------------------------------------------------------- CLI
def test_cli_train_prints_json_lines(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cordsnet.cli import app

    result = CliRunner().invoke(app, ["train", "--dataset", "fake", "--depth", "2", "--image-size", "32",
                                      "--stage", "compat,fold", "--epochs", "compat=2", "--batch-size", "8",
                                      "--lr", "compat=0.01", "--out", str(tmp_path), "--no-augment",
                                      "--set", "compat.warmup_iters=1", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [m.get("stage") for m in lines[:3]] == ["compat", "compat", "fold"]
    assert "summary" in lines[-1]
    bad = CliRunner().invoke(app, ["train", "--dataset", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 1


@pytest.mark.parametrize("device, match", [("gpu", "expected 'cpu', 'cuda' or 'cuda:N'"),
                                           ("cuda", "no CUDA device is available")])
def test_cli_train_bad_device_is_one_line(tmp_path: Path, device: str, match: str) -> None:
    from typer.testing import CliRunner

    from cordsnet.cli import app

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = CliRunner().invoke(app, ["train", "--dataset", "fake", "--depth", "2", "--image-size", "32",
                                      "--stage", "compat", "--epochs", "1", "--device", device,
                                      "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: device:") and match in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


# ------------------------------------------------------------------------- output directory
def _tiny_compat(out: Path, **kw) -> TrainOptions:
    return TrainOptions(**{**TINY, "out": out, "stages": "compat", "epochs": 1,
                           "stage_overrides": {"compat": {"warmup_iters": 1}}, **kw})


def test_a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path) -> None:
    Trainer(_tiny_compat(tmp_path)).run()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"0-compat.safetensors", "last.safetensors", "final.safetensors", "metrics.jsonl"}
    with pytest.raises(ValueError, match=r"^out: .* already holds a training run .*overwrite"):
        Trainer(_tiny_compat(tmp_path)).run()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    # A run's own file as --init would be deleted by overwrite: refused before anything is removed.
    with pytest.raises(ValueError, match="^init: .* overwrite would replace"):
        Trainer(_tiny_compat(tmp_path, overwrite=True, init=tmp_path / "final.safetensors")).run()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(ValueError, match="either resume or overwrite"):
        Trainer(_tiny_compat(tmp_path, overwrite=True)).run(resume=True)
    # A stale stage checkpoint of another pipeline goes too: the directory then holds one run.
    (tmp_path / "3-linear.safetensors").write_bytes(before["final.safetensors"])
    (tmp_path / "notes.txt").write_text("mine")
    Trainer(_tiny_compat(tmp_path, overwrite=True, stages="compat,fold")).run()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["0-compat.safetensors", "1-fold.safetensors", "final.safetensors", "last.safetensors",
                     "metrics.jsonl", "notes.txt"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in lines] == ["compat", "fold"]  # replaced, not appended
    # Files of other kinds in the directory do not count as a run.
    other = tmp_path / "other"
    other.mkdir()
    (other / "README").write_text("x")
    Trainer(_tiny_compat(other)).run()


def test_a_second_run_into_a_directory_being_trained_refuses(tmp_path: Path) -> None:
    """Two runs into one OUT used to both succeed, interleaving metrics.jsonl and mixing checkpoints."""
    from cordsnet._io import LOCK_MARK

    hold = ("import sys; from cordsnet._io import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "last.safetensors")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="another process is writing"):
            Trainer(_tiny_compat(tmp_path)).run()
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.communicate("", timeout=30)
    Trainer(_tiny_compat(tmp_path)).run()
    assert not [p for p in tmp_path.iterdir() if LOCK_MARK in p.name]


def test_one_log_line_per_epoch_without_progress_bars(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    opts = TrainOptions(**dict(TINY, out=tmp_path, stages="compat,fold", epochs=2,
                               stage_overrides={"compat": {"warmup_iters": 1}}))
    with caplog.at_level("INFO", logger="cordsnet.train"):
        Trainer(opts).run()
    messages = [r.getMessage() for r in caplog.records if r.name == "cordsnet.train"]
    epochs = [m for m in messages if " epoch " in m and "/2" in m]
    assert [m.split(",")[0] for m in epochs] == ["compat epoch 1/2", "compat epoch 2/2"]
    assert all("loss" in m and "val_acc" in m for m in epochs)
    assert any(m.startswith("stage 2/2 fold") for m in messages)
    assert any(m.startswith("done in") for m in messages)


# ------------------------------------------------------------------------ run-state layout
def test_run_state_round_trip_and_strictness() -> None:
    from cordsnet.train import RunExtras, TrainState, pack_extras, parse_train_state, unpack_extras

    extras = RunExtras(bn={"inp.weight": torch.ones(3)}, folded={"area_bias_0": torch.zeros(2)},
                       optim={0: {"exp_avg": torch.ones(2), "step": torch.tensor(3.0)}, 11: {"exp_avg": torch.ones(1)}},
                       best=(0.75, {"out_fc.bias": torch.arange(3.0)}), ranges={"quant.state_0": torch.ones(2)})
    flat = pack_extras(extras)
    assert set(flat) == {"bn.inp.weight", "folded.area_bias_0", "optim.0.exp_avg", "optim.0.step",
                         "optim.11.exp_avg", "best_acc", "best.out_fc.bias", "quant.state_0"}
    back = unpack_extras(flat)
    assert back.best is not None and back.best[0] == 0.75 and torch.equal(back.best[1]["out_fc.bias"], torch.arange(3.0))
    assert set(back.optim) == {0, 11} and torch.equal(back.optim[0]["step"], torch.tensor(3.0))
    assert torch.equal(back.bn["inp.weight"], torch.ones(3)) and set(back.folded) == {"area_bias_0"}
    assert set(back.ranges) == {"quant.state_0"}
    with pytest.raises(ValueError, match="unexpected key 'mine'"):
        unpack_extras({"mine": torch.zeros(1)})
    assert unpack_extras({"mine": torch.zeros(1)}, strict=False) == RunExtras()
    state = TrainState(2, "inverse", 3, False, ["compat", "fold", "inverse"], 17, 1.0, {"compat": {"val_acc": 0.5}})
    assert parse_train_state({"train.state": state.to_json()}) == state
    with pytest.raises(ValueError, match="not written by the trainer"):
        parse_train_state({})
    with pytest.raises(ValueError, match="malformed train.state"):
        parse_train_state({"train.state": '{"stage": 1}'})
    # A position the run cannot have reached (an edited or damaged state) is refused, not silently "done".
    for lie in (dict(stage_index=99), dict(stage_index=-1), dict(stage="compat"), dict(epoch=-5),
                dict(iteration=-1), dict(update_slope=float("nan"))):
        edited = dataclasses.replace(state, **lie)
        with pytest.raises(ValueError, match="malformed train.state"):
            parse_train_state({"train.state": edited.to_json()})


def test_registries_cover_every_stage_field_value() -> None:
    """A stage may name only what the trainer can look up (and every entry is reachable)."""
    from cordsnet.train import EVALUATORS, FORWARDS, OPTIMIZERS, TRAINABLE, stages

    assert set(TRAINABLE) == set(stages.TRAINABLE)
    assert set(OPTIMIZERS) == set(stages.OPTIMIZERS)
    assert set(EVALUATORS) == set(stages.EVALS)
    assert set(FORWARDS) | {"fold"} == set(stages.KINDS)


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, "steps: expected an int >= 1, got 0"),
    ("spontaneous_steps", -1, "spontaneous_steps: expected an int >= 0"),
    ("batch_size", True, "batch_size: expected an int >= 1, got True"),
    ("alpha", 1.5, "alpha: expected a finite number in"),
    ("dtype", "float16", "dtype: expected one of"),
    ("threads", 0, "threads: expected an int >= 1"),
    ("ce_window", 0, "ce_window: expected an int >= 1"),
])
def test_bad_options_name_the_option(tmp_path: Path, field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Trainer(TrainOptions(**dict(TINY, out=tmp_path, stages="compat", **{field: value})))
    assert not any(tmp_path.iterdir())


def test_model_card_tool_evaluates_a_digits_run(tmp_path: Path) -> None:
    """tools/model_card.py (the maintainer script behind the bundled model's card) on a tiny digits run."""
    run = tmp_path / "run"
    Trainer(TrainOptions(dataset="digits", depth=2, image_size=32, batch_size=32, stages="compat,fold", epochs=1,
                         augment=False, limit_train=64, limit_val=32, out=run, download=False,
                         stage_overrides={"compat": {"warmup_iters": 1}})).run()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, str(root / "tools" / "model_card.py"), str(run),
                             "--png", str(tmp_path / "curve.png"), "--json", str(tmp_path / "facts.json"),
                             "--bundle", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["heldout_n"] == 360 and len(facts["curve"]) == 100
    assert set(facts["stages"]) == {"compat", "fold"}
    # Folding is exact: the folded CNN's held-out accuracy equals the BatchNorm CNN's.
    assert facts["stages"]["fold"]["heldout_acc"] == facts["stages"]["compat"]["heldout_acc"]
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert load_checkpoint(tmp_path / "digits_r4.safetensors").depth == 2


def test_qat_stage_learns_ranges_that_the_int8_export_uses(tmp_path: Path) -> None:
    """The 'qat' stage: fake-quantised stimulus steps, ranges calibrated then tracked, stored in every checkpoint;
    `export --calibration checkpoint` writes them into the graph; a float stage drops them."""
    import numpy as np
    from typer.testing import CliRunner

    from cordsnet.cli import app
    from cordsnet.quantization import read_activation_ranges
    from cordsnet.train.forwards import EVALUATORS, StageContext

    Trainer(TrainOptions(**TINY, out=tmp_path / "float", stages="compat", epochs=1)).run()
    init = tmp_path / "float" / "final.safetensors"
    lines: list[dict] = []
    opts = TrainOptions(**TINY, out=tmp_path / "qat", stages="qat", epochs={"qat": 2}, lr={"qat": 1e-3},
                        init=str(init))
    trainer = Trainer(opts, on_epoch=lines.append)
    trainer.run()
    assert [m["stage"] for m in lines] == ["qat", "qat"] and all(m["val_acc"] is not None for m in lines)
    final = tmp_path / "qat" / "final.safetensors"
    ranges = read_activation_ranges(final)
    assert ranges is not None and read_activation_ranges(tmp_path / "qat" / "last.safetensors") is not None
    model = load_checkpoint(final)
    ranges.check(model)
    assert ranges.as_dict() == trainer.ranges.as_dict()
    # the stage evaluates the quantised dynamics, not the float ones
    ctx = StageContext(model, BatchNormSet(model), None, opts.protocol(), ranges)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        q, f = EVALUATORS["qat"](ctx, x), EVALUATORS["rnn"](ctx, x)
    assert not torch.equal(q, f) and (q - f).abs().max() < 0.2 * f.abs().max()
    # export from the stored ranges (CLI), verified on 100 images of the checkpoint's shape
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((100, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "q.onnx"
    args = ["export", str(final), "--format", "onnx", "--graph", "stepwise", "--dtype", "int8", "--steps", "8",
            "--spontaneous-steps", "4", "--verify-images", str(tmp_path / "v.npy"), "-o"]
    result = CliRunner().invoke(app, [*args, str(out), "--calibration", "checkpoint"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    refused = CliRunner().invoke(app, [*args, str(tmp_path / "r.onnx"), "--calibration", "checkpoint"][:1] +
                                 [str(init)] + [*args[2:], str(tmp_path / "r.onnx"), "--calibration", "checkpoint"])
    assert refused.exit_code == 1 and "stores no int8 activation ranges" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "r.onnx").exists()
    # a float stage started from the quantisation-aware checkpoint does not carry stale ranges, and a
    # quantisation-aware stage after it calibrates anew for the weights it starts from
    Trainer(TrainOptions(**TINY, out=tmp_path / "after", stages="finetune", epochs=1, init=str(final))).run()
    assert read_activation_ranges(tmp_path / "after" / "final.safetensors") is None
    again = Trainer(TrainOptions(**TINY, out=tmp_path / "again", stages="finetune,qat", epochs=1, init=str(final)))
    again.run()
    assert read_activation_ranges(tmp_path / "again" / "0-finetune.safetensors") is None
    assert again.ranges is not None and again.ranges.as_dict() != ranges.as_dict()


def test_quantisation_aware_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="eval: 'qat' goes with quantize=True and only with it"):
        resolve_stage("finetune", {"eval": "qat"})
    with pytest.raises(ValueError, match="eval: 'qat' goes with quantize=True"):
        resolve_stage("qat", {"eval": "rnn"})
    with pytest.raises(ValueError, match="range_momentum"):
        resolve_stage("qat", {"range_momentum": 0})
    with pytest.raises(ValueError, match="select_best: not with quantize=True"):
        resolve_stage("qat", {"select_best": True})
    assert resolve_stages("qat") == ("qat",) and resolve_stages("finetune,qat") == ("finetune", "qat")
    with pytest.raises(ValueError, match="stages must follow the order"):
        resolve_stages("qat,finetune")


# ------------------------------------------------------------------- resume is the same run
def test_resume_with_changed_options_is_refused_unless_allowed_and_then_recorded(tmp_path: Path) -> None:
    opts = dict(TINY, out=tmp_path, stages="compat", epochs=2, stage_overrides={"compat": {"warmup_iters": 1}})

    def stop_after_first(m: dict) -> None:
        if m["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        Trainer(TrainOptions(**opts), on_epoch=stop_after_first).run()
    last = tmp_path / "last.safetensors"
    before = last.read_bytes()
    # Each result-shaping option, changed on resume, is refused in one line naming it (nothing written).
    for change, named in (({"lr": 0.5}, "lr"), ({"batch_size": 4}, "batch_size"), ({"seed": 7}, "seed"),
                          ({"steps": 3}, "steps"), ({"epochs": 3}, "epochs"), ({"augment": True}, "augment"),
                          ({"stage_overrides": {"compat": {"warmup_iters": 2}}}, "stage_overrides")):
        with pytest.raises(ValueError, match=rf"^resume: .*differs .*{named} .*--allow-changes") as info:
            Trainer(TrainOptions(**{**opts, **change})).run(resume=True)
        assert "\n" not in str(info.value)
        assert last.read_bytes() == before
    # Neutral options (threads, progress) are not changes.
    # Allowed explicitly: the run continues and every later checkpoint records what changed.
    Trainer(TrainOptions(**{**opts, "lr": 0.02, "allow_changes": True, "threads": 1})).run(resume=True)
    for name in ("last.safetensors", "final.safetensors"):
        changes = json.loads(read_checkpoint_metadata(tmp_path / name)["train.changes"])
        assert changes[0]["changes"]["lr"][1] == 0.02 and changes[0]["stage"] == "compat", changes


@pytest.mark.parametrize("key, value, match", [
    ("train.options", '{"lr": 1e999}', "float range"),
    ("train.metrics", '{"not": "a list"}', "malformed train.metrics"),
    ("train.state", "[" * 200 + "]" * 200, "malformed train.state"),
    ("train.optimizer", "7", "malformed train.optimizer"),
])
def test_a_tampered_run_checkpoint_is_refused_in_one_line(tmp_path: Path, key, value, match) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    opts = TrainOptions(**TINY, out=tmp_path, stages="compat", epochs=2, stage_overrides={"compat": {"warmup_iters": 1}})

    def stop(m: dict) -> None:
        if m["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        Trainer(opts, on_epoch=stop).run()
    last = tmp_path / "last.safetensors"
    with safe_open(str(last), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta[key] = value
    save_file(tensors, str(last), metadata=meta)
    with pytest.raises(ValueError, match=match) as info:
        Trainer(opts).run(resume=True)
    assert "\n" not in str(info.value)
