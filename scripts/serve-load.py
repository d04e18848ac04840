#!/usr/bin/env python3
"""Load and fault behaviour of `parity serve` on loopback (stdlib only): starts the server, then

1. steady: K streaming clients, each sending one completion after another for S seconds:
   throughput (generated tokens per second, all clients), time to first token, and p50/p99 of the
   time between tokens, pooled over every stream;
2. disconnects: K clients start long streams and close their sockets after 3 events: how long until
   no generation is running, and how many the server counted cancelled;
3. flood: F requests at once, past the queue: how many got 200 and how many 429, and that all were
   answered;
4. steady again, to see the resident memory (VmRSS) settle rather than grow;

and prints the figures, RSS after warm-up and after each phase, then stops the server with SIGTERM
and checks it exits 0. Exits 1 if a request failed other than with 429, a generation outlived its
client by more than 10 s, or the server did not stop cleanly.

    python3 scripts/serve-load.py --model ~/.cache/parity/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --threads 2 --clients 4 --seconds 30
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Once upon a time", "The capital of France is", "Write a short poem about the sea.", "In 1492,", "def fibonacci(n):"]


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def request(port, path, body, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(
        "POST" if body is not None else "GET", path, body=json.dumps(body) if body is not None else None, headers={"Content-Type": "application/json"}
    )
    return conn, conn.getresponse()


def health(port):
    conn, r = request(port, "/health", None)
    out = json.loads(r.read())
    conn.close()
    return out["requests"]


def stream(port, body, stop_after=None):
    """(status, [event arrival times], finish chunk or None), from just before sending."""
    t0 = time.perf_counter()
    conn, r = request(port, "/v1/completions", dict(body, stream=True))
    times, final = [], None
    if r.status != 200:
        r.read()
        conn.close()
        return r.status, t0, times, None
    while True:
        line = r.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            final = event
        else:
            times.append(time.perf_counter())
        if stop_after is not None and len(times) >= stop_after:
            break
    conn.close()
    return r.status, t0, times, final


def steady(port, clients, seconds, max_tokens):
    deadline = time.perf_counter() + seconds
    ttft, gaps, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def client(i):
        n = 0
        while time.perf_counter() < deadline:
            body = {"prompt": PROMPTS[(i + n) % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8, "seed": i * 1000 + n}
            status, t0, times, final = stream(port, body)
            n += 1
            with lock:
                if status != 200 or final is None:
                    errors.append(status)
                    continue
                if times:
                    ttft.append(times[0] - t0)
                    gaps.extend(b - a for a, b in zip(times, times[1:]))
                tokens[0] += len(times)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "tokens": tokens[0],
        "tokens_per_s": tokens[0] / wall,
        "streams": len(ttft),
        "ttft_p50_ms": 1000 * percentile(ttft, 50),
        "ttft_p99_ms": 1000 * percentile(ttft, 99),
        "itl_p50_ms": 1000 * percentile(gaps, 50),
        "itl_p99_ms": 1000 * percentile(gaps, 99),
        "errors": errors,
    }


def disconnects(port, clients):
    before = health(port)
    threads = [threading.Thread(target=stream, args=(port, {"prompt": p, "max_tokens": 2000, "temperature": 0}, 3)) for p in PROMPTS[:clients]]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while True:
        c = health(port)
        if c["running"] == 0 and c["waiting"] == 0:
            break
        if time.perf_counter() - t0 > 10:
            return {"settled_s": None, "cancelled": c["cancelled"] - before["cancelled"]}
        time.sleep(0.01)
    # A prompt the model answers within 3 tokens ends by itself: completed, not cancelled.
    done = {k: c[k] - before[k] for k in ("cancelled", "completed")}
    return {"settled_s": time.perf_counter() - t0, **done}


def flood(port, n):
    statuses = []
    lock = threading.Lock()

    def one(i):
        conn, r = request(port, "/v1/completions", {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 8, "temperature": 0})
        r.read()
        conn.close()
        with lock:
            statuses.append(r.status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "sent": n,
        "ok": statuses.count(200),
        "rejected_429": statuses.count(429),
        "other": len(statuses) - statuses.count(200) - statuses.count(429),
        "wall_s": time.perf_counter() - t0,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--parity", default=str(ROOT / "target/release/parity"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clients", type=int, default=4, help="K concurrent streaming clients (and the server's --max-concurrent)")
    p.add_argument("--queue", type=int, default=4, help="the server's --max-queue")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args(argv)

    cmd = [args.parity, "serve", "--model", args.model, "--port", "0", "--threads", str(args.threads)]
    cmd += ["--max-concurrent", str(args.clients), "--max-queue", str(args.queue)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    failed = []
    try:
        line = server.stdout.readline()
        if not line.startswith("listening on "):
            sys.exit(f"serve-load: parity serve did not start: {line!r}")
        port = int(line.rsplit(":", 1)[1])
        print(f"command: {' '.join(cmd)}")
        stream(port, {"prompt": "Hello", "max_tokens": 4, "temperature": 0})  # warm-up
        print(f"RSS after warm-up: {rss_mib(server.pid):.1f} MiB")
        for name, run in [
            ("steady", lambda: steady(port, args.clients, args.seconds, args.max_tokens)),
            ("disconnects", lambda: disconnects(port, args.clients)),
            ("flood", lambda: flood(port, 3 * (args.clients + args.queue))),
            ("steady again", lambda: steady(port, args.clients, args.seconds, args.max_tokens)),
        ]:
            result = run()
            print(f"{name}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})}")
            print(f"RSS after {name}: {rss_mib(server.pid):.1f} MiB")
            if result.get("errors") or result.get("other") or ("settled_s" in result and result["settled_s"] is None):
                failed.append(name)
        print(f"server counts: {json.dumps(health(port))}")
    finally:
        os.kill(server.pid, signal.SIGTERM)
        code = server.wait(timeout=30)
    print(f"server exit code after SIGTERM: {code}")
    if failed or code != 0:
        sys.exit(f"serve-load: failed: {', '.join(failed) or 'the server did not exit 0'}")


if __name__ == "__main__":
    main()
