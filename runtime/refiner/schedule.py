"""A small pipeline scheduler: items (stage-1 chunks) pass through stages (generate -> refine -> decode) in order,
each stage on its own CUDA stream, so stage j works on item k while stage j - 1 works on item k + 1.

Schedule. Ticks t = 0, 1, ...: in tick t stage j runs item t - j. Within a tick the deepest stage is issued first
(decode k - 2, then refine k - 1, then generate k): a stage whose host code blocks (stage 1 of `WorldSession`
synchronises the device at the end of every chunk) then blocks only after the other stages' kernels are queued,
so the three run concurrently on the GPU and each tick costs about the slowest stage, not the sum. Stage j on
item k waits (on the GPU, through an event) for stage j - 1 on item k, and a stage's own state is only ever
touched from its own stream, in item order. Results reach the `sink` (host side: MP4 writer) in item order, once
the item's last event has completed.

On the CPU there are no streams: `pipelined=False` (the default there) runs item by item, stage by stage;
`pipelined=True` runs the same tick order inline, which is how the tests check the ordering and dependency logic.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Stage:
    name: str
    fn: Callable[[int, Any], Any]
    """(item index, output of the previous stage for that item; the item index for stage 0) -> output."""


@dataclass
class PipelineStats:
    pipelined: bool
    total_ms: float = 0.0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    """Per stage, per item: milliseconds of the stage's own work (CUDA events on its stream, wall time on CPU)."""
    order: list[tuple[int, str, int]] = field(default_factory=list)
    """(tick, stage, item) in issue order."""

    @property
    def sum_of_stages_ms(self) -> float:
        return sum(sum(v) for v in self.stage_ms.values())

    def summary(self) -> dict:
        return {"pipelined": self.pipelined, "total_ms": round(self.total_ms, 2),
                "sum_of_stages_ms": round(self.sum_of_stages_ms, 2),
                "stage_ms": {k: [round(x, 2) for x in v] for k, v in self.stage_ms.items()}}


class InlineBackend:
    """No streams (CPU): events are (stage, item) tokens so dependencies can still be checked."""

    def stream(self, stage: int):
        return contextlib.nullcontext()

    def record(self, stage: int, item: int):
        return (stage, item)

    def wait(self, stage: int, event) -> None:
        pass

    def host_wait(self, event) -> None:
        pass

    def timer_start(self, stage: int):
        return time.perf_counter()

    def timer_stop(self, stage: int, start) -> Callable[[], float]:
        ms = 1e3 * (time.perf_counter() - start)
        return lambda: ms

    def hand_over(self, value, stage: int) -> None:
        pass

    def finish(self) -> None:
        pass


class CudaBackend(InlineBackend):
    """One CUDA stream per stage; events order the stages on the GPU, not on the host."""

    def __init__(self, device, num_stages: int) -> None:
        self.device = torch.device(device)
        self.streams = [torch.cuda.Stream(self.device) for _ in range(num_stages)]
        # Work queued before the pipeline (model loading, the sink's K/V) happens before every stage.
        for s in self.streams:
            s.wait_stream(torch.cuda.current_stream(self.device))

    def stream(self, stage: int):
        return torch.cuda.stream(self.streams[stage])

    def record(self, stage: int, item: int):
        event = torch.cuda.Event()
        event.record(self.streams[stage])
        return event

    def wait(self, stage: int, event) -> None:
        self.streams[stage].wait_event(event)

    def host_wait(self, event) -> None:
        event.synchronize()

    def timer_start(self, stage: int):
        start = torch.cuda.Event(enable_timing=True)
        start.record(self.streams[stage])
        return start

    def timer_stop(self, stage: int, start) -> Callable[[], float]:
        end = torch.cuda.Event(enable_timing=True)
        end.record(self.streams[stage])
        return lambda: start.elapsed_time(end)

    def hand_over(self, value, stage: int) -> None:
        """Tensors made on one stream and used on another: tell the allocator, or it may reuse their memory
        while the consumer's kernels are still queued."""
        for t in _tensors(value):
            if t.is_cuda:
                t.record_stream(self.streams[stage])

    def finish(self) -> None:
        for s in self.streams:
            s.synchronize()
        torch.cuda.current_stream(self.device).wait_stream(self.streams[-1])


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class PipelineScheduler:
    """Runs `n` items through `stages`; see the module docstring for the schedule."""

    def __init__(self, stages: Sequence[Stage], *, device=None, pipelined: bool | None = None,
                 backend: InlineBackend | None = None) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = list(stages)
        device = torch.device(device) if device is not None else torch.device("cpu")
        cuda = device.type == "cuda"
        self.pipelined = cuda if pipelined is None else bool(pipelined)
        self.backend = backend or (CudaBackend(device, len(stages)) if cuda else InlineBackend())

    def run(self, n: int, sink: Callable[[int, Any], None]) -> PipelineStats:
        """Process items 0..n-1; `sink(k, output of the last stage)` is called in item order."""
        b = self.backend
        s_count = len(self.stages)
        stats = PipelineStats(self.pipelined, stage_ms={s.name: [] for s in self.stages})
        outputs: dict[tuple[int, int], Any] = {}     # (stage, item) -> output, until the next stage takes it
        events: dict[tuple[int, int], Any] = {}
        timers: list[tuple[str, Callable[[], float]]] = []
        t0 = time.perf_counter()

        def run_stage(tick: int, j: int, k: int) -> None:
            stage = self.stages[j]
            if j == 0:
                value = k
            else:
                if (j - 1, k) not in events:
                    raise RuntimeError(f"pipeline: {stage.name} of item {k} issued before "
                                       f"{self.stages[j - 1].name} of it")
                b.wait(j, events.pop((j - 1, k)))
                value = outputs.pop((j - 1, k))
                b.hand_over(value, j)
            stats.order.append((tick, stage.name, k))
            with b.stream(j):
                start = b.timer_start(j)
                out = stage.fn(k, value)
                timers.append((stage.name, b.timer_stop(j, start)))
            outputs[(j, k)] = out
            events[(j, k)] = b.record(j, k)

        def deliver(k: int) -> None:
            b.host_wait(events.pop((s_count - 1, k)))
            sink(k, outputs.pop((s_count - 1, k)))

        if self.pipelined:
            for tick in range(n + s_count - 1):
                for j in reversed(range(s_count)):
                    k = tick - j
                    if 0 <= k < n:
                        run_stage(tick, j, k)
                done = tick - (s_count - 1)
                if 0 <= done < n:
                    deliver(done)
        else:
            for k in range(n):
                for j in range(s_count):
                    run_stage(k, j, k)
                deliver(k)
        b.finish()
        stats.total_ms = 1e3 * (time.perf_counter() - t0)
        for name, read in timers:
            stats.stage_ms[name].append(read())
        return stats
