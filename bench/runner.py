"""Side-by-side benchmarks: abl (Rust) and the Python async-batch-llm 0.28.0,
against the same abl-mock instance with the same settings, alternating runs.

Run through bench/run (full) or bench/quick (a subset under two minutes); they
set up the virtual environment and build abl first. Writes
bench/results/<mode>.json, the PNG plots in docs/img/, and the tables into
docs/benchmarks.md between the side-by-side markers (full mode only).
"""

import argparse
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABL = ROOT / "target" / "release" / "abl"
STREAM = ROOT / "target" / "release" / "examples" / "stream_million"
PY = sys.executable
DRIVER = ROOT / "bench" / "py_driver.py"

FULL = {
    "reps": 3,
    "overhead_items": 100_000,
    "http_concurrency": [64, 256, 1024],
    "http_waves": 30,
    "rl_items": 2000,
    "quota_seconds": 180,
    "memory_items": 1_000_000,
    "resume_items": 20_000,
    "sliding_items": 3000,
    "poison_items": 2000,
    "poison_retries": 6,
}
QUICK = {
    "reps": 1,
    "overhead_items": 5_000,
    "http_concurrency": [64, 256],
    "http_waves": 6,
    "rl_items": 150,
    "quota_seconds": 8,
    "memory_items": 10_000,
    "resume_items": 1_000,
    "sliding_items": 1000,
    "poison_items": 200,
    "poison_retries": 2,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mock:
    """One abl-mock process for a scenario; both tools talk to it."""

    def __init__(self, *flags: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(ABL), "mock-server", "--port", str(self.port), *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the mock server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def stats(self):
        return self.get("/stats")

    def reset(self):
        req = urllib.request.Request(self.url + "/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_input(n: int, pad: int = 0) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, dir=tempfile.gettempdir())
    filler = " " + "x" * pad if pad else ""
    for i in range(n):
        f.write(json.dumps({"id": str(i), "prompt": f"prompt {i}{filler}"}) + "\n")
    f.close()
    return Path(f.name)


def abl_run(mock: Mock, inp: Path, *flags: str, out: str = "/dev/null") -> dict:
    summary = Path(tempfile.mktemp(suffix=".json"))
    cmd = [str(ABL), "run", str(inp), "--model", "openai:gpt-4o-mini", "--base-url", mock.url + "/v1",
           "-o", out, "--summary-json", str(summary), "--no-progress", *flags]
    env = dict(os.environ, OPENAI_API_KEY="bench-key")
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    s = json.loads(summary.read_text())
    summary.unlink()
    s["process_wall_s"] = wall
    return s


def py_run(scenario: str, *flags: str) -> dict:
    out = subprocess.run([PY, str(DRIVER), scenario, *flags], capture_output=True, text=True, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{") and "progress" not in l]
    if not lines:
        raise RuntimeError(f"python driver failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def rust_stream(items: int) -> dict:
    out = subprocess.run([str(STREAM), str(items)], capture_output=True, text=True, check=True).stdout
    last = out.strip().splitlines()[-1]
    # "N items (N ok) in S s = R items/s; peak RSS K KiB"
    rate = float(last.split("=")[1].split("items/s")[0])
    rss = int(last.split("peak RSS")[1].split("KiB")[0])
    return {"items_per_s": rate, "peak_rss_kib": rss}


def med(xs):
    return statistics.median(xs) if xs else None


def overhead(cfg):
    rust, py = [], []
    for _ in range(cfg["reps"]):
        rust.append(rust_stream(cfg["overhead_items"])["items_per_s"])
        py.append(py_run("overhead", "--items", str(cfg["overhead_items"]), "--concurrency", "64")["items_per_s"])
    return {"items": cfg["overhead_items"], "rust_items_per_s": rust, "python_items_per_s": py}


def http(cfg):
    rows = []
    for c in cfg["http_concurrency"]:
        n = c * cfg["http_waves"]
        inp = write_input(n)
        rust, py = [], []
        with Mock("--latency-ms", "50") as m:
            for _ in range(cfg["reps"]):
                m.reset()
                s = abl_run(m, inp, "-c", str(c))
                rust.append(s["stats"]["items"] / (s["wall_time_ms"] / 1000))
                m.reset()
                p = py_run("http", "--items", str(n), "--concurrency", str(c), "--base-url", m.url + "/v1")
                py.append(p["items_per_s"])
        inp.unlink()
        rows.append({"concurrency": c, "items": n, "limit": c / 0.05, "rust": rust, "python": py})
    return rows


def rate_limit(cfg):
    n = cfg["rl_items"]
    inp = write_input(n)
    res = {"items": n, "rust": [], "python": []}
    with Mock("--latency-ms", "50", "--fault-429", "0.05", "--hint-429", "retry-after:1") as m:
        for _ in range(cfg["reps"]):
            m.reset()
            s = abl_run(m, inp, "-c", "64")
            st = m.stats()
            res["rust"].append({"wall_s": s["wall_time_ms"] / 1000, "succeeded": s["stats"]["succeeded"],
                                "retries": st["rate_limited"], "during_cooldown": st["during_cooldown"]})
            m.reset()
            p = py_run("http", "--items", str(n), "--concurrency", "64", "--base-url", m.url + "/v1",
                       "--cooldown", "1")
            st = m.stats()
            res["python"].append({"wall_s": p["wall_s"], "succeeded": p["succeeded"],
                                  "retries": st["rate_limited"], "during_cooldown": st["during_cooldown"]})
    inp.unlink()
    return res


def sample_quota(m: Mock, proc: subprocess.Popen, seconds: float):
    series, start = [], time.perf_counter()
    while proc.poll() is None:
        t = time.perf_counter() - start
        st = m.stats()
        series.append((t, st["tokens"], st["requests"], st["rate_limited"]))
        if t > seconds + 30:
            proc.send_signal(signal.SIGINT)
        time.sleep(1)
    st = m.stats()
    series.append((time.perf_counter() - start, st["tokens"], st["requests"], st["rate_limited"]))
    return series


def quota(cfg):
    secs = cfg["quota_seconds"]
    rpm, tpm = 600, 60000
    # ~190 tokens in + ~190 out per call: tokens per minute bind before requests do.
    inp = write_input(5000, pad=740)
    out = {"seconds": secs, "rpm": rpm, "tpm": tpm}
    for tool in ("rust", "python"):
        # A fresh mock per tool: its rolling window starts empty for each.
        with Mock("--latency-ms", "50", "--rpm", str(rpm), "--tpm", str(tpm)) as m:
            if tool == "rust":
                cmd = [str(ABL), "run", str(inp), "--model", "openai:gpt-4o-mini", "--base-url", m.url + "/v1",
                       "-o", "/dev/null", "--no-progress", "-c", "64", "--rpm", str(rpm), "--tpm", str(tpm),
                       "--expected-output-tokens", "190", "--batch-deadline", str(secs)]
            else:
                cmd = [PY, str(DRIVER), "quota", "--items", "5000", "--pad", "740", "--concurrency", "64",
                       "--base-url", m.url + "/v1", "--rpm", str(rpm), "--tpm", str(tpm), "--seconds", str(secs),
                       "--cooldown", "1"]
            env = dict(os.environ, OPENAI_API_KEY="bench-key")
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            series = sample_quota(m, proc, secs)
            st = m.stats()
            served = st["by_route"].get("responses", {})
            out[tool] = {
                "series": series,
                "requests_ok": served.get("ok", 0),
                "answered_429": st["rate_limited"],
                "tokens": st["tokens"],
                # The most a rolling minute allows in `secs`: one full
                # minute's budget per started minute.
                "share_of_tpm": st["tokens"] / (tpm * math.ceil(secs / 60)),
                "share_of_rpm": served.get("ok", 0) / (rpm * math.ceil(secs / 60)),
            }
    inp.unlink()
    return out


def memory(cfg):
    n = cfg["memory_items"]
    r = rust_stream(n)
    p = py_run("overhead", "--items", str(n), "--concurrency", "64")
    return {"items": n, "rust_peak_rss_kib": r["peak_rss_kib"], "python_peak_rss_kib": p["peak_rss_kib"],
            "rust_items_per_s": r["items_per_s"], "python_items_per_s": p["items_per_s"]}


def repeated_calls(m: Mock) -> int:
    return sum(1 for c in m.get("/stats/prompts").values() if c > 1)


def kill_at_half_rust(m: Mock, inp: Path, n: int, ckpt: Path, outp: Path):
    cmd = [str(ABL), "run", str(inp), "--model", "openai:gpt-4o-mini", "--base-url", m.url + "/v1",
           "-o", str(outp), "--no-progress", "-c", "64", "--checkpoint", str(ckpt), "--resume", "successes"]
    env = dict(os.environ, OPENAI_API_KEY="bench-key")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if outp.exists() and sum(1 for _ in outp.open()) >= n // 2:
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait()
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def kill_at_half_python(m: Mock, n: int, ckpt: Path):
    cmd = [PY, str(DRIVER), "resume", "--items", str(n), "--concurrency", "64", "--base-url", m.url + "/v1",
           "--checkpoint", str(ckpt)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if '"progress"' in line and json.loads(line)["progress"] >= n // 2:
            proc.kill()
            break
    proc.wait()
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    return wall, out.stdout.strip().splitlines()[-1] if out.stdout else ""


def abl_quota_cmd(m: Mock, inp: Path, secs: int) -> list:
    """abl told nothing of the quota: no --rpm, no --tpm."""
    return [str(ABL), "run", str(inp), "--model", "openai:gpt-4o-mini", "--base-url", m.url + "/v1",
            "-o", "/dev/null", "--no-progress", "-c", "64", "--expected-output-tokens", "190",
            "--batch-deadline", str(secs)]


def quota_share(st: dict, secs: int, tpm: int) -> dict:
    served = st["by_route"].get("responses", {})
    return {"requests": st["requests"], "requests_ok": served.get("ok", 0), "answered_429": st["rate_limited"],
            "share_429": st["rate_limited"] / max(1, st["requests"]), "tokens": st["tokens"],
            "share_of_tpm": st["tokens"] / (tpm * math.ceil(secs / 60))}


def limits(cfg):
    """Limits nobody told us (issue 16): abl runs with no --rpm/--tpm."""
    secs, rpm, tpm = cfg["quota_seconds"], 600, 60000
    env = dict(os.environ, OPENAI_API_KEY="bench-key")
    inp = write_input(5000, pad=740)
    out = {"seconds": secs, "rpm": rpm, "tpm": tpm}
    hidden = ("--latency-ms", "50", "--rpm", str(rpm), "--tpm", str(tpm))
    for name, headers in (("hidden_headers", "full"), ("hidden_no_headers", "none")):
        with Mock(*hidden, "--rate-headers", headers) as m:
            proc = subprocess.Popen(abl_quota_cmd(m, inp, secs), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            sample_quota(m, proc, secs)
            out[name] = quota_share(m.stats(), secs, tpm)
    # The Python package told nothing either (it has no way to learn a quota).
    with Mock(*hidden, "--rate-headers", "none") as m:
        cmd = [PY, str(DRIVER), "quota", "--items", "5000", "--pad", "740", "--concurrency", "64",
               "--base-url", m.url + "/v1", "--seconds", str(secs), "--cooldown", "1"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sample_quota(m, proc, secs)
        out["python_hidden_no_headers"] = quota_share(m.stats(), secs, tpm)
    # Two processes on one quota, with headers.
    with Mock(*hidden, "--rate-headers", "full") as m:
        procs = [subprocess.Popen(abl_quota_cmd(m, inp, secs), env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for _ in range(2)]
        sample_quota(m, procs[0], secs)
        procs[1].wait()
        out["two_processes"] = quota_share(m.stats(), secs, tpm)
    inp.unlink()
    # 500 requests in any 10 s, stated as 3,000 a minute.
    n = cfg["sliding_items"]
    sl = write_input(n)
    with Mock("--latency-ms", "50", "--rpm", "500", "--quota-window-secs", "10") as m:
        s = abl_run(m, sl, "-c", "64")
        st = m.stats()
        ideal = 10 * math.ceil(n / 500 - 1) + 0.05
        out["sliding"] = {"items": n, "wall_s": s["process_wall_s"], "ideal_s": ideal,
                          "answered_429": st["rate_limited"], "requests": st["requests"]}
    sl.unlink()
    # One item answered 429 without a hint on every call.
    n = cfg["poison_items"]
    plain = write_input(n)
    poisoned = write_input(n)
    lines = poisoned.read_text().splitlines()
    lines[n // 2] = json.dumps({"id": str(n // 2), "prompt": "poisoned [[mock:429-nohint]]"})
    poisoned.write_text("\n".join(lines) + "\n")
    res = {"items": n}
    with Mock("--latency-ms", "50") as m:
        for name, f in (("baseline", plain), ("poisoned", poisoned)):
            m.reset()
            cmd = [str(ABL), "run", str(f), "--model", "openai:gpt-4o-mini", "--base-url", m.url + "/v1",
                   "-o", "/dev/null", "--no-progress", "-c", "64",
                   # The poisoned item's own backoff (1, 2, 4 … 60 s) would
                   # take 15 minutes over the default 20 retries.
                   "--max-rate-limit-retries", str(cfg["poison_retries"])]
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # The others are done when the mock has answered n - 1 of them;
            # the poisoned item goes on retrying on its own backoff.
            others = None
            while proc.poll() is None:
                ok = m.stats()["by_route"].get("responses", {}).get("ok", 0)
                if others is None and ok >= n - 1:
                    others = time.perf_counter() - start
                time.sleep(0.05)
            st = m.stats()
            res[name] = {"wall_s": others or time.perf_counter() - start,
                         "process_wall_s": time.perf_counter() - start,
                         "rate_limited": st["rate_limited"], "during_cooldown": st["during_cooldown"]}
    plain.unlink()
    poisoned.unlink()
    out["poison"] = res
    return out


def limits_table(l) -> str:
    def row(label, t):
        return (f"| {label} | {t['requests']:,} | {t['answered_429']} ({100 * t['share_429']:.2f} %) |"
                f" {t['tokens']:,} | {100 * t['share_of_tpm']:.1f} % |")
    sl, po = l["sliding"], l["poison"]
    lines = [
        f"**Limits nobody told us** (mock enforcing RPM {l['rpm']} / TPM {l['tpm']:,} over a rolling minute,"
        f" {l['seconds']} s, concurrency 64, no `--rpm`/`--tpm`; ~380 tokens per call so TPM binds)",
        "",
        "| run | requests | answered 429 | tokens | share of TPM used |",
        "|---|---|---|---|---|",
        row("abl, provider sends rate-limit headers", l["hidden_headers"]),
        row("abl, no headers (learned, adaptive)", l["hidden_no_headers"]),
        row("async-batch-llm (Python), no headers", l["python_hidden_no_headers"]),
        row("two abl processes on one quota, headers", l["two_processes"]),
        "",
        f"**Sliding window** (500 requests in any 10 s, headers stating 3,000 a minute, {sl['items']:,} items):"
        f" wall {sl['wall_s']:.1f} s against an ideal of {sl['ideal_s']:.1f} s"
        f" ({100 * (sl['wall_s'] / sl['ideal_s'] - 1):+.1f} %), {sl['answered_429']} answered 429.",
        "",
        f"**One item answered 429 without a hint on every call** ({po['items']:,} items, 50 ms, concurrency 64):"
        f" the other {po['items'] - 1:,} are done in {po['poisoned']['wall_s']:.1f} s with it,"
        f" {po['baseline']['wall_s']:.1f} s without ({po['poisoned']['wall_s'] / po['baseline']['wall_s']:.2f}×);"
        f" the poisoned item gets {po['poisoned']['rate_limited']} 429s on its own backoff and the run ends at"
        f" {po['poisoned']['process_wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def resume(cfg):
    n = cfg["resume_items"]
    inp = write_input(n)
    res = {"items": n}
    with Mock("--latency-ms", "5", "--track-prompts") as m:
        with tempfile.TemporaryDirectory() as d:
            m.reset()
            wall = kill_at_half_rust(m, inp, n, Path(d) / "run.sqlite", Path(d) / "out.jsonl")
            res["rust"] = {"resume_wall_s": wall, "repeated_calls": repeated_calls(m),
                           "calls": m.stats()["requests"]}
            m.reset()
            wall, _ = kill_at_half_python(m, n, Path(d) / "py.sqlite")
            res["python"] = {"resume_wall_s": wall, "repeated_calls": repeated_calls(m),
                             "calls": m.stats()["requests"]}
    inp.unlink()
    return res


def plots(results, img: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    rows = results["http"]
    cs = [r["concurrency"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cs, [r["limit"] for r in rows], "k--", label="limit (C / 50 ms)")
    ax.plot(cs, [med(r["rust"]) for r in rows], "o-", label="abl (Rust)")
    ax.plot(cs, [med(r["python"]) for r in rows], "s-", label="async-batch-llm 0.28 (Python)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("items/s (median)")
    ax.set_title("HTTP throughput at 50 ms latency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(img / "bench-throughput.png", dpi=110)
    plt.close(fig)
    q = results.get("quota")
    if q:
        fig, ax = plt.subplots(figsize=(6, 4))
        for tool, label in (("rust", "abl (Rust)"), ("python", "async-batch-llm 0.28 (Python)")):
            s = q[tool]["series"]
            ax.plot([p[0] for p in s], [p[1] for p in s], label=label)
        t_end = q["seconds"]
        ax.plot([0, t_end], [0, q["tpm"] * t_end / 60], "k--", label="TPM limit")
        ax.set_xlabel("seconds")
        ax.set_ylabel("tokens served (cumulative)")
        ax.set_title("Strict quota: RPM 600 / TPM 60,000")
        ax.legend()
        fig.tight_layout()
        fig.savefig(img / "bench-quota.png", dpi=110)
        plt.close(fig)


def ratio(a, b):
    return f"{a / b:.1f}×" if a and b else "n/a"


def tables(results) -> str:
    m = results["meta"]
    o = results["overhead"]
    lines = [
        f"Machine: {m['machine']}; {m['cpus']} cores; Python {m['python']}; async-batch-llm {m['python_pkg']};"
        f" abl {m['abl']}. Mode `{m['mode']}`, {m['reps']} repetition(s) per cell, runs alternating, medians shown."
        f" Run on {m['date']} in {m['runner_s']:.0f} s with `{m['command']}`.",
        "",
        "**Framework overhead** (fake in-process provider, zero latency, concurrency 64, "
        f"{o['items']:,} items)",
        "",
        "| tool | items/s |",
        "|---|---|",
        f"| abl (Rust) | {med(o['rust_items_per_s']):,.0f} |",
        f"| async-batch-llm (Python) | {med(o['python_items_per_s']):,.0f} |",
        f"| ratio | {ratio(med(o['rust_items_per_s']), med(o['python_items_per_s']))} |",
        "",
        f"**HTTP throughput** (OpenAI Responses wire format, mock at 50 ms, items = {m['http_waves']} waves of C)",
        "",
        "| concurrency | limit items/s | abl items/s (% of limit) | Python items/s (% of limit) | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in results["http"]:
        a, b = med(r["rust"]), med(r["python"])
        lines.append(f"| {r['concurrency']} | {r['limit']:,.0f} | {a:,.0f} ({100 * a / r['limit']:.1f} %) |"
                     f" {b:,.0f} ({100 * b / r['limit']:.1f} %) | {ratio(a, b)} |")
    rl = results["rate_limit"]
    def rl_med(tool, key):
        return med([x[key] for x in rl[tool]])
    lines += [
        "",
        f"**Rate limits** (5 % of calls answered 429 with a 1 s hint, 50 ms latency, concurrency 64,"
        f" {rl['items']:,} items). The Python package waits its `cooldown_seconds` (default 300 s) and"
        " never shortens to the hint; at 300 s this run would take hours, so it runs with"
        " `cooldown_seconds=1`, equal to the hint.",
        "",
        "| tool | wall s | succeeded | 429s answered | requests during a signalled cooldown |",
        "|---|---|---|---|---|",
        f"| abl (Rust) | {rl_med('rust', 'wall_s'):.1f} | {rl_med('rust', 'succeeded'):.0f} |"
        f" {rl_med('rust', 'retries'):.0f} | {rl_med('rust', 'during_cooldown'):.0f} |",
        f"| async-batch-llm (Python) | {rl_med('python', 'wall_s'):.1f} | {rl_med('python', 'succeeded'):.0f} |"
        f" {rl_med('python', 'retries'):.0f} | {rl_med('python', 'during_cooldown'):.0f} |",
    ]
    q = results["quota"]
    lines += [
        "",
        f"**Strict quota** (mock enforcing RPM {q['rpm']} / TPM {q['tpm']:,} over a rolling minute;"
        f" {q['seconds']} s; both tools told the same limits; ~380 tokens per call so TPM binds)",
        "",
        "Share = tokens served / (TPM × started minutes): the most a rolling minute lets through.",
        "",
        "| tool | calls served | tokens | share of TPM used | 429s caused |",
        "|---|---|---|---|---|",
    ]
    for tool, label in (("rust", "abl (Rust)"), ("python", "async-batch-llm (Python)")):
        t = q[tool]
        lines.append(f"| {label} | {t['requests_ok']:,} | {t['tokens']:,} | {100 * t['share_of_tpm']:.1f} % |"
                     f" {t['answered_429']} |")
    mem = results["memory"]
    lines += [
        "",
        f"**Memory** (peak RSS streaming {mem['items']:,} items through a fake provider, bounded queues)",
        "",
        "| tool | peak RSS | items/s |",
        "|---|---|---|",
        f"| abl (Rust) | {mem['rust_peak_rss_kib'] / 1024:.1f} MiB | {mem['rust_items_per_s']:,.0f} |",
        f"| async-batch-llm (Python) | {mem['python_peak_rss_kib'] / 1024:.1f} MiB | {mem['python_items_per_s']:,.0f} |",
    ]
    rs = results["resume"]
    lines += [
        "",
        f"**Resume** (SQLite checkpoint, {rs['items']:,} items at 5 ms, concurrency 64, SIGKILL at 50 %,"
        " then the same command again)",
        "",
        "| tool | resumed run wall s | calls repeated for finished items | calls in total |",
        "|---|---|---|---|",
        f"| abl (Rust) | {rs['rust']['resume_wall_s']:.2f} | {rs['rust']['repeated_calls']} | {rs['rust']['calls']:,} |",
        f"| async-batch-llm (Python) | {rs['python']['resume_wall_s']:.2f} | {rs['python']['repeated_calls']} |"
        f" {rs['python']['calls']:,} |",
        "",
        "Calls repeated counts prompts the mock saw more than once: items in flight at the kill are"
        " called again by design (their results were never recorded).",
        "",
        "![throughput](img/bench-throughput.png) ![quota](img/bench-quota.png)",
    ]
    return "\n".join(lines)


START = "<!-- side-by-side:start -->"
END = "<!-- side-by-side:end -->"
LIMITS_START = "<!-- limits:start -->"
LIMITS_END = "<!-- limits:end -->"


def replace_block(doc: Path, start: str, end: str, text: str, heading: str):
    """Puts `text` between the markers of `doc`, or at its end under `heading`."""
    body = doc.read_text()
    block = f"{start}\n{text}\n{end}"
    if start in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    doc.write_text(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated scenarios")
    for key in FULL:
        if key != "http_concurrency":
            ap.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"override {key}")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    overrides = []
    for key in FULL:
        v = getattr(args, key, None)
        if v is not None:
            cfg[key] = v
            overrides.append(f"--{key.replace('_', '-')} {v}")
    mode = "quick" if args.quick else "full"
    t0 = time.perf_counter()
    import importlib.metadata as md
    results = {}
    names = ["overhead", "http", "rate_limit", "quota", "memory", "resume", "limits"]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    for name in names:
        s = time.perf_counter()
        print(f"[{time.perf_counter() - t0:6.0f} s] {name} …", flush=True)
        results[name] = globals()[name](cfg)
        print(f"         {name} done in {time.perf_counter() - s:.0f} s", flush=True)
    results["meta"] = {
        "mode": mode,
        "reps": cfg["reps"],
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "python_pkg": md.version("async-batch-llm"),
        "abl": subprocess.run([str(ABL), "--version"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "runner_s": time.perf_counter() - t0,
        "command": " ".join(["bench/quick" if args.quick else "bench/run", *overrides]),
        "http_waves": cfg["http_waves"],
    }
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    # A subset (--only) never replaces the results of a whole run.
    name = mode if len(names) == 7 else f"{mode}-only"
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    if "limits" in results:
        text = limits_table(results["limits"])
        print(text)
        if not args.quick:
            replace_block(ROOT / "docs" / "benchmarks.md", LIMITS_START, LIMITS_END, text,
                          "## Limits nobody told us")
    if len(names) == 7:
        text = tables(results)
        print(text)
        if not args.quick:
            plots(results, ROOT / "docs" / "img")
            replace_block(ROOT / "docs" / "benchmarks.md", START, END, text,
                          "## Side by side with the Python package")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
