"""Several processes training one model: torchrun starts them, DistributedDataParallel keeps them in step.

    torchrun --nproc_per_node=2 -m vitlib train --preset cpu

torchrun starts N copies of the command and tells each its RANK (0..N-1), LOCAL_RANK (its GPU on this
machine) and WORLD_SIZE (N). `start` joins them into one process group (NCCL between GPUs, gloo on the
CPU); without torchrun there is one process, no group, and training runs exactly as before.

The rule vitlib uses: the preset's batch is the global batch. N processes split every step's batch (each
takes batch_size / N images from its own shard of the training images), DDP averages their gradients, so
every step is one step of the same recipe: same batch, same learning rate, same number of steps. What N
changes is who computes what, the random crops each image gets, and BatchNorm's batch statistics (a conv stem's
BatchNorm normalises over each process's batch_size / N images; its running statistics are rank 0's).

A process that dies or stops answering: on the CPU (gloo) the others raise DistributedError, which says which
epoch last.pt holds; torchrun then stops them all. On GPUs (NCCL) the watchdog ends a process whose collective
times out, and torchrun stops the rest: the run ends either way, with torchrun's report of which rank failed.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import pickle
import re
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT_ENV = "VITLIB_DIST_TIMEOUT"  # seconds a process waits for the others before it gives up (default 600)


class DistributedError(RuntimeError):
    """Another process of the run died or stopped answering; the message says where the run stands."""


class Stopped(DistributedError):
    """torchrun stopped this process (SIGTERM), as it does to all the others when one of them fails."""


def lost(error: BaseException) -> bool:
    """Whether `error` says another process is gone (a closed connection), silent (the group's timeout), or that
    torchrun stopped this one. gloo reports its timeout as a plain RuntimeError, so its text is read too."""
    if isinstance(error, (dist.DistError, Stopped)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in text for words in ("timed out", "timeout", "connection closed", "connection reset", "broken pipe"))


def _stopped(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not cut the message short
    raise Stopped("torchrun stopped this process: another process of the run failed")


def reason(error: BaseException) -> str:
    """The first line of a collective's error, which is all a person needs of it."""
    text = str(error).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else ""  # gloo's [source.cc:line] prefix
    return line[:200] or type(error).__name__


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes: rank `rank` of `size`, GPU `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, writes history and checkpoints, and holds the run folder."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """The part of `items` this process holds: every size-th one from its rank (all of them for one process)."""
        return items[self.rank :: self.size]

    def print(self, *args, **kwargs) -> None:
        """print, on rank 0 alone (one process: always)."""
        if self.main:
            print(*args, **kwargs)

    def once(self, fn):
        """`fn()` on rank 0 alone, its result (or its exception) handed to every process: see from_main."""
        return from_main(fn, self)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over every process, in place: see total."""
        return total(value, self)

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order: see gather."""
        return gather(obj, self)


SINGLE = World()


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> tuple[World, torch.device]:
    """Join the run's process group (once; NCCL on CUDA, gloo otherwise) and return this process's World and
    the device it trains on (its own GPU, cuda:LOCAL_RANK, on CUDA). One process: (SINGLE, device)."""
    if not launched():
        return SINGLE, device
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type not in ("cuda", "cpu"):
        raise DistributedError(f"torchrun trains on CUDA GPUs (NCCL) or on the CPU (gloo), not on {device.type}: "
                               "add --device cpu, or run without torchrun")
    if device.type == "cuda" and world.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"process {world.rank} wants GPU {world.local_rank}, and this machine has "
                               f"{torch.cuda.device_count()}: start at most that many processes per node")
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        seconds = float(os.environ.get(TIMEOUT_ENV, 600))
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=seconds),
                                device_id=device if cuda else None)
        atexit.register(stop)
        signal.signal(signal.SIGTERM, _stopped)  # say where the run stands rather than vanish
    return world, device


def stop() -> None:
    """Leave the process group (at exit; safe to call twice). The run has said its last line by now: a SIGTERM
    from torchrun from here on just ends the process, instead of raising Stopped into the exit (a traceback
    after the one-line error)."""
    if signal.getsignal(signal.SIGTERM) is _stopped:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The model as this process trains it: itself alone, or in DistributedDataParallel among several."""
    if world.size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def same_buffers(model: nn.Module, world: World) -> None:
    """Give every process rank 0's buffers (BatchNorm's running statistics): during an epoch each process updates
    them from its own part of the batch, so before validating and saving they must be made one again."""
    if world.size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def total(value: torch.Tensor, world: World) -> torch.Tensor:
    """`value` summed over every process (in place); itself for one process."""
    if world.size > 1:
        dist.all_reduce(value)
    return value


def gather(obj, world: World) -> list:
    """Every process's `obj`, in rank order (picklable objects; for results, not for tensors on the hot path)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def from_main(fn, world: World):
    """Call `fn()` on rank 0 alone and hand its result (or its exception) to every process.

    For what must happen once (claim the run folder, read the checkpoint to resume): every process then
    continues, or raises the same error, together; none is left waiting for the others.
    """
    if world.size == 1:
        return fn()
    box = [None]
    if world.main:
        try:
            box[0] = ("ok", fn())
            pickle.dumps(box[0])  # what cannot travel must fail here, on rank 0, not leave the others waiting
        except BaseException as e:  # noqa: BLE001 - every rank re-raises it (Ctrl-C included)
            try:
                pickle.dumps(e)
            except Exception:  # noqa: BLE001
                e = DistributedError(f"{type(e).__name__}: {e}")
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def fingerprint(model: nn.Module | dict) -> str:
    """A hash of the model's weights (or of a dict of named tensors), bit for bit, for comparing replicas."""
    h = hashlib.sha256()
    for name, value in (model if isinstance(model, dict) else model.state_dict()).items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def in_step(model: nn.Module, world: World) -> bool:
    """Whether every process holds exactly the weights this one holds (DDP's promise, checked)."""
    return len(set(gather(fingerprint(model), world))) == 1
