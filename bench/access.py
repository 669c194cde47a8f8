#!/usr/bin/env python3
"""Admission cost: llmux with 100,000 client keys and a minute limit vs llmux without access control.

Called by bench/access.sh. Same machine, same mock upstream, same load (wrk -t1 -c64 POSTing a chat
request); the proxy is pinned to CPU 0, wrk and the mock to CPU 1. Each repeat runs both llmux
instances in turn (order alternating). The figure is llmux's CPU time per request (user + system,
from /proc/PID/stat) with access control over without. Every process started here is killed by PID.
"""
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
QUICK = "--quick" in sys.argv
REPEATS = 2 if QUICK else 5
WRK_SECONDS = 3 if QUICK else 10
KEYS = 100_000
CORES = os.cpu_count() or 1
PROXY_CPU = "0"
LOAD_CPU = "1" if CORES > 1 else "0"
TICK = os.sysconf("SC_CLK_TCK")
CHAT_BODY = '{"model":"bench","messages":[{"role":"user","content":"Hello! How are you today?"}]}'

started = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, cpu, **kwargs):
    process = subprocess.Popen(["taskset", "-c", cpu] + args, **kwargs)
    started.append(process)
    return process


def stop_all():
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


def wait_port(port, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(url, script):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{WRK_SECONDS}s", "-s", script, url],
        capture_output=True, text=True, timeout=WRK_SECONDS + 60,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return requests, rps, int(non2xx.group(1)) if non2xx else 0


def main():
    work = tempfile.mkdtemp(prefix="llmux-access-bench-")
    mock_port = free_port()
    spawn([os.path.join(RELEASE, "examples", "mock_upstream"), str(mock_port), "1"], LOAD_CPU)
    wait_port(mock_port)
    provider = {"mock": {"target_base_url": f"http://127.0.0.1:{mock_port}", "request_timeout": 60,
                         "models": {"bench": {"endpoints": [
                             {"path": "v1/chat/completions", "target_model_name": "bench-target"}]}}}}

    # 100,000 keys; the one the load uses sits in the middle. Every key has a minute limit far
    # above what the run can send, so every request is admitted and pays the full check.
    client_key = "llmux_" + secrets.token_urlsafe(24)
    keys = []
    for i in range(KEYS):
        key = client_key if i == KEYS // 2 else "llmux_" + secrets.token_urlsafe(24)
        keys.append({"name": f"key-{i}", "owner_id": f"owner-{i % 1000}",
                     "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                     "allowed_models": ["bench", "other-*"],
                     "requests_per_minute": 1_000_000_000})
    dirs = {}
    for name in ("off", "on"):
        configs = os.path.join(work, name)
        os.makedirs(configs)
        with open(os.path.join(configs, "provider.json"), "w") as f:
            json.dump(provider, f)
        if name == "on":
            with open(os.path.join(configs, "keys.json"), "w") as f:
                json.dump({"llmux_access": {"keys": keys}}, f)
        dirs[name] = configs

    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f'wrk.headers["Authorization"] = "Bearer {client_key}"\n')
        f.write(f"wrk.body = {json.dumps(CHAT_BODY)}\n")

    targets = {}
    for name, configs in dirs.items():
        port = free_port()
        started_at = time.time()
        process = spawn([os.path.join(RELEASE, "llmux"), "--config-dir", configs, "--port", str(port),
                         "--workers", "1", "--log", "warn", "--watch", "off",
                         "--access-control", name], PROXY_CPU, stdout=subprocess.DEVNULL)
        wait_port(port)
        targets[name] = {"url": f"http://127.0.0.1:{port}/v1/chat/completions", "pid": process.pid,
                         "startup_s": time.time() - started_at}

    results = {name: [] for name in targets}
    order = list(targets)
    for repeat in range(REPEATS):
        for name in (order if repeat % 2 == 0 else order[::-1]):
            target = targets[name]
            before = cpu_seconds(target["pid"])
            requests, rps, errors = wrk(target["url"], script)
            cpu_us = (cpu_seconds(target["pid"]) - before) * 1e6 / max(requests, 1)
            results[name].append({"cpu_us_per_req": cpu_us, "rps": rps, "errors": errors})
            print(f"repeat {repeat + 1} access={name:3} {json.dumps(results[name][-1])}", file=sys.stderr)

    def med(name, field):
        return statistics.median(r[field] for r in results[name])

    ratios = [on["cpu_us_per_req"] / off["cpu_us_per_req"] for on, off in zip(results["on"], results["off"])]
    load = os.getloadavg()
    lines = [
        f"# Admission benchmark ({KEYS} keys, minute limits), {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        "",
        f"load average before/after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {REPEATS} repeats of wrk -t1 -c64 -d{WRK_SECONDS}s",
        "",
        "| llmux | CPU µs/req (median) | req/s (median) | non-2xx | start-up s |",
        "|---|---|---|---|---|",
    ]
    for name in ("off", "on"):
        errors = sum(r["errors"] for r in results[name])
        lines.append(f"| access control {name} | {med(name, 'cpu_us_per_req'):.1f} | {med(name, 'rps'):.0f} | {errors} | {targets[name]['startup_s']:.2f} |")
    lines += ["", f"CPU per request, on / off: median of per-repeat ratios **{statistics.median(ratios):.3f}** "
                  f"(each: {', '.join(f'{r:.3f}' for r in ratios)}); target ≤ 1.05"]
    report = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    path = os.path.join(ROOT, "bench", "results", f"{stamp}-access{'-quick' if QUICK else ''}.md")
    with open(path, "w") as f:
        f.write(report)
    print(report)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
