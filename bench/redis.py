#!/usr/bin/env python3
"""The Redis variant of the benchmark: llmux with and without --redis-url, in one run, on the same
machine. Called by `bench/run.sh --redis [--quick]`.

What Redis costs a request: a Responses API create stores its id in Redis (one SET, waited for
before the chunk that carries the id goes out); a chat completion without access control does not
touch Redis; a chat completion with a client key runs the admission script (one EVALSHA for the
key's request, token and concurrency limits, all far from full) and, once the answer is done, the
settlement and slot release in the background (one more script call, batched). Each is measured at
a fixed 200 req/s (added p50/p99 of the Redis variant over the same llmux without --redis-url)
and under wrk load (CPU per request of llmux and of redis-server).

Every process this starts is killed by PID before it exits, and every load is bounded in time.
"""
import datetime
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as base  # noqa: E402  (the harness's process, CPU and client helpers)

QUICK = "--quick" in sys.argv
REPEATS = 1 if QUICK else 3
SECONDS = 3 if QUICK else 10
RESPONSES_BODY = '{"model":"bench","input":"Hello! How are you today?"}'
BENCH_KEY = "llmux_bench_key_with_large_limits"
# Every limit a key can carry that admission checks on each request, far from full.
KEY_LIMITS = {"requests_per_minute": 100_000_000, "tokens_per_minute": 1_000_000_000_000,
              "max_concurrent_requests": 100_000}
# (label, plain target, Redis target, scenario)
PAIRS = [("responses", "llmux", "llmux+redis", "responses"),
         ("chat", "llmux", "llmux+redis", "chat"),
         ("chat with a key", "llmux+key", "llmux+key+redis", "chat")]


def redis_keys(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"DBSIZE\r\n")
        return int(s.recv(64).decode().strip().lstrip(":"))


def wrk(url, body, work, key=None):
    script = os.path.join(work, f"post-{abs(hash(body))}-{key is not None}.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        if key:
            f.write(f'wrk.headers["Authorization"] = "Bearer {key}"\n')
        f.write(f"wrk.body = {json.dumps(body)}\n")
    out = subprocess.run(
        ["taskset", "-c", base.LOAD_CPU, "wrk", "-t1", "-c64", f"-d{SECONDS}s", "--latency", "-s", script, url],
        capture_output=True, text=True, timeout=SECONDS + 60,
    ).stdout
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1))}


