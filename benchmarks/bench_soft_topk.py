"""Speed and memory of ``soft_topk`` against a dense matmul yardstick, printed as JSON.

    python benchmarks/bench_soft_topk.py [--rows 4096] [--n 16384] [--k 32] [--repeats 5]

For each alpha the forward and forward+backward times are medians over ``--repeats`` runs;
the yardstick, one ``(rows x 768) @ (768 x n)`` matmul, is measured in the same process so
the ratios hold on a shared, noisy machine. Peak extra memory is the resident-set growth of a
fresh child process running one forward+backward (CPU), or ``max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch
from _measure import peak_rss_kib, timed

from softsae_lens import soft_topk


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    return statistics.median(timed(fn, device) for _ in range(repeats))


def _post_relu_input(rows: int, n: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.empty(rows, n, device=device)
    x.normal_(generator=generator).relu_()
    return x


def _peak_extra_bytes(args: argparse.Namespace, alpha: float) -> int:
    """Run one forward+backward in a fresh process and return its peak extra memory."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--measure-memory",
            str(alpha),
            "--rows",
            str(args.rows),
            "--n",
            str(args.n),
            "--k",
            str(args.k),
            "--device",
            args.device,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def _measure_memory_child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    x = _post_relu_input(args.rows, args.n, device).requires_grad_()
    grad = torch.empty_like(x).fill_(1.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        soft_topk(x, args.k, args.measure_memory).backward(grad)
        print(torch.cuda.max_memory_allocated(device) - base)
        return
    base_kib = peak_rss_kib()
    soft_topk(x, args.k, args.measure_memory).backward(grad)
    print((peak_rss_kib() - base_kib) * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--k", type=float, default=32.0)
    parser.add_argument(
        "--d-model", type=int, default=768, help="inner size of the yardstick matmul"
    )
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 1e-2, 1e-4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--measure-memory", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory is not None:
        _measure_memory_child(args)
        return

    device = torch.device(args.device)
    x = _post_relu_input(args.rows, args.n, device)
    grad = torch.randn_like(x)
    a = torch.randn(args.rows, args.d_model, device=device)
    b = torch.randn(args.d_model, args.n, device=device)
    matmul_s = _median_seconds(lambda: a @ b, args.repeats, device)

    results = []
    for alpha in args.alphas:
        leaf = x.clone().requires_grad_()

        def forward(alpha=alpha, leaf=leaf):
            with torch.no_grad():
                return soft_topk(leaf, args.k, alpha)

        def forward_backward(alpha=alpha, leaf=leaf):
            leaf.grad = None
            soft_topk(leaf, args.k, alpha).backward(grad)

        fwd_s = _median_seconds(forward, args.repeats, device)
        fwd_bwd_s = _median_seconds(forward_backward, args.repeats, device)
        w = forward()
        row_err = ((w.double().sum(-1) - args.k).abs() / args.k).max().item()
        results.append(
            {
                "alpha": alpha,
                "forward_s": round(fwd_s, 4),
                "forward_backward_s": round(fwd_bwd_s, 4),
                "forward_backward_over_matmul": round(fwd_bwd_s / matmul_s, 3),
                "peak_extra_memory_mib": round(_peak_extra_bytes(args, alpha) / 2**20, 1),
                "max_row_sum_rel_error": row_err,
            }
        )
        del leaf, w

    print(
        json.dumps(
            {
                "benchmark": "soft_topk",
                "device": str(device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "rows": args.rows,
                "n": args.n,
                "k": args.k,
                "dtype": "float32",
                "input": "relu(randn): about half the entries exactly zero",
                "matmul_yardstick": f"({args.rows}x{args.d_model}) @ ({args.d_model}x{args.n})",
                "matmul_s": round(matmul_s, 4),
                "input_mib": round(x.numel() * 4 / 2**20, 1),
                "target": "forward_backward_over_matmul <= 2.5 for every alpha",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
