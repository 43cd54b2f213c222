"""Dashboards on SmolLM2: tokens/s of the stream and peak memory for a 16k-latent SAE, as JSON.

    python benchmarks/bench_dashboards.py [--d-sae 16384] [--arch soft topk] [--tokens 16384]
        [--latents 64] [--top-by frequency] [--threads 1] [--sae DIR]

For each architecture: a SAELens SAE at SmolLM2-135M-Instruct's layer 5 with random weights
(a TopK-style SAE has k nonzero activations per token trained or not, so the stream costs about
the same; ``--sae DIR`` measures a saved one instead) is written to a temporary folder and
``softsae_lens.dashboards.run`` builds its dashboards on held-out Python source (``--corpus
stdlib-src``) with every latent tracked (``--top-by`` picks after the stream). Reported: the
stream's tokens/s (model forward to the hook, encode, statistics), the same forwards and encodes
alone (the statistics' overhead), the time with the pages written, CPU seconds beside wall
seconds (others' load on a shared machine inflates wall time much more than CPU time), and the
process's peak resident memory before and after (``ru_maxrss``, the model included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sae(arch: str, d_sae: int):
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    from softsae_lens import SoftSAE, SoftSAEConfig
    from softsae_lens.models.smollm2 import D_MODEL

    torch.manual_seed(0)
    if arch == "soft":
        sae = SoftSAE(SoftSAEConfig(d_in=D_MODEL, d_sae=d_sae, k=32))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=d_sae, k=32))
    sae.cfg.metadata.hook_name = "blocks.5.hook_out"
    sae.cfg.metadata.model_name = "SmolLM2-135M-Instruct"
    return sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--arch", nargs="+", default=["soft", "topk"], choices=["soft", "topk"])
    parser.add_argument("--sae", type=Path, default=None, help="a saved SAE instead")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--latents", default="64")
    parser.add_argument("--top-by", default="frequency")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from softsae_lens.dashboards import DashboardsConfig
    from softsae_lens.dashboards.__main__ import run
    from softsae_lens.dashboards.stream import batches_of, encode_batch, token_rows
    from softsae_lens.models.smollm2 import load_smollm2_bridge

    t0 = time.perf_counter()
    model = load_smollm2_bridge()
    results: dict = {
        "threads": args.threads,
        "model_load_seconds": time.perf_counter() - t0,
        "rss_after_model_mib": _rss_mib(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("saved", args.sae)] if args.sae else [(a, None) for a in args.arch]
        for arch, path in cases:
            if path is None:
                path = Path(tmp) / arch
                _sae(arch, args.d_sae).save_model(path)
            out = args.out / arch if args.out else Path(tmp) / f"out_{arch}"
            cfg = DashboardsConfig(
                sae=path,
                corpus="stdlib-src",
                max_tokens=args.tokens,
                latents=args.latents,
                top_by=args.top_by,
                out=out,
            )
            rss_before = _rss_mib()
            t0 = time.perf_counter()
            result = run(cfg, model=model, progress=False)
            total = time.perf_counter() - t0
            info = result["info"]
            # the same forwards and encodes without the statistics
            from sae_lens import SAE

            sae = SAE.load_from_disk(str(path))
            from softsae_lens.dashboards.__main__ import _documents

            docs, _ = _documents(cfg)
            batches = batches_of(token_rows(model, (), docs, max_tokens=args.tokens), 8)
            t1, c1 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                for tokens in batches:
                    encode_batch(model, sae, tokens, info["hook_name"])
            bare, bare_cpu = time.perf_counter() - t1, time.process_time() - c1
            results["runs"].append(
                {
                    "architecture": info["architecture"],
                    "d_sae": info["d_sae"],
                    "tokens": info["n_positions"],
                    "stream_seconds": round(info["seconds"], 2),
                    "stream_tokens_per_second": round(info["tokens_per_second"], 1),
                    "forward_and_encode_only_tokens_per_second": round(
                        info["n_positions"] / bare, 1
                    ),
                    "stream_cpu_seconds": round(info["cpu_seconds"], 2),
                    "stream_tokens_per_cpu_second": round(info["tokens_per_cpu_second"], 1),
                    "forward_and_encode_only_tokens_per_cpu_second": round(
                        info["n_positions"] / bare_cpu, 1
                    ),
                    "total_seconds_with_pages": round(total, 2),
                    "latent_pages": len(result["paths"]["latents"]),
                    "peak_rss_before_mib": round(rss_before, 1),
                    "peak_rss_after_mib": round(_rss_mib(), 1),
                }
            )
            print(json.dumps(results["runs"][-1]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
