#!/usr/bin/env python3
"""Benchmark llmux against a direct connection, nginx and the bare actix-web + awc forwarder
(examples/forwarder.rs, the floor of llmux's stack), in one run. Called by bench/run.sh.

Every process this starts is killed by PID before it exits, and every load is bounded in time.
"""
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LLMUX_BUILD_DIR=target/profiling runs the profiling build (release with line tables) instead.
RELEASE = os.environ.get("LLMUX_BUILD_DIR", os.path.join(ROOT, "target", "release"))
QUICK = "--quick" in sys.argv
REPEATS = 1 if QUICK else 3
WRK_SECONDS = 3 if QUICK else 10
RATE_SECONDS = 3 if QUICK else 10
UPLOAD_MB = 50 if QUICK else 200
STREAMS = 1000
# `--log info` measures llmux with its access log (the default); the comparison default is warn,
# like nginx with its access log off.
LLMUX_LOG = "info" if "--log-info" in sys.argv else "warn"
CORES = os.cpu_count() or 1
PROXY_CPU = "0"
LOAD_CPU = "1" if CORES > 1 else "0"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CHAT_BODY = '{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello! How are you today?"}]}'

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


def wait_port(port, deadline=15):
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


def rss_mb(pid):
    pages = int(open(f"/proc/{pid}/statm").read().split()[1])
    return pages * PAGE / 1e6


class RssSampler:
    """Peak RSS of a process while a scenario runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0.0, True
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while self.running:
            if self.pid:
                self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def wrk(url):
    script = os.path.join(WORK, "post.lua")
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{WRK_SECONDS}s", "--latency", "-s", script, url],
        capture_output=True, text=True, timeout=WRK_SECONDS + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    def latency(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {"rps": rps, "requests": requests, "errors": int(non2xx.group(1)) if non2xx else 0,
            "p50_ms": latency(50), "p99_ms": latency(99)}


def client(*args, timeout=300):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, os.path.join(RELEASE, "examples", "bench_client"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def scenario_throughput(target):
    pid = target["pid"]
    before = cpu_seconds(pid) if pid else 0
    result = wrk(target["url"] + "/v1/chat/completions")
    if pid:
        result["cpu_us_per_req"] = (cpu_seconds(pid) - before) * 1e6 / max(result["requests"], 1)
        result["rss_mb"] = rss_mb(pid)
    return result


def scenario_rate(target):
    return client("rate", target["url"] + "/v1/chat/completions", 200, RATE_SECONDS)


def scenario_streams(target):
    with RssSampler(target["pid"]) as sampler:
        result = client("streams", target["url"] + "/v1/chat/completions", STREAMS, 20, 20)
    result["peak_rss_mb"] = sampler.peak
    return result


def scenario_upload(target):
    idle = rss_mb(target["pid"]) if target["pid"] else 0
    with RssSampler(target["pid"]) as sampler:
        result = client("upload", target["url"] + "/v1/audio/transcriptions", UPLOAD_MB)
    if result["status"] != 200:
        raise RuntimeError(f"upload answered {result['status']}: {result['answer'][:120]}")
    result["rss_growth_mb"] = sampler.peak - idle if target["pid"] else 0
    return result


SCENARIOS = [("throughput", scenario_throughput), ("rate", scenario_rate),
             ("streams", scenario_streams), ("upload", scenario_upload)]


def machine_line():
    model = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{platform.node()} · {platform.system()} {platform.release()} · {CORES} cores · {model}"


def main():
    global WORK
    WORK = tempfile.mkdtemp(prefix="llmux-bench-")
    with open(os.path.join(WORK, "post.lua"), "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f"wrk.body = {json.dumps(CHAT_BODY)}\n")
    mock_port, nginx_port, llmux_port, forwarder_port = free_port(), free_port(), free_port(), free_port()
    spawn([os.path.join(RELEASE, "examples", "mock_upstream"), str(mock_port), "1"], LOAD_CPU)
    wait_port(mock_port)

    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(WORK, d), exist_ok=True)
    with open(os.path.join(WORK, "nginx.conf"), "w") as f:
        f.write(f"""
