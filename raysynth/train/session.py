"""The thin layer between raysynth's train loops and Ray Train.

Every loop is a Ray Train ``train_loop_per_worker``; :class:`TrainSession` gives it rank, world
size, DDP wrapping, metric reports and checkpoint save/restore. ``num_workers=0`` is Ray Train's
local mode (the loop runs in this process); Ray does not persist checkpoints there, so a session
also mirrors its checkpoint to ``checkpoint_dir`` in the run directory and resumes from whichever
is newer.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from raysynth.config.schema import ScalingConfig
from raysynth.devices import threads_for, torch_threads
from raysynth.errors import RaysynthError, TrainingError, find_cause
from raysynth.progress import verbose
from raysynth.storage import RemotePath, ray_storage
from raysynth.storage import path as storage_path
from raysynth.train.checkpoint import read_state, restore_training, write_checkpoint
from raysynth.train.epoch_relay import EpochBar, driver_epoch, epoch_bar, epoch_relay

log = logging.getLogger("raysynth.train")


class TrainSession:
    """Rank-aware reporting and checkpointing for one train loop.

    ``checkpoint_every=0`` disables intermediate checkpoints (used inside search trials, where the
    trial is the unit of retry).
    """

    def __init__(self, checkpoint_dir: str | None = None, checkpoint_every: int = 0) -> None:
        self._local = _IN_PROCESS.get()
        if self._local is not None:  # run in-process by run_trainer (inside a Tune trial)
            self._train = None
            self.rank, self.world_size = 0, 1
        else:
            import ray.train

            self._train = ray.train
            ctx = ray.train.get_context()
            self.rank = ctx.get_world_rank()
            self.world_size = ctx.get_world_size()
        where = storage_path(checkpoint_dir) if checkpoint_dir else None
        # On shared storage Ray Train itself keeps the checkpoints reported below (and finds them
        # again on a resumed run of the same name); only the in-process loop mirrors them there.
        if isinstance(where, RemotePath) and self._train is not None:
            where = None
        self.checkpoint_dir = where
        self.checkpoint_every = checkpoint_every

    def dataset(self, name: str) -> Any:
        """This worker's shard of the dataset ``name`` given to :func:`run_trainer` (None when
        no such dataset was given)."""
        if self._local is not None:
            return self._local.get("datasets", {}).get(name)
        try:
            return self._train.get_dataset_shard(name)
        except (KeyError, AssertionError):  # local mode asserts, a worker group raises
            return None

    @property
    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device() if self.world_size > 1 else _local_device()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device and wrap in DDP when there are several workers."""
        if self.world_size > 1:
            import ray.train.torch

            return ray.train.torch.prepare_model(model)
        return model.to(self.device)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load the newest checkpoint (Ray's or the run directory's); returns the next epoch."""
        candidates: list[tuple[int, Callable[[], dict], str]] = []
        ray_ckpt = self._train.get_checkpoint() if self._train else None
        if ray_ckpt is not None:
            with ray_ckpt.as_directory() as d:
                state = read_state(d)
            if state is not None:
                candidates.append((state["epoch"], lambda: self._restore_ray(ray_ckpt, model, optimizer),
                                   "the Ray Train checkpoint"))
        # read_state recovers a checkpoint whose replacement a kill interrupted (NAME.old)
        if self.checkpoint_dir is not None and (state := read_state(self.checkpoint_dir)):
            folder = self.checkpoint_dir
            candidates.append(
                (state["epoch"], lambda: restore_training(folder, model, optimizer), str(folder))
            )
        if not candidates:
            return 0
        epoch, load, source = max(candidates, key=lambda c: c[0])
        load()
        log.info("resuming training at epoch %d from %s", epoch + 1, source)
        return epoch + 1

    @staticmethod
    def _restore_ray(ckpt: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        with ckpt.as_directory() as d:
            return restore_training(d, model, optimizer)

    def end_epoch(
        self,
        epoch: int,
        epochs: int,
        loss: float,
        model: torch.nn.Module,
        model_cfg: dict,
        optimizer: torch.optim.Optimizer,
        what: str,
    ) -> None:
        """Check the loss, and checkpoint + report on schedule and at the last epoch."""
        if not math.isfinite(loss):
            raise TrainingError(
                f"{what}: the loss became {loss} at epoch {epoch + 1} of {epochs}; training "
                "stopped. Lower the learning rate or check the inputs for NaN/inf values."
            )
        due = self.checkpoint_every and ((epoch + 1) % self.checkpoint_every == 0)
        self._progress(epoch, epochs, loss, report=not due)
        if not due:
            return
        metrics = {"epoch": epoch, "epochs": epochs, "loss": loss}
        state = {"epoch": epoch, "loss": loss}
        if self.rank == 0:
            if self.checkpoint_dir is not None:
                write_checkpoint(self.checkpoint_dir, model, model_cfg, optimizer, state)
            if self._train is None:
                return
            with tempfile.TemporaryDirectory() as tmp:
                folder = write_checkpoint(Path(tmp) / "ckpt", model, model_cfg, optimizer, state)
                from ray.train import Checkpoint

                self._train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)))
        else:
            self._train.report(metrics)

    def _progress(self, epoch: int, epochs: int, loss: float, report: bool) -> None:
        """The epoch on the driver's bar: shown directly by a loop in the driver (Ray Train's
        local mode); else (``report``: an epoch without a checkpoint report) every rank reports
        it, as a report is a barrier, and rank 0's is relayed (``epoch_relay``)."""
        if not driver_epoch(epoch, epochs, loss) and report and self._train is not None:
            self._train.report({"epoch": epoch, "epochs": epochs, "loss": loss})

    def report(self, metrics: dict[str, Any]) -> None:
        """The final report. Ray Train V2 keeps only metrics attached to a checkpoint, so rank 0
        attaches a small one (``metrics.json``); the other ranks report nothing but the barrier."""
        if self._local is not None:
            self._local["metrics"] = metrics
            return
        if self.rank != 0:
            self._train.report({})
            return
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
            self._train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


