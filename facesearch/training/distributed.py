"""Training on several processes (``torchrun``): one process per GPU with NCCL, or CPU processes with gloo.

``torchrun --nproc-per-node N -m facesearch train ...`` (or ``--nnodes``/``--rdzv-endpoint`` across machines)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous; :func:`from_env` joins the process group.
Then, at every step:

- each rank samples its own P x K identities: the ranks draw the same global P*W x K batch (the sampler's
  generator has the same seed everywhere) and each keeps its slice, so the identities of one step never
  repeat across ranks and W ranks of P see exactly what one process of P*W sees;
- the contrastive loss sees the global batch: :meth:`Dist.gather` all-gathers the embeddings and puts the
  rank's own tensor back in its slot, so the gradient flows to the local part only; the local gradients
  are then summed across ranks (:meth:`Dist.sum_gradients`), which is the gradient of the global loss;
- rank 0 decides what depends on the clock (the learning rate under a time budget, when the budget is
  spent) and broadcasts it, so every rank takes the same step and stops at the same one;
- rank 0 alone writes checkpoints, logs, calibrates and saves the model; a resume reads the checkpoint on
  every rank (several machines need it on a shared filesystem). The checkpoint keeps every rank's random
  generators (each rank draws its own augmentation), gathered to rank 0 when it is written, and each rank of
  a resume continues its own, so a run stopped and resumed ends with the weights of one never stopped
  (tests/integration/test_train_distributed.py); rank 0 decides when a checkpoint is due.

Batch norm: on CUDA its layers become ``SyncBatchNorm`` (statistics over the global batch); on CPU (gloo)
torch has no SyncBatchNorm, so each rank normalises with its own batch's statistics, which is the one way
two CPU ranks differ from one process of the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    """This process's place in the group (``world`` 1: no group, every method a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs, calibrates and saves."""
        return self.rank == 0

    def gather(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch, in rank order: every rank's embeddings (this rank's own tensor in its slot, so
        gradients reach it; the others' are constants here) and labels. Every rank's batch has one shape."""
        if not self.active:
            return emb, labels
        import torch.distributed as tdist

        parts = [torch.empty_like(emb) for _ in range(self.world)]
        tdist.all_gather(parts, emb.detach().contiguous())
        parts[self.rank] = emb
        labs = [torch.empty_like(labels) for _ in range(self.world)]
        tdist.all_gather(labs, labels.contiguous())
        return torch.cat(parts), torch.cat(labs)

    def sum_gradients(self, params) -> None:
        """Sum the parameters' gradients over the ranks, in one flat buffer (one collective a step)."""
        if not self.active:
            return
        import torch.distributed as tdist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def from_main(self, *values: float) -> list[float]:
        """Rank 0's values, on every rank (the learning-rate factor, whether the time budget is spent)."""
        if not self.active:
            return list(values)
        import torch.distributed as tdist

        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        tdist.broadcast(t, 0)
        return t.tolist()

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` in one process)."""
        if not self.active:
            return [obj]
        import torch.distributed as tdist

        out = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Every rank starts from rank 0's weights and buffers."""
        if not self.active:
            return
        import torch.distributed as tdist

        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                tdist.broadcast(t.data, 0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as tdist

            tdist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def world_size_from_env(environ=os.environ) -> int:
    try:
        return int(environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def from_env(device: str, environ=os.environ) -> Dist:
    """Join the process group ``torchrun`` set up (``WORLD_SIZE`` > 1), else a single process. NCCL when this
    run trains on CUDA, gloo on the CPU. The device each rank trains on is :func:`rank_device`."""
    world = world_size_from_env(environ)
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    rank, local = int(environ["RANK"]), int(environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend)
    return Dist(rank, world, local, backend)


def rank_device(device: str, dist: Dist) -> str:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` under NCCL; else as asked."""
    if dist.active and dist.backend == "nccl" and device in ("auto", "cuda"):
        return f"cuda:{dist.local_rank}"
    if dist.active and dist.backend == "gloo" and device == "auto":
        return "cpu"
    return device