worker_processes 1;
master_process off;
daemon off;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {WORK}/body; proxy_temp_path {WORK}/proxy; fastcgi_temp_path {WORK}/fastcgi;
  uwsgi_temp_path {WORK}/uwsgi; scgi_temp_path {WORK}/scgi;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{nginx_port} backlog=4096;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    nginx = spawn(["nginx", "-c", os.path.join(WORK, "nginx.conf"), "-p", WORK], PROXY_CPU,
                  stderr=subprocess.DEVNULL)
    wait_port(nginx_port)

    forwarder = spawn([os.path.join(RELEASE, "examples", "forwarder"), str(forwarder_port),
                       f"http://127.0.0.1:{mock_port}", "1"], PROXY_CPU)
    wait_port(forwarder_port)

    configs = os.path.join(WORK, "configs")
    os.makedirs(configs)
    with open(os.path.join(configs, "bench.json"), "w") as f:
        json.dump({"mock": {"target_base_url": f"http://127.0.0.1:{mock_port}", "request_timeout": 60,
                            "models": {"bench": {"endpoints": [
                                {"path": "v1/chat/completions", "target_model_name": "bench-target"},
                                {"path": "v1/audio/transcriptions", "target_model_name": "bench-target"}]}}}}, f)
    llmux = spawn([os.path.join(RELEASE, "llmux"), "--config-dir", configs, "--port", str(llmux_port),
                   "--workers", "1", "--log", LLMUX_LOG, "--max-upload-bytes", str(1 << 30)], PROXY_CPU, stdout=subprocess.DEVNULL)
    wait_port(llmux_port)
    time.sleep(0.5)
    idle_rss = rss_mb(llmux.pid)

    targets = {
        "direct": {"url": f"http://127.0.0.1:{mock_port}", "pid": None},
        "nginx": {"url": f"http://127.0.0.1:{nginx_port}", "pid": nginx.pid},
        "forwarder": {"url": f"http://127.0.0.1:{forwarder_port}", "pid": forwarder.pid},
        "llmux": {"url": f"http://127.0.0.1:{llmux_port}", "pid": llmux.pid},
    }
    runs = {name: {scenario: [] for scenario, _ in SCENARIOS} for name in targets}
    order = list(targets)
    for repeat in range(REPEATS):
        for scenario, measure in SCENARIOS:
            for name in (order if repeat % 2 == 0 else order[::-1]):
                try:
                    result = measure(targets[name])
                except Exception as error:  # a failed scenario is reported, not fatal
                    result = {"error": str(error)[:200]}
                runs[name][scenario].append(result)
                print(f"repeat {repeat + 1} {scenario:10} {name:6} {json.dumps(result)}", file=sys.stderr)
    report = render(runs, idle_rss)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = os.path.join(ROOT, "bench", "results", f"{stamp}{'-quick' if QUICK else ''}.md")
    with open(path, "w") as f:
        f.write(report)
    print(report)
    print(f"written to {path}", file=sys.stderr)


