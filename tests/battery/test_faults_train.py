"""Reliability battery, faults during ``textsam train`` (child processes): SIGINT/SIGTERM mid-run write the
checkpoint of the last completed step and say how to resume; SIGKILL mid-run leaves no half-written file under
a final name; ``--resume auto`` then finishes with weights byte-equal to an uninterrupted run's.

Data: 6 synthetic images; model ``tiny_train`` (tests/tiny_train.py, registered in the child processes) with a
2-layer CLIP, text recipe (so a text head is written),
30 steps on the CPU with ``deterministic = true`` and one thread. A signal lands mid-run because the test waits
until ``log.jsonl`` shows a given step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ..tiny_train import child_command
from .harness import Outcome, check

STEPS = 30
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
WEIGHTS = ("model.safetensors", "text_head.safetensors")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, clip_spec: str) -> dict[str, object]:
    """The config and the weights of an uninterrupted run."""
    from textsam.data import synthetic

    folder = tmp_path_factory.mktemp("train_faults")
    synthetic.generate(folder / "data", seed=0, num_train=6, num_val=2, num_test=0)
    cfg = folder / "run.toml"
    cfg.write_text(
        f'model = "tiny_train"\nrecipe = "text"\nclip = "{clip_spec}"\nbatch_size = 2\nsteps = {STEPS}\n'
        'progress = false\nlog_every = 1\ncheckpoint_every = 4\nkeep_checkpoints = 2\ndeterministic = true\n'
        '[optim]\nwarmup_steps = 2\nlr = 1e-3\n[text_head]\nprojector_hidden_dim = 64\n[loss]\ncorrection_clicks = 1\n'
        f'[data]\nroot = "{folder / "data"}"\neval_samples = 2\n'
    )
    ref = folder / "reference"
    done = _run(["train", cfg, "--out", ref])
    assert done.rc == 0, done.err[-3000:]
    return {"cfg": cfg, "weights": {n: (ref / n).read_bytes() for n in WEIGHTS}}


def _run(argv: list[object], timeout: float = 300) -> Outcome:
    """``textsam ARGV`` in a child process (``tiny_train`` registered there)."""
    proc = subprocess.run(child_command(*argv), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **ENV))
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def _start(cfg: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(child_command("train", cfg, "--out", out, *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **ENV))


def _logged_step(log: Path) -> int:
    step = 0
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except ValueError:  # a line being written
            pass
    return step


def _wait_for_step(proc: subprocess.Popen[str], log: Path, step: int, timeout: float = 240) -> None:
    """Return once ``log`` shows ``step`` (the run is mid-way); fail if the run ends first."""
    end = time.monotonic() + timeout
    while _logged_step(log) < step:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before step {step}:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no step {step} in {log} after {timeout} s")
        time.sleep(0.02)


def _no_half_files(out: Path) -> list[int]:
    """Every file under a final name is complete; returns the steps of the checkpoints."""
    steps = []
    for path in sorted((out / "checkpoints").glob("step_*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["step"] == int(path.stem.removeprefix("step_")), path
        steps.append(state["step"])
    json.loads((out / "train_config.json").read_text())
    for name in WEIGHTS:
        if (out / name).exists():
            load_file(str(out / name))
    lines = (out / "log.jsonl").read_text().splitlines()
    for line in lines[:-1]:  # only the last line may have been cut by the kill (resume drops it)
        json.loads(line)
    return steps


def _resume_and_compare(case: str, cfg: Path, out: Path, reference: dict[str, bytes]) -> None:
    again = _run(["train", cfg, "--out", out, "--resume", "auto"])

    def same_weights() -> None:
        for name in WEIGHTS:
            assert (out / name).read_bytes() == reference[name], f"{name} differs from the uninterrupted run's"
        assert not list(out.rglob("*.tmp"))
        steps = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()
                 if "loss" in json.loads(ln)]
        assert steps == list(range(1, STEPS + 1))

    check(f"train-fault:{case}:resumed", again, rc=0, extra=same_weights)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_mid_run_checkpoints_the_last_step_and_resume_is_byte_equal(sig: signal.Signals,
                                                                         setup: dict[str, object],
                                                                         tmp_path: Path) -> None:
    cfg, out = setup["cfg"], tmp_path / "run"
    proc = _start(cfg, out)  # type: ignore[arg-type]
    _wait_for_step(proc, out / "log.jsonl", 5)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    outcome = Outcome(proc.returncode, stdout, stderr)

    def checkpointed() -> None:
        line = [ln for ln in stderr.splitlines() if ln.startswith("textsam: error: interrupted")]
        assert len(line) == 1, stderr
        step = int(line[0].split("after step ")[1].split(",")[0])
        assert 5 <= step < STEPS
        assert f"--out {out} --resume auto" in line[0] and f"step_{step:07d}.pt" in line[0]
        assert _no_half_files(out)[-1] == step  # the last completed step, not only the last periodic one
        assert not (out / "model.safetensors").exists() and not list(out.rglob("*.tmp"))

    check(f"train-fault:{sig.name.lower()}", outcome, rc=128 + sig, words=["interrupted", "--resume auto"],
          extra=checkpointed)
    _resume_and_compare(sig.name.lower(), cfg, out, setup["weights"])  # type: ignore[arg-type]


def test_sigkill_mid_run_leaves_no_half_written_file_and_resume_is_byte_equal(setup: dict[str, object],
                                                                             tmp_path: Path) -> None:
    """Killed twice (just after step 8's log line, as its checkpoint is written; then mid-way through the
    resumed run), resumed each time: the final weights equal the uninterrupted run's, byte for byte."""
    cfg, out = setup["cfg"], tmp_path / "run"
    for at, args in ((8, ()), (19, ("--resume", "auto"))):
        proc = _start(cfg, out, *args)  # type: ignore[arg-type]
        _wait_for_step(proc, out / "log.jsonl", at)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        steps = _no_half_files(out)
        assert all(s % 4 == 0 and s <= STEPS for s in steps)
        assert not (out / "model.safetensors").exists()
    _resume_and_compare("sigkill", cfg, out, setup["weights"])  # type: ignore[arg-type]