def main():
    work = tempfile.mkdtemp(prefix="llmux-bench-redis-")
    mock_port, redis_port = base.free_port(), base.free_port()
    plain_port, shared_port = base.free_port(), base.free_port()
    base.spawn([os.path.join(base.RELEASE, "examples", "mock_upstream"), str(mock_port), "1"], base.LOAD_CPU)
    base.wait_port(mock_port)
    redis = base.spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", work], base.LOAD_CPU, stdout=subprocess.DEVNULL)
    base.wait_port(redis_port)

    configs = os.path.join(work, "configs")
    os.makedirs(configs)
    with open(os.path.join(configs, "bench.json"), "w") as f:
        json.dump({"mock": {"target_base_url": f"http://127.0.0.1:{mock_port}", "request_timeout": 60,
                            "models": {"bench": {"endpoints": [
                                {"path": "v1/chat/completions", "target_model_name": "bench-target"},
                                {"path": "v1/responses", "target_model_name": "bench-target"}]}}}}, f)
    # The same providers plus a key file: access control on, one key with large limits.
    keyed = os.path.join(work, "configs-key")
    os.makedirs(keyed)
    with open(os.path.join(configs, "bench.json")) as source, open(os.path.join(keyed, "bench.json"), "w") as f:
        f.write(source.read())
    with open(os.path.join(keyed, "keys.json"), "w") as f:
        json.dump({"llmux_access": {"keys": [dict(name="bench", key_sha256=hashlib.sha256(BENCH_KEY.encode()).hexdigest(),
                                                  **KEY_LIMITS)]}}, f)
    redis_url = ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
    processes = {}
    for name, config_dir, extra in (("llmux", configs, []), ("llmux+redis", configs, redis_url),
                                    ("llmux+key", keyed, []), ("llmux+key+redis", keyed, redis_url)):
        port = base.free_port()
        command = [os.path.join(base.RELEASE, "llmux"), "--config-dir", config_dir, "--workers", "1",
                   "--log", "warn", "--port", str(port)] + extra
        processes[name] = (port, base.spawn(command, base.PROXY_CPU, stdout=subprocess.DEVNULL).pid)
    for port, _ in processes.values():
        base.wait_port(port)
    time.sleep(0.5)

    scenarios = {"responses": ("/v1/responses", RESPONSES_BODY), "chat": ("/v1/chat/completions", None)}
    runs = [(scenario, (plain, shared)) for _, plain, shared, scenario in PAIRS]
    results = {(t, s, k): [] for s, pair in runs for t in pair for k in ("rate", "load")}
    for repeat in range(REPEATS):
        for scenario, pair in runs:
            path, body = scenarios[scenario]
            for name in (pair if repeat % 2 == 0 else pair[::-1]):
                port, pid = processes[name]
                key = BENCH_KEY if "+key" in name else None
                url = f"http://127.0.0.1:{port}{path}"
                args = ["rate", url, 200, SECONDS] + ([body] if body else [])
                os.environ.pop("BENCH_API_KEY", None)
                if key:
                    os.environ["BENCH_API_KEY"] = key
                rate = base.client(*args)
                results[(name, scenario, "rate")].append(rate)
                before, redis_before = base.cpu_seconds(pid), base.cpu_seconds(redis.pid)
                load = wrk(url, body or base.CHAT_BODY, work, key)
                load["cpu_us_per_req"] = (base.cpu_seconds(pid) - before) * 1e6 / max(load["requests"], 1)
                load["redis_cpu_us_per_req"] = (base.cpu_seconds(redis.pid) - redis_before) * 1e6 / max(load["requests"], 1)
                results[(name, scenario, "load")].append(load)
                print(f"repeat {repeat + 1} {scenario:9} {name:11} rate {json.dumps(rate)} load {json.dumps(load)}",
                      file=sys.stderr)
    keys = redis_keys(redis_port)
    report = render(results, keys)
    os.makedirs(os.path.join(base.ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = os.path.join(base.ROOT, "bench", "results", f"{stamp}-redis{'-quick' if QUICK else ''}.md")
    with open(path, "w") as f:
        f.write(report)
    print(report)
    print(f"written to {path}", file=sys.stderr)


def render(results, keys):
    med = base.med
    fmt = lambda v: "—" if v is None or v != v else f"{v:,.2f}"
    rows = []
    for label, plain_name, shared_name, scenario in PAIRS:
        for key in ("p50_ms", "p99_ms"):
            plain = [r.get(key) for r in results[(plain_name, scenario, "rate")]]
            shared = [r.get(key) for r in results[(shared_name, scenario, "rate")]]
            added = med([b - a for a, b in zip(plain, shared)
                         if isinstance(a, (int, float)) and isinstance(b, (int, float))])
            target = "< 1 ms" if key == "p99_ms" else ""
            rows.append(f"| {label} at 200 req/s: {key.replace('_ms', '')} ms | {fmt(med(plain))} | "
                        f"{fmt(med(shared))} | {fmt(added)} | {target} |")
        errors = sum(r.get("errors", 0) for t in (plain_name, shared_name) for r in results[(t, scenario, "rate")])
        rows.append(f"| {label} at 200 req/s: failed requests | | | {errors} | 0 |")
        for key, what in (("rps", "req/s, 64 conns"), ("cpu_us_per_req", "llmux CPU µs/req"),
                           ("redis_cpu_us_per_req", "redis-server CPU µs/req")):
            plain = med([r.get(key) for r in results[(plain_name, scenario, "load")]])
            shared = med([r.get(key) for r in results[(shared_name, scenario, "load")]])
            added = shared - plain if key != "rps" else shared / plain if plain else float("nan")
            rows.append(f"| {label}: {what} | {fmt(plain)} | {fmt(shared)} | "
                        f"{fmt(added)}{' ×' if key == 'rps' else ''} | |")
    load = open("/proc/loadavg").read().split()[:3]
    head = [
        f"# llmux Redis benchmark {'(quick) ' if QUICK else ''}{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "",
        f"Machine: {base.machine_line()}. Load average at the end: {' '.join(load)}.",
        f"Every llmux process pinned to CPU {base.PROXY_CPU} (--workers 1 --log warn), one loaded at a time; "
        f"redis-server, load generator and mock on CPU {base.LOAD_CPU}. Repeats: {REPEATS}, alternated; medians. "
        f"Redis keys at the end: {keys} (the ids the Redis variant stored, the key's counters). "
        f"The key's limits: {json.dumps(KEY_LIMITS)}; the rate client and wrk send it as a bearer token.",
        "",
        "| figure | llmux | llmux --redis-url | added (× for req/s) | target |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + rows + [""])


if __name__ == "__main__":
    try:
        main()
    finally:
        base.stop_all()
