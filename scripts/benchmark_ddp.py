"""DDP scaling: train.py's own it/s on one GPU and per rank on N GPUs, for one option file.

    python scripts/benchmark_ddp.py -opt options/train/EDSR/train_EDSR_Mx2.yml --gpus 2 \
        [-o compile=reduce-overhead -o amp=bf16 ...] [--iters 3000] [--skip 1] [--json FILE]

Runs ``python train.py`` (one process) and then ``torchrun --standalone --nproc_per_node N
train.py`` with the same options and overrides, each for ``--iters`` iterations, validating once
at the end (sharded across the ranks) and saving nothing in between. The rate of a run is the
median of the it/s that train.py logs every ``logger.print_freq`` iterations, leaving out the first
``--skip`` intervals (compilation, autotuning, the workers' first batches). With ``--pin`` every
process is held to its own share of the physical cores (the one-GPU run to the first), launched by this
script with torchrun's environment variables instead of torchrun. Scaling is
``N * per-rank rate / one-GPU rate``: N for perfect scaling, since every rank trains on its own
``batch_size_per_gpu``. The multi-GPU run must also end with identical weights on every rank
(train.py checks it and logs "weights identical on all N ranks: True").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_report import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_RATE = re.compile(r"iter (\d+)/\d+\s+([0-9.]+) it/s")
_IDENTICAL = re.compile(r"weights identical on all (\d+) ranks: (True|False)")


def parse_rates(log: str) -> list[tuple[int, float]]:
    """``(iteration, it/s)`` of every progress line train.py printed."""
    return [(int(it), float(rate)) for it, rate in _RATE.findall(log)]


def run_rate(log: str, skip: int) -> float:
    """The median logged rate after the first ``skip`` intervals."""
    rates = [rate for _, rate in parse_rates(log)][skip:]
    if not rates:
        raise RuntimeError("train.py logged no it/s after the skipped intervals; raise --iters or lower "
                           "logger.print_freq (-o logger.print_freq=N)")
    return statistics.median(rates)


def replicas_identical(log: str) -> bool | None:
    found = _IDENTICAL.findall(log)
    return found[-1][1] == "True" if found else None


def command(opt: str, overrides: list[str], gpus: int, iters: int, print_freq: int, root: Path,
            numa_binding: str | None = None) -> list[str]:
    """The train.py command line (under torchrun when ``gpus`` > 1, with its ``--numa-binding``
    when given)."""
    fixed = [f"train.total_iter={iters}", f"logger.print_freq={print_freq}", f"val.val_freq={iters}",
             f"logger.save_checkpoint_freq={iters}", "logger.use_tb_logger=false",
             f"path.experiments_root={root}", f"name=ddp_bench_{gpus}gpu"]
    args = ["train.py", "-opt", opt] + [a for o in fixed + overrides for a in ("-o", o)]
    if gpus == 1:
        return [sys.executable, *args]
    binding = [f"--numa-binding={numa_binding}"] if numa_binding else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *binding,
            *args]


def _siblings(cpu: int) -> frozenset[int]:
    """The logical CPUs sharing ``cpu``'s physical core (itself alone where sysfs does not say)."""
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    try:
        text = path.read_text().strip()
    except OSError:
        return frozenset([cpu])
    found: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        found.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(found)


def cpu_slices(cpus: list[int], parts: int, siblings: Callable[[int], frozenset[int]] = _siblings) -> list[list[int]]:
    """``cpus`` cut into ``parts`` equal slices of whole physical cores (hyper-threads of one core
    never land in two slices), in CPU order; a remainder is left out."""
    allowed = set(cpus)
    cores = sorted({frozenset(siblings(c) & allowed) or frozenset([c]) for c in cpus}, key=min)
    size = len(cores) // parts
    if size == 0:
        raise ValueError(f"--pin: {len(cores)} cores cannot be shared among {parts} processes")
    return [sorted(c for core in cores[i * size:(i + 1) * size] for c in core) for i in range(parts)]