def med(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else float("nan")


def render(runs, idle_rss):
    def field(name, scenario, key):
        return [r.get(key) for r in runs[name][scenario]]

    def ratio(name, other, scenario, key, transform=lambda v, d: v):
        pairs = zip(field(name, scenario, key), field(other, scenario, key))
        return med([a / b for a, b in pairs if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b])

    def added(name, scenario, key):
        pairs = zip(field(name, scenario, key), field("direct", scenario, key))
        return med([a - b for a, b in pairs if isinstance(a, (int, float)) and isinstance(b, (int, float))])

    rows = []
    proxies = ("nginx", "forwarder", "llmux")

    def fmt(v):
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        return f"{v:,.2f}" if isinstance(v, float) else str(v)

    def row(label, values, ratios, target):
        """values: name -> figure; ratios: llmux over direct, nginx, forwarder (None: not shown)."""
        cells = [values.get(n) for n in ("direct",) + proxies] + list(ratios)
        rows.append(f"| {label} | " + " | ".join(fmt(c) for c in cells) + f" | {target} |")

    def measured(scenario, key, names=("direct",) + proxies):
        return {n: med(field(n, scenario, key)) for n in names}

    def ratios(scenario, key, against=("direct", "nginx", "forwarder")):
        return [ratio("llmux", other, scenario, key) if other in against else None
                for other in ("direct", "nginx", "forwarder")]

    row("(a) chat req/s, 64 conns", measured("throughput", "rps"), ratios("throughput", "rps"), "≥ 0.9× nginx")
    for key, label in (("p50_ms", "(a) p50 ms"), ("p99_ms", "(a) p99 ms")):
        row(label, measured("throughput", key), ratios("throughput", key), "")
    row("(a) proxy CPU µs/req", measured("throughput", "cpu_us_per_req", proxies),
        ratios("throughput", "cpu_us_per_req", ("nginx", "forwarder")), "≤ 1.10× forwarder (nginx beside it)")
    row("(a) proxy RSS MB after load", measured("throughput", "rss_mb", proxies), [None] * 3, "")
    for key, label, target in (("p50_ms", "(b) 200 req/s: added p50 ms", "≤ 0.5 ms"),
                               ("p99_ms", "(b) 200 req/s: added p99 ms", "≤ nginx")):
        values = {n: added(n, "rate", key) for n in proxies}
        values["direct"] = med(field("direct", "rate", key))
        row(label, values, [None] * 3, target)
    for key, label, target in (("ttfc_p50_ms", "(c) 1000 streams: added TTFC p50 ms", ""),
                               ("ttfc_p99_ms", "(c) 1000 streams: added TTFC p99 ms", "≤ nginx")):
        values = {n: added(n, "streams", key) for n in proxies}
        values["direct"] = med(field("direct", "streams", key))
        row(label, values, [None] * 3, target)
    for key, label, target in (("complete", "(c) streams complete", "1000"),
                               ("bunched_streams", "(c) streams bunched", "0"),
                               ("tight_gap_fraction", "(c) gaps < gap/4 (fraction)", "")):
        row(label, measured("streams", key), [None] * 3, target)
    row(f"(d) {UPLOAD_MB} MB upload MB/s", measured("upload", "mb_per_s"), ratios("upload", "mb_per_s"),
        "≥ 1.0× nginx")
    row("(d) upload peak − idle RSS MB", measured("upload", "rss_growth_mb", proxies), [None] * 3, "≤ 16 MB")
    row("(e) llmux idle RSS MB", {"llmux": idle_rss}, [None] * 3, "≤ 15 MB")
    row("(e) RSS with 1000 open streams MB", measured("streams", "peak_rss_mb", proxies), [None] * 3, "≤ 64 MB")

    errors = [f"- {n} {s}: {r['error']}" for n in runs for s in runs[n] for r in runs[n][s] if "error" in r]
    load = open("/proc/loadavg").read().split()[:3]
    head = [
        f"# llmux benchmark {'(quick) ' if QUICK else ''}{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "",
        f"Machine: {machine_line()}. Load average at the end: {' '.join(load)}.",
        f"Proxies pinned to CPU {PROXY_CPU} (llmux --workers 1 --log {LLMUX_LOG}, nginx one process with no access log, the bare forwarder one worker); load generator and mock on CPU {LOAD_CPU}.",
        f"Repeats: {REPEATS}, proxies alternated; figures are medians over repeats, ratios are medians of per-repeat ratios.",
        "",
        "| figure | direct | nginx | forwarder | llmux | llmux / direct | llmux / nginx | llmux / forwarder | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows + ([""] + ["Failures:"] + errors if errors else []) + [""])


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
