"""The one training loop every task uses: plain functions, single-process or under ``torchrun`` (DDP).

A task supplies data sets, a model and two functions (``training_step``, ``evaluate``); this module
owns the device, precision, optimizer, schedule, clipping, seeding, logging, checkpoints and resume.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path

StepFn = Callable[[nn.Module, Any, torch.device, torch.Generator], tuple[torch.Tensor, int]]
EvalFn = Callable[[nn.Module, Dataset, torch.device], dict[str, float]]

CHECKPOINT = "checkpoint.safetensors"
TRAINING_STATE = "training_state.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    epochs: int = 10  # (int) passes over the training set
    batch_size: int = 64  # (int) samples per step, per process
    optimizer: Literal["adamw", "sgd"] = "adamw"  # (str) adamw | sgd (with Nesterov momentum)
    lr: float = 2e-3  # (float) peak learning rate
    weight_decay: float = 0.05  # (float) decoupled weight decay (AdamW) or L2 (SGD)
    momentum: float = 0.9  # (float) SGD momentum
    schedule: Literal["cosine", "constant"] = "cosine"  # (str) learning-rate schedule after warm-up
    warmup_epochs: float = 1.0  # (float) linear warm-up length, in epochs
    grad_clip: float = 1.0  # (float) max global gradient norm; 0 disables clipping
    seed: int = 0  # (int) seeds weights, shuffling, augmentation and dropout
    device: str = "auto"  # (str) auto (cuda if present, else cpu) | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # (str) auto: bf16 autocast on CUDA, fp32 on CPU
    log_every: int = 10  # (int) steps between metrics.jsonl lines

    def __post_init__(self):
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


# ---------------------------------------------------------------------------------------------
# Device, precision, processes


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device; join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PipelineError(f"train.device={cfg.device} but no CUDA device is available")
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Runtime(device, rank, world_size)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The one precision decision: bf16 autocast on CUDA unless fp32 is asked for."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices and conv kernels only, never on biases, norms or embeddings' 1-D params."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer, epoch: int, step: int, meta: dict[str, str]) -> None:
    """Weights (safetensors, with the model config in its metadata) and the state to resume; each atomic."""
    with atomic_path(run_dir / CHECKPOINT) as tmp:
        save_model(model, str(tmp), metadata=meta)
    state = {
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(run_dir / TRAINING_STATE) as tmp:
        torch.save(state, tmp)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors checkpoint into ``model``; a missing or corrupt file is a PipelineError."""
    if not path.is_file():
        raise PipelineError(f"checkpoint not found: {path}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise PipelineError(f"checkpoint {path} is corrupt or does not match the config: {e}") from None
    if missing or unexpected:
        raise PipelineError(
            f"checkpoint {path} does not match the config: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )


def load_training_state(run_dir: Path, optimizer) -> tuple[int, int]:
    """Restore optimizer and RNG state; returns (epochs done, global step)."""
    path = run_dir / TRAINING_STATE
    if not path.is_file():
        raise PipelineError(f"cannot resume: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:  # noqa: BLE001 - any unreadable state is the same user-facing problem
        raise PipelineError(f"cannot resume: {path} is corrupt: {e}") from None
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["epoch"]), int(state["step"])


# ---------------------------------------------------------------------------------------------
# The loop


def train_one_epoch(
    model: nn.Module, loader: DataLoader, optimizer, step_fn, rt: Runtime, cfg: TrainConfig, state: dict[str, Any],
    lr_at, log, dtype: torch.dtype, generator: torch.Generator,
) -> float:
    """One pass over ``loader``; returns the mean training loss (of this process)."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}", disable=None if rt.is_main else True,
               leave=False, mininterval=0.5, dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    for batch in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"])
        with autocast(rt.device, dtype):
            loss, n = step_fn(model, batch, rt.device, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        optimizer.step()
        state["step"] += 1
        total, count, seen = total + loss.item() * n, count + n, seen + n
        rate = seen * rt.world_size / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.0f}")
        if state["step"] % cfg.log_every == 0:
            record = {"split": "train", "epoch": state["epoch"] + 1, "step": state["step"], "loss": loss.item(),
                      "lr": optimizer.param_groups[0]["lr"], "samples_per_s": rate}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            log(record)
    return total / max(1, count)


def fit(step_fn: StepFn, eval_fn: EvalFn, model: nn.Module, train_set: Dataset, val_set: Dataset,
        cfg: TrainConfig, run_dir: Path, meta: dict[str, str], resume: bool = False) -> dict[str, float]:
    """Train ``model`` on ``train_set``, evaluating on ``val_set`` each epoch; returns the last val metrics.

    The task supplies ``step_fn(model, batch, device, generator) -> (loss, samples)`` and
    ``eval_fn(model, data_set, device) -> metrics``. Only rank 0 writes to ``run_dir``.
    """
    rt = setup_runtime(cfg)
    torch.manual_seed(cfg.seed)
    model.to(rt.device)
    optimizer = build_optimizer(model, cfg)
    epoch0, step0 = 0, 0
    if resume:
        load_weights(model, run_dir / CHECKPOINT)
        epoch0, step0 = load_training_state(run_dir, optimizer)
    train_model = nn.parallel.DistributedDataParallel(model) if rt.distributed else model
    sampler = DistributedSampler(train_set, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=len(train_set) > cfg.batch_size * rt.world_size)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        return cfg.lr * lr_factor(step, total, warmup, cfg.schedule)

    metrics_path = run_dir / METRICS
    if rt.is_main and not resume:
        metrics_path.write_text("")

    def log(record: dict) -> None:
        if rt.is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    dtype = autocast_dtype(cfg, rt.device)
    state = {"epoch": epoch0, "step": step0}
    val: dict[str, float] = {}
    if epoch0 >= cfg.epochs and rt.is_main:
        print(f"already trained for {epoch0} epochs (train.epochs={cfg.epochs}); nothing to do")
    for epoch in range(epoch0, cfg.epochs):
        state["epoch"] = epoch
        sampler.set_epoch(epoch)
        generator = torch.Generator(rt.device).manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rt.rank)
        t0 = time.perf_counter()
        train_loss = train_one_epoch(train_model, loader, optimizer, step_fn, rt, cfg, state, lr_at, log, dtype,
                                     generator)
        seconds = time.perf_counter() - t0
        if rt.is_main:
            val = eval_fn(model, val_set, rt.device)
            log({"split": "val", "epoch": epoch + 1, "step": state["step"], "train_loss": train_loss,
                 "epoch_seconds": seconds, **val})
            save_checkpoint(run_dir, model, optimizer, epoch + 1, state["step"], meta)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items())
            print(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {train_loss:.4f}  val {shown}  ({seconds:.1f}s)",
                  flush=True)
        if rt.distributed:
            dist.barrier()
    if rt.distributed:
        dist.barrier()
    return val


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
