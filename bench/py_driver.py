"""Drives the Python async-batch-llm 0.28.0 through one benchmark scenario and
prints one JSON line of figures. Called by bench/runner.py; not a library.

Usage: python py_driver.py SCENARIO [--items N] [--concurrency C] [--base-url URL]
       [--cooldown S] [--rpm R] [--tpm T] [--checkpoint PATH] [--seconds S]
"""

import argparse
import asyncio
import json
import resource
import sys
import time

from async_batch_llm import GuardrailConfig, ProcessorConfig, RateLimitConfig, llm, process_prompts, process_stream
from async_batch_llm.testing import FakeStrategy
from async_batch_llm.token_estimation import CharacterTokenEstimator


def peak_rss_kib() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


PAD = ""


def prompts(n: int):
    for i in range(n):
        yield f"prompt {i}{PAD}"


def entries(n: int):
    # (item id, prompt) entries so a resumed run matches ids.
    for i in range(n):
        yield (str(i), f"prompt {i}")


def http_strategy(args):
    return llm(
        "openai:gpt-4o-mini",
        base_url=args.base_url,
        api_key="bench-key",
        max_connections=args.concurrency,
    )


async def overhead(args):
    strategy = FakeStrategy(lambda p: p)
    config = ProcessorConfig(concurrency=args.concurrency, max_queue_size=4 * args.concurrency,
                             max_result_queue_size=4 * args.concurrency)
    start = time.perf_counter()
    n = 0
    async for _ in process_stream(strategy, prompts(args.items), config=config):
        n += 1
    wall = time.perf_counter() - start
    return {"items": n, "wall_s": wall, "items_per_s": n / wall, "peak_rss_kib": peak_rss_kib()}


async def http(args):
    config = ProcessorConfig(
        concurrency=args.concurrency,
        max_queue_size=4 * args.concurrency,
        max_result_queue_size=4 * args.concurrency,
        rate_limit=RateLimitConfig(cooldown_seconds=args.cooldown, max_cooldown_seconds=max(args.cooldown, 1.0)),
    )
    strategy = http_strategy(args)
    start = time.perf_counter()
    ok = failed = 0
    async for r in process_stream(strategy, prompts(args.items), config=config):
        if r.success:
            ok += 1
        else:
            failed += 1
    wall = time.perf_counter() - start
    return {"items": ok + failed, "succeeded": ok, "failed": failed, "wall_s": wall,
            "items_per_s": (ok + failed) / wall, "peak_rss_kib": peak_rss_kib()}


async def quota(args):
    config = ProcessorConfig(
        concurrency=args.concurrency,
        max_queue_size=4 * args.concurrency,
        max_result_queue_size=4 * args.concurrency,
        max_requests_per_minute=args.rpm,
        max_tokens_per_minute=args.tpm,
        token_estimator=CharacterTokenEstimator(expected_output_tokens=190) if args.tpm else None,
        guardrails=GuardrailConfig(batch_timeout=args.seconds),
        rate_limit=RateLimitConfig(cooldown_seconds=args.cooldown, max_cooldown_seconds=max(args.cooldown, 1.0)),
    )
    strategy = http_strategy(args)
    start = time.perf_counter()
    ok = 0
    async for r in process_stream(strategy, prompts(args.items), config=config):
        ok += 1 if r.success else 0
    return {"succeeded": ok, "wall_s": time.perf_counter() - start}


async def resume(args):
    from async_batch_llm import ResumePolicy
    from async_batch_llm.sqlite_artifacts import SqliteArtifactStore

    store = SqliteArtifactStore(args.checkpoint)
    config = ProcessorConfig(concurrency=args.concurrency, max_queue_size=4 * args.concurrency,
                             max_result_queue_size=4 * args.concurrency)
    strategy = http_strategy(args)
    start = time.perf_counter()
    first = None
    n = 0
    async for r in process_stream(strategy, entries(args.items), config=config,
                                  artifact_store=store, resume=ResumePolicy.REUSE_SUCCESSES):
        n += 1
        if first is None:
            first = time.perf_counter() - start
        if n % 1000 == 0:
            print(json.dumps({"progress": n}), flush=True)
    return {"items": n, "wall_s": time.perf_counter() - start, "first_result_s": first}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario")
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--base-url", default="")
    p.add_argument("--cooldown", type=float, default=300.0)
    p.add_argument("--rpm", type=float, default=None)
    p.add_argument("--tpm", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--checkpoint", default="")
    p.add_argument("--pad", type=int, default=0, help="append this many x to each prompt")
    args = p.parse_args()
    global PAD
    PAD = " " + "x" * args.pad if args.pad else ""
    run = {"overhead": overhead, "http": http, "quota": quota, "resume": resume}[args.scenario]
    out = asyncio.run(run(args))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
