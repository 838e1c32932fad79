"""``sleepstream fit`` on two CPU processes (DDP over gloo), started as a user starts it.

Lightning's launcher starts the second process again from the command line; the test runs the
installed ``sleepstream`` command in a subprocess, so that relaunch is the real one.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sleepstream.models.datamodule import SleepDataModule
from sleepstream.models.training import build_cli

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "sleep_wake.yaml"
SUBJECTS = ("3509524", "5132496")  # the two shortest nights
BATCH = 4
TINY = [
    "--model.net.init_args.hidden_size",
    "8",
    "--data.crop_epochs",
    "60",
    "--data.batch_size",
    str(BATCH),
    "--data.missing_counts_copies",
    "0",
    "--trainer.max_epochs",
    "1",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
]
"""A tiny GRU, short crops and one epoch: the test is about the processes, not the model."""


@pytest.fixture(scope="module")
def two_nights(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A data folder holding two real subjects (links to the real files), and the number of
    training crops the config draws from them. Their features are computed here, before the
    processes start, so the two ranks read them from the cache instead of both computing them."""
    folder = tmp_path_factory.mktemp("two-nights")
    for kind in ("labels", "heart_rate", "counts"):
        (folder / kind).mkdir()
        for subject in SUBJECTS:
            for file in (data_dir / kind).glob(f"{subject}_*"):
                (folder / kind / file.name).symlink_to(file)
    cli = build_cli(["-c", str(CONFIG), *TINY, "--data.data_dir", str(folder)], run=False)
    datamodule = cli.datamodule
    assert isinstance(datamodule, SleepDataModule)
    datamodule.setup("fit")
    return folder, len(datamodule.train_dataloader().dataset)  # type: ignore[arg-type]


@pytest.mark.slow
def test_fit_runs_on_two_cpu_processes_with_ddp(
    two_nights: tuple[Path, int], tmp_path: Path
) -> None:
    """Both ranks join the gloo process group, the training crops are split between them (rank
    0 steps through half of them), and rank 0 writes the checkpoint."""
    folder, n_crops = two_nights
    command = Path(sys.executable).with_name("sleepstream")
    assert command.exists(), f"the sleepstream command is not installed beside {sys.executable}"
    argv = [str(command), "-v", "fit", "-c", str(CONFIG), *TINY, "--data.data_dir", str(folder)]
    argv += ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    argv += ["--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path)]
    launcher_env = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_env}
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a shared machine: one thread each
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in done.stderr, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in tmp_path.rglob("*"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0
    # A DistributedSampler gives each of the two ranks half of the crops (padded to equal size).
    assert state["global_step"] == math.ceil(math.ceil(n_crops / 2) / BATCH)
    assert state["global_step"] < math.ceil(n_crops / BATCH), "the crops were not split"
    assert done.stdout == ""  # fit prints no result: stdout stays empty for pipes