def run_pinned(cmd: list[str], gpus: int, parts: int) -> str:
    """``cmd`` (train.py alone) as ``gpus`` processes, rank r on the r-th of ``parts`` CPU slices
    (torchrun's environment, set here); rank 0's log. A rank that fails stops the others."""
    slices = cpu_slices(list(os.sched_getaffinity(0)), parts)
    if gpus == 1:
        return run(cmd, 1, slices[0])
    env = _child_env()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for rank in range(gpus):
            rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(gpus),
                            LOCAL_WORLD_SIZE=str(gpus), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            out = open(Path(tmp) / f"{rank}.log", "w")  # noqa: SIM115 (closed below)
            procs.append((subprocess.Popen(cmd, cwd=ROOT, env=rank_env, stdout=out, stderr=subprocess.STDOUT,
                                           preexec_fn=lambda cpus=slices[rank]: os.sched_setaffinity(0, cpus)),
                          out))
        while any(proc.poll() is None for proc, _ in procs):
            if any(proc.poll() not in (None, 0) for proc, _ in procs):
                for proc, _ in procs:
                    if proc.poll() is None:
                        proc.kill()
            time.sleep(0.2)
        codes = [proc.wait() for proc, _ in procs]
        for _, out in procs:
            out.close()
        logs = [(Path(tmp) / f"{rank}.log").read_text() for rank in range(gpus)]
    if any(codes):
        raise RuntimeError(f"{' '.join(cmd)} failed on ranks {[r for r, c in enumerate(codes) if c]}:\n"
                           f"{next(log for log, c in zip(logs, codes, strict=True) if c)[-4000:]}")
    return logs[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env() -> dict[str, str]:
    # One log line per line (rich wraps at the terminal width). torchrun gives every rank one
    # OpenMP thread unless OMP_NUM_THREADS is set; the one-GPU run gets the same, so the two
    # differ only in the number of processes.
    return dict(os.environ, COLUMNS="250", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))


def run(cmd: list[str], gpus: int, cpus: list[int] | None = None) -> str:
    env = _child_env()
    if gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, preexec_fn=pin)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {done.returncode}:\n{log[-4000:]}")
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-opt", "--opt", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--print-freq", type=int, default=250)
    parser.add_argument("--skip", type=int, default=1, help="logged intervals left out at the start")
    parser.add_argument("--stage", choices=("both", "one", "multi"), default="both",
                        help="run both, or only the one-GPU or the multi-GPU run (e.g. one-GPU runs of two option "
                             "files side by side on a two-GPU machine); scaling needs both")
    parser.add_argument("--pin", action="store_true",
                        help="hold each process to its own share of the physical cores (launched without torchrun)")
    parser.add_argument("--numa-binding", choices=("node", "socket", "exclusive", "core-complex"),
                        help="torchrun's CPU binding for the multi-GPU run (exclusive: each rank its own cores "
                             "near its GPU); not with --pin")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)
    if args.pin and args.numa_binding:
        parser.error("--pin and --numa-binding both bind the ranks to CPUs: choose one")
    counts = {"both": (1, args.gpus), "one": (1,), "multi": (args.gpus,)}[args.stage]
    root = Path(tempfile.mkdtemp(prefix="ddp_bench_"))
    try:
        rates, identical = {}, None
        for gpus in counts:
            cmd = command(args.opt, args.override, gpus, args.iters, args.print_freq, root, args.numa_binding)
            if args.pin:
                log = run_pinned(cmd[:1] + cmd[cmd.index("train.py"):], gpus, args.gpus)
            else:
                log = run(cmd, gpus)
            rates[gpus] = run_rate(log, args.skip)
            if gpus > 1:
                identical = replicas_identical(log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"option_file": args.opt, "overrides": args.override, "iters": args.iters, "gpus": args.gpus,
              "one_gpu_it_per_s": rates.get(1), "per_rank_it_per_s": rates.get(args.gpus),
              "replicas_identical": identical, "pinned": args.pin,
              "numa_binding": args.numa_binding}
    if len(rates) == 2:
        result["scaling"] = args.gpus * rates[args.gpus] / rates[1]
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
