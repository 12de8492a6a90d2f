#!/usr/bin/env python3
"""Time from launch to the first new request when resuming a 10,000-item run
killed at 50 % (SPEC.md section 9 target: <= 0.5 s). Needs a release build:
cargo build --release -p abl && python3 scripts/resume-first-request.py

Runs `abl mock-server` at 5 ms latency, runs abl with a SQLite checkpoint,
SIGKILLs it once half the results are written, then runs the same command
again while polling the mock's /stats every 2 ms for the first request."""
import json, os, subprocess, tempfile, time, urllib.request
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = os.path.join(ROOT, "target", "release", "abl")
D = tempfile.mkdtemp(prefix="abl-first-request-")
PORT = 18778
URL = f"http://127.0.0.1:{PORT}"
n = 10000
with open(os.path.join(D, "res.jsonl"), "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"r{i}", "prompt": f"resume item {i}"}) + "\n")
for p in (os.path.join(D, "res.sqlite"), os.path.join(D, "res.sqlite-wal"), os.path.join(D, "res.sqlite-shm"), os.path.join(D, "res-out.jsonl")):
    if os.path.exists(p): os.remove(p)
mock = subprocess.Popen([A, "mock-server", "--port", str(PORT), "--latency-ms", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1)
def stats():
    return json.load(urllib.request.urlopen(URL + "/stats"))
env = dict(os.environ, OPENAI_API_KEY="k")
cmd = [A, "run", os.path.join(D, "res.jsonl"), "--model", "openai:gpt-4o-mini", "--base-url", URL + "/v1", "-o", os.path.join(D, "res-out.jsonl"),
       "--no-progress", "-c", "64", "--checkpoint", os.path.join(D, "res.sqlite"), "--resume", "successes"]
p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while p.poll() is None:
    if os.path.exists(os.path.join(D, "res-out.jsonl")) and sum(1 for _ in open(os.path.join(D, "res-out.jsonl"))) >= n // 2:
        p.kill(); break
    time.sleep(0.01)
p.wait()
urllib.request.urlopen(urllib.request.Request(URL + "/reset", method="POST"))
t0 = time.perf_counter()
p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
first = None
while p.poll() is None:
    if first is None and stats()["requests"] > 0:
        first = time.perf_counter() - t0
    time.sleep(0.002)
total = time.perf_counter() - t0
if first is None: first = float("nan")
s = stats()
print(f"launch to first new request: {first:.3f} s; resumed run {total:.2f} s; calls {s['requests']}")
mock.kill()
