"""CPU throughput of onnxruntime against PyTorch fp32 eager, in output megapixels per second.

    python scripts/benchmark_onnx.py [--size 128] [--seconds 6] [--threads N] [--fp16] [--only NAME] [--json FILE]

Each network (random weights: throughput does not depend on the values) is exported with
``scripts/export_onnx.py``'s ``export_onnx`` (dynamic height/width, as shipped), then the same
1 x 3 x size x size input runs through PyTorch eager (float32, inference mode) and through
onnxruntime's CPU provider, both on ``--threads`` threads, taking turns over three rounds (the
best round counts). ``--fp16`` adds the float16 file on onnxruntime's CPU provider. Prints a
table; ``--json`` appends one JSON line per network. Not run by the tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scripts.bench_report import emit  # noqa: E402
from scripts.export_onnx import check_parity, export_onnx, require_onnx  # noqa: E402
from utils.registry import ARCH_REGISTRY  # noqa: E402

# (label, arch, constructor kwargs): EDSR-M, RRDBNet the size of Real-ESRGAN's anime model, ParagonSR2 S.
NETWORKS: list[tuple[str, str, dict]] = [
    ("EDSR-M x2", "EDSR", {"num_feat": 64, "num_block": 16, "scale": 2}),
    ("RRDBNet 6B x4", "RRDBNet", {"num_feat": 64, "num_block": 6, "num_grow_ch": 32, "scale": 4}),
    ("ParagonSR2 S x2", "ParagonSR2", {"variant": "s", "scale": 2}),
]


def best_times(fns: dict[str, Callable[[], object]], seconds: float, rounds: int = 3) -> dict[str, float]:
    """Seconds per call of each function: the best of ``rounds`` rounds, each at least
    ``seconds / rounds`` long, the functions taking turns within every round.

    Taking turns and keeping the best round makes the comparison fair on a shared machine, where
    other work comes and goes (an OpenMP pool such as PyTorch's slows down badly when its cores are
    busy with something else).
    """
    for fn in fns.values():  # warm up: first calls allocate and pick kernels
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            runs, start = 0, time.perf_counter()
            while runs < 1 or time.perf_counter() - start < seconds / rounds:
                fn()
                runs += 1
            best[name] = min(best[name], (time.perf_counter() - start) / runs)
    return best


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def benchmark(label: str, arch: str, kwargs: dict, size: int, seconds: float, threads: int, fp16: bool,
              workdir: Path) -> dict:
    """Output MP/s of PyTorch fp32 eager and onnxruntime (fp32, optionally fp16) for one network."""
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(arch)(**kwargs).eval()
    x = torch.rand(1, 3, size, size)
    out_mp = (size * kwargs["scale"]) ** 2 / 1e6
    result = {"net": label, "arch": arch, "kwargs": kwargs, "input": size, "threads": threads}
    fns = {"torch_fp32": lambda: net(x)}
    for precision in ("fp32", "fp16") if fp16 else ("fp32",):
        path = export_onnx(net, workdir / f"{arch}_{precision}.onnx", fp16=precision == "fp16",
                           scale=kwargs["scale"])
        result[f"ort_{precision}_max_abs_diff"] = check_parity(net, path, x).max_abs_diff
        session = _session(path, threads)
        feed = {"input": x.numpy().astype(np.float16 if precision == "fp16" else np.float32)}
        fns[f"ort_{precision}"] = lambda s=session, f=feed: s.run(None, f)
    with torch.inference_mode():
        times = best_times(fns, seconds)
    result.update({f"{name}_mp_s": out_mp / t for name, t in times.items()})
    return result


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of the results."""
    fp16 = any("ort_fp16_mp_s" in r for r in rows)
    head = ["network", "input", "torch fp32 MP/s", "ORT fp32 MP/s", "ORT/torch", "ORT fp32 max|diff|"]
    if fp16:
        head += ["ORT fp16 MP/s", "ORT fp16 max|diff|"]
    lines = [head]
    for r in rows:
        line = [r["net"], f"{r['input']}x{r['input']}", f"{r['torch_fp32_mp_s']:.3f}", f"{r['ort_fp32_mp_s']:.3f}",
                f"{r['ort_fp32_mp_s'] / r['torch_fp32_mp_s']:.2f}x", f"{r['ort_fp32_max_abs_diff']:.1e}"]
        if fp16:
            line += [f"{r['ort_fp16_mp_s']:.3f}", f"{r['ort_fp16_max_abs_diff']:.1e}"]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="LR input side")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per runtime and network (3 rounds)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fp16", action="store_true", help="also time the float16 file on the CPU")
    parser.add_argument("--only", default=None, help="run only networks whose label contains this")
    parser.add_argument("--json", default=None, help="append results as JSON lines to this file")
    args = parser.parse_args(argv)
    require_onnx()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, arch, kwargs in NETWORKS:
            if args.only and args.only.lower() not in label.lower():
                continue
            row = benchmark(label, arch, kwargs, args.size, args.seconds, args.threads, args.fp16, Path(tmp))
            if args.json:
                emit(row, args.json)
            rows.append(row)
    print(f"torch {torch.__version__}, CPU threads {args.threads}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
