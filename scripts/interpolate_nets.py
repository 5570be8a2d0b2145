"""Blend two trainings of one network, weight by weight (ESRGAN's network interpolation).

    python scripts/interpolate_nets.py --a psnr.safetensors --b gan.safetensors --alpha 0.8 -o interp_08

Every floating-point tensor becomes ``(1 - alpha) * a + alpha * b``: alpha 0 is the PSNR model
(smooth), 1 the GAN model (sharp, with artefacts), values between trade one for the other without
retraining. Both files must hold the same keys with the same shapes; integer tensors (BatchNorm's
step counter) are taken from ``b``. The output is written in ``b``'s dtypes, as safetensors unless
``-o`` ends in ``.pth``, and keeps ``b``'s safetensors metadata plus where it came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.weights import read_weights, save_network, unwrap_state_dict  # noqa: E402


class MismatchError(ValueError):
    """The two networks cannot be blended: different keys or shapes."""


def check_compatible(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Raise naming the keys only one side has and the tensors whose shapes differ."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    shapes = [f"{k}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}" for k in sorted(set(a) & set(b))
              if a[k].shape != b[k].shape]
    problems = []
    if only_a:
        problems.append(f"{len(only_a)} keys only in a: {', '.join(only_a[:5])}{' ...' if len(only_a) > 5 else ''}")
    if only_b:
        problems.append(f"{len(only_b)} keys only in b: {', '.join(only_b[:5])}{' ...' if len(only_b) > 5 else ''}")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ: {'; '.join(shapes[:5])}{' ...' if len(shapes) > 5 else ''}")
    if problems:
        raise MismatchError("the two networks do not match (same architecture and options needed):\n  "
                            + "\n  ".join(problems))


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` for floating tensors (computed in float32 or better), ``b`` otherwise."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    check_compatible(a, b)
    out = {}
    for key, vb in b.items():
        if vb.is_floating_point():
            wide = torch.promote_types(vb.dtype, torch.float32)
            out[key] = ((1.0 - alpha) * a[key].to(wide) + alpha * vb.to(wide)).to(vb.dtype)
        else:
            out[key] = vb.clone()
    return out


def _metadata(path: Path) -> dict[str, str]:
    from utils.weights import read_metadata

    return read_metadata(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="weights at alpha 0 (e.g. the PSNR-trained model)")
    parser.add_argument("--b", required=True, help="weights at alpha 1 (e.g. the GAN-trained model)")
    parser.add_argument("--alpha", type=float, required=True, help="share of b, in [0, 1]")
    parser.add_argument("-o", "--output", required=True, help="output file (.safetensors added if no suffix)")
    parser.add_argument("--param_key", default="params", help="which entry of a BasicSR .pth to read")
    args = parser.parse_args(argv)
    a_path, b_path, out = Path(args.a), Path(args.b), Path(args.output)
    if out.suffix not in (".safetensors", ".pth", ".pt"):
        out = out.with_name(out.name + ".safetensors")
    try:
        a = unwrap_state_dict(read_weights(a_path), args.param_key)
        b = unwrap_state_dict(read_weights(b_path), args.param_key)
        blended = interpolate(a, b, args.alpha)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"interpolate_nets: {err}", file=sys.stderr)
        return 2
    meta = {**_metadata(b_path), "interpolated": f"(1 - {args.alpha}) * {a_path.name} + {args.alpha} * {b_path.name}"}
    save_network(blended, out, metadata=meta if out.suffix == ".safetensors" else None)
    print(f"wrote {out} ({len(blended)} tensors, alpha {args.alpha})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
