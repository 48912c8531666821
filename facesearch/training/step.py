"""One optimisation step (forward, contrastive loss, backward, AdamW), eager or as a CUDA graph."""

from __future__ import annotations

import torch

from facesearch.losses import ContrastiveLoss, DistilledContrastiveLoss
from facesearch.training.distributed import Dist
from facesearch.training.options import TrainingError


class TrainStep:
    """One optimisation step: forward (autocast on CUDA), contrastive loss, backward, AdamW.

    ``TrainStep(...)(x, labels)`` returns ``(loss, embeddings)``, device tensors (nothing waits on the GPU).
    With distillation, ``TrainStep(...)(x, labels, teacher)``: the loss is then a
    :class:`~facesearch.losses.DistilledContrastiveLoss`, and ``x`` may have more rows than ``labels``
    (unlabelled images, after the labelled ones). ``model`` maps ``x`` to unit embeddings: the encoder,
    or, with frozen blocks, :class:`~facesearch.training.freeze.TrainForward` (``x`` then may be the
    frozen blocks' cached outputs).

    With ``cuda_graph`` the first :attr:`WARMUP` calls run eagerly on a side stream (real steps, as CUDA
    graph capture requires), the next one captures the whole step into a CUDA graph, and every call from
    then on copies its batch into the graph's fixed input tensors and replays it. The kernels are the same;
    what goes away is launching each of a MobileNetV2 step's several hundred kernels from Python, which
    bounds a small batch on a fast GPU. The returned tensors are then the graph's own outputs: read them
    before the next call. Needs fixed batch shapes (a P x K batch always has P*K images), a capturable
    optimiser (:func:`make_optimizer`) and no fp16 gradient scaler.

    With ``dist`` (several processes, :mod:`facesearch.training.distributed`) the loss is taken over the
    global batch (every rank's embeddings gathered, gradients flowing to this rank's part) and the
    gradients are summed across ranks before the optimiser's step: every rank takes the step one process
    with the whole global batch would take. The loss returned is the global batch's.
    """

    WARMUP = 3

    def __init__(self, model: torch.nn.Module, loss_fn: ContrastiveLoss | DistilledContrastiveLoss,
                 opt: torch.optim.Optimizer,
                 amp_dtype: torch.dtype | None, device: torch.device, cuda_graph: bool = False,
                 dist: Dist | None = None):
        self.dist = dist if dist is not None else Dist()
        if cuda_graph and self.dist.active:
            raise TrainingError("cuda_graph does not run under torchrun yet (its collectives are not captured)")
        if cuda_graph:
            if device.type != "cuda":
                raise TrainingError("cuda_graph needs a CUDA device")
            if amp_dtype == torch.float16:
                raise TrainingError("cuda_graph needs bf16 or fp32: fp16's gradient scaler syncs every step")
            if not all(g.get("capturable") and torch.is_tensor(g["lr"]) for g in opt.param_groups):
                raise TrainingError("cuda_graph needs make_optimizer(..., capturable=True)")
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.amp_dtype, self.device, self.cuda_graph = amp_dtype, device, cuda_graph
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.calls = 0
        self._graph = None
        self._side = None
        self._x = self._y = self._t = self._out = None

    def set_lr(self, factor: float) -> None:
        """Every group's learning rate to ``base_lr * factor`` (in place when it is a device tensor)."""
        for g in self.opt.param_groups:
            lr = g["base_lr"] * factor
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        # autocast's weight-cast cache must be off while capturing: cached casts would outlive the graph
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None, cache_enabled=not self.cuda_graph):
            emb = self.model(x)
        if self.dist.active:
            if t is not None:
                raise TrainingError("distillation does not run under torchrun yet")
            loss = self.loss_fn(*self.dist.gather(emb.float(), y))
        else:
            loss = self.loss_fn(emb.float(), y) if t is None else self.loss_fn(emb.float(), y, t)
        self.scaler.scale(loss).backward()
        self.dist.sum_gradients(p for g in self.opt.param_groups for p in g["params"])
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss, emb

    def __call__(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        if not self.cuda_graph:
            self.opt.zero_grad(set_to_none=True)
            return self._forward_backward(x, y, t)
        # torch.cuda.graph captures on the *current* device's stream: make it the model's (cuda:1 ...)
        with torch.cuda.device(self.device):
            return self._graph_step(x, y, t)

    def _graph_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._x is None:
            self._x, self._y = torch.empty_like(x), torch.empty_like(y)
            self._t = None if t is None else torch.empty_like(t)
        if x.shape != self._x.shape or y.shape != self._y.shape or (t is None) != (self._t is None) or (
                t is not None and t.shape != self._t.shape):
            raise TrainingError(f"a CUDA graph step needs one batch shape: got {tuple(x.shape)}, "
                                f"captured {tuple(self._x.shape)}")
        self._x.copy_(x)
        self._y.copy_(y)
        if t is not None:
            self._t.copy_(t)
        if self._graph is None and self.calls <= self.WARMUP:
            if self._side is None:
                self._side = torch.cuda.Stream(self.device)
            side = self._side
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                out = self._forward_backward(self._x, self._y, self._t)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self._graph is None:
            self.opt.zero_grad(set_to_none=True)  # the graph allocates the gradients itself
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._out = self._forward_backward(self._x, self._y, self._t)
            self._graph = graph  # capture records only: this call's batch runs in the replay below
        self._graph.replay()
        return self._out