# Set while run_trainer runs a loop in this very process (see run_trainer).
_IN_PROCESS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("in_process", default=None)


def _in_tune_trial() -> bool:
    """Whether this code runs inside a Ray Tune trial. Outside one Ray answers None with a
    UserWarning ("`get_trial_id` is meant to only be called inside ..."): asking is the point
    here, so the warning is not shown."""
    try:
        from ray.tune import get_context

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return get_context().get_trial_id() is not None
    except Exception:
        return False


def _local_device() -> torch.device:
    from raysynth.devices import resolve_device

    return resolve_device("auto")


def workers(scaling: ScalingConfig) -> int:
    """``train.num_workers``, except that ``use_gpu`` with ``num_workers=0`` on a driver without
    a usable GPU (the CPU head of every cluster/ config) trains on one Ray Train worker, which
    Ray places on a GPU node, instead of on the driver's CPU. (Not a config error: inside Tune
    trials, which hold their own GPU, ``num_workers=0`` is what keeps training in the trial.)"""
    from raysynth.devices import cuda_available

    if scaling.use_gpu and scaling.num_workers == 0 and not cuda_available():
        log.info("train.use_gpu with num_workers=0 and no GPU on the driver: one GPU worker")
        return 1
    return scaling.num_workers


def run_trainer(
    loop: Callable[[dict], None],
    loop_config: dict[str, Any],
    scaling: ScalingConfig,
    name: str,
    storage_path: str | Path | RemotePath,
    datasets: dict[str, Any] | None = None,
    split: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``loop`` under a Ray Train ``TorchTrainer``; returns the last reported metrics.
    ``datasets`` go to ``TorchTrainer(datasets=...)``, those in ``split`` in equal shards (DDP
    stays in lockstep), the others whole to every worker (:meth:`TrainSession.dataset`).

    Workers' failures are retried ``scaling.max_failures`` times, each retry resuming from the
    last checkpoint. ``num_workers=0`` runs in-process (Ray Train local mode); inside a Ray
    Tune trial, where Ray Train's local mode is not available, the loop is called directly with
    the same session semantics (the trial is then the unit of retry). In-process loops run with
    the driver's torch threads (``train.driver_threads``; a trial's: its own) and the previous
    thread count is restored afterwards.
    """
    if scaling.num_workers == 0 and _in_tune_trial():
        box: dict[str, Any] = {"metrics": {}, "datasets": dict(datasets or {})}
        token = _IN_PROCESS.set(box)
        try:
            with torch_threads(loop_config.get("threads") or torch.get_num_threads()):
                loop(loop_config)
        finally:
            _IN_PROCESS.reset(token)
        return dict(box["metrics"])
    with epoch_bar(name, in_driver=scaling.num_workers == 0) as bar:
        if scaling.num_workers == 0:  # the loop runs in the driver: on its cores, restored
            threads = threads_for(scaling.driver_threads)
            with torch_threads(threads):
                return _fit(loop, {**loop_config, "threads": threads}, scaling, name,
                            storage_path, datasets, split)
        return _fit(loop, loop_config, scaling, name, storage_path, datasets, split, bar)


def _fit(
    loop: Callable[[dict], None],
    loop_config: dict[str, Any],
    scaling: ScalingConfig,
    name: str,
    storage_path: str | Path | RemotePath,
    datasets: dict[str, Any] | None = None,
    split: tuple[str, ...] = (),
    bar: EpochBar | None = None,
) -> dict[str, Any]:
    from ray.train import DataConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchConfig, TorchTrainer

    storage, storage_fs = ray_storage(storage_path)  # the run directory's location, or s3://…
    relay, stop_relay = epoch_relay(bar) if bar is not None else (None, None)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        datasets=datasets or None,
        dataset_config=DataConfig(datasets_to_split=[n for n in split if n in (datasets or {})]),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=RayScaling(
            num_workers=workers(scaling),
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            # "Reported metrics: …" and the like only with --verbose
            logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
            callbacks=[relay] if relay is not None else None,
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors; surface ours (bad data, NaN) unchanged
        cause = find_cause(e, RaysynthError)
        if cause is not None:
            raise cause from e
        raise
    finally:
        if stop_relay is not None:
            stop_relay()
    return dict(result.metrics or {})
