#!/usr/bin/env python3
"""Scaling curves: how llmux's costs grow with models, streams, body size, pool members, client
keys and workers. Called by bench/curves.sh; one markdown table per curve in bench/results/.

CPU per request is counted in instructions with callgrind (bench/instructions.py), which load on
the machine does not disturb; times, RSS and throughput are measured natively and carry the load
average. Every loop is bounded in count and time; every process started is killed by PID.

    bench/curves.sh models|streams|bodies|pool|keys|workers|all [--quick] [--no-cpu]
"""
import datetime
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import instructions  # noqa: E402  (the callgrind harness, beside this file)
from instructions import BUILD, free_port, spawn, wait_port  # noqa: E402

ROOT = instructions.ROOT
QUICK = "--quick" in sys.argv
# --no-cpu: the models curve without its callgrind runs (minutes at 100,000 models).
NO_CPU = "--no-cpu" in sys.argv
PAGE = os.sysconf("SC_PAGE_SIZE")
MODELS_PER_FILE = 1000


def rss_mb(pid):
    return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE / 1e6


def load_average():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def write_result(name, text):
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = os.path.join(ROOT, "bench", "results", f"curve-{name}-{stamp}{'-quick' if QUICK else ''}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


def table(title, notes, header, rows):
    lines = [f"# {title} {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}", ""]
    lines += notes + [""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def http(method, url, body=None, timeout=60):
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def chat(port, model):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return http("POST", f"http://127.0.0.1:{port}/v1/chat/completions", body)[0]


def start_llmux(configs, log="warn", workers=1, extra=(), deadline=300):
    """Starts llmux natively; returns (process, port, seconds until it accepted a connection)."""
    port = free_port()
    started = time.monotonic()
    process = spawn([os.path.join(BUILD, "llmux"), "--config-dir", configs, "--port", str(port),
                     "--workers", str(workers), "--log", log, *extra],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"llmux did not listen within {deadline} s")
            time.sleep(0.005)
    return process, port, time.monotonic() - started


def stop(process):
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def model_files(directory, mock_port, count, extra_model=None):
    """`count` models over files of MODELS_PER_FILE, model `bench` first; returns the file names."""
    os.makedirs(directory, exist_ok=True)
    names = ["bench"] + [f"model-{i:06}" for i in range(1, count)]
    files = []
    for start in range(0, count, MODELS_PER_FILE):
        chunk = names[start:start + MODELS_PER_FILE]
        if start == 0 and extra_model:
            chunk = chunk + [extra_model]
        models = {name: {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "t"}]}
                  for name in chunk}
        path = os.path.join(directory, f"models-{start // MODELS_PER_FILE:04}.json")
        with open(path, "w") as f:
            json.dump({f"p{start}": {"target_base_url": f"http://127.0.0.1:{mock_port}", "models": models}}, f)
        files.append(path)
    return files


def curve_models(bench):
    counts = [10, 1000, 10000] if QUICK else [10, 1000, 10000, 100000]
    requests = 200 if QUICK else 500
    rows = []
    for count in counts:
        configs = os.path.join(bench.work, f"models-{count}")
        files = model_files(configs, bench.mock_port, count)
        try:
            process, port, startup = start_llmux(configs)
        except RuntimeError as error:
            # A point that does not start is a result too; the larger ones are not tried.
            rows.append([f"{count:,}", f"{len(files)}", f"did not start: {error}"] + ["—"] * 6)
            break
        try:
            time.sleep(1)
            if chat(port, "bench") != 200:
                raise RuntimeError("model bench does not answer")
            rss = rss_mb(process.pid)
            listing = []
            size = 0
            for _ in range(5):
                began = time.monotonic()
                status, body = http("GET", f"http://127.0.0.1:{port}/v1/models")
                listing.append((time.monotonic() - began) * 1000)
                size = len(body)
                assert status == 200, status
            # Reload: the first file gains one model; time until that model answers.
            new_model = f"added-{count}"
            began = time.monotonic()
            model_files(configs, bench.mock_port, min(count, MODELS_PER_FILE), extra_model=new_model)
            reload_ms = None
            while time.monotonic() - began < 60:
                if chat(port, new_model) == 200:
                    reload_ms = (time.monotonic() - began) * 1000
                    break
                time.sleep(0.005)
            rss_after = rss_mb(process.pid)
        finally:
            stop(process)
        cpu = float("nan") if NO_CPU else bench.measure(
            "llmux-warn", requests, configs=configs, label=f"models-{count}",
            startup_deadline=900)["per_request"]
        rows.append([f"{count:,}", f"{len(files)}", f"{startup * 1000:,.0f}",
                     "—" if reload_ms is None else f"{reload_ms:,.0f}", f"{rss:.1f}", f"{rss_after:.1f}",
                     "—" if cpu != cpu else f"{cpu:,.0f}", f"{statistics.median(listing):,.1f}", f"{size / 1e6:.2f}"])
        print(rows[-1], file=sys.stderr)
    return table("Curve: models in the config", [
        f"llmux --workers 1 --log warn (profiling build), models spread over files of {MODELS_PER_FILE}, "
        "one chat endpoint each. Start-up: spawn until the port accepts. Reload: the first file is "
        "rewritten with one more model; time until a chat request to it answers 200 (watch mode notify, "
        "polled every 5 ms). CPU: callgrind instructions per chat request to model `bench` "
        f"({requests} vs {2 * requests} requests). /v1/models: median of 5 GETs.",
        f"Load average at the end: {load_average()}."],
        ["models", "files", "start-up ms", "reload one file ms", "RSS MB idle", "RSS MB after reload",
         "Ir / chat request", "/v1/models ms", "/v1/models MB"], rows)


class RssSampler:
    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0.0, True
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def streams_client(url, count, chunks=20, gap_ms=20):
    out = subprocess.run([os.path.join(BUILD, "examples", "bench_client"), "streams", url, str(count),
                          str(chunks), str(gap_ms)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-400:])
    return json.loads(out.stdout)


# Streams of 30 events 200 ms apart (6 s): long enough that all of a point's streams are open at
# once even at 10,000 (connecting them takes a second or two on this box), so the peak is the
# memory of `count` open streams, not of however many overlapped.
STREAM_CHUNKS = 30
STREAM_GAP_MS = 200


def start_forwarder(mock_port):
    port = free_port()
    process = spawn([os.path.join(BUILD, "examples", "forwarder"), str(port), f"http://127.0.0.1:{mock_port}", "1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, process, 60)
    return process, port


def settled_rss_mb(pid, deadline=60):
    """RSS once it has stopped growing for a second (anything still settling after start-up, such
    as a tokenizer built in the background, must not be counted per stream)."""
    end = time.monotonic() + deadline
    last = rss_mb(pid)
    while time.monotonic() < end:
        time.sleep(1)
        now = rss_mb(pid)
        if now - last < 0.2:
            return now
        last = now
    return last


def stream_point(process, port, count, direct):
    """Idle and peak RSS of `process` around `count` streams through it, and the client's figures."""
    try:
        time.sleep(0.5)
        # Warm: the first streams make the worker's pools and buffers.
        streams_client(f"http://127.0.0.1:{port}/v1/chat/completions", 10, 2, 10)
        idle = settled_rss_mb(process.pid)
        with RssSampler(process.pid) as sampler:
            proxied = streams_client(f"http://127.0.0.1:{port}/v1/chat/completions", count,
                                     STREAM_CHUNKS, STREAM_GAP_MS)
    finally:
        stop(process)
    return {"idle": idle, "peak": sampler.peak, "per_stream_kb": (sampler.peak - idle) * 1e3 / count,
            "complete": proxied["complete"], "bunched": proxied["bunched_streams"],
            "ttfc_p50": proxied["ttfc_p50_ms"] - direct["ttfc_p50_ms"],
            "ttfc_p99": proxied["ttfc_p99_ms"] - direct["ttfc_p99_ms"]}


def curve_streams(bench):
    counts = [100, 1000] if QUICK else [100, 1000, 10000]
    configs = bench.default_configs()
    rows = []
    # A proxy holds two sockets per stream (client and upstream): the file limit caps the streams.
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = (limit - 256) // 2
    capped = [count for count in counts if count > cap]
    counts = [min(count, cap) for count in counts]
    for count in counts:
        direct = streams_client(f"http://127.0.0.1:{bench.mock_port}/v1/chat/completions", count,
                                STREAM_CHUNKS, STREAM_GAP_MS)
        forwarder = stream_point(*start_forwarder(bench.mock_port), count, direct)
        time.sleep(1)
        # The forwarder's limits (examples/forwarder.rs): llmux's defaults (8,192 connections per
        # worker, backlog 1,024) would hold the streams past 8,192 until the first ones end.
        process, port, _ = start_llmux(configs, extra=("--max-connections", "100000", "--backlog", "4096"))
        llmux = stream_point(process, port, count, direct)
        rows.append([f"{count:,}", f"{llmux['complete']:,} / {forwarder['complete']:,} / {direct['complete']:,}",
                     f"{llmux['idle']:.1f}", f"{llmux['peak']:.1f}", f"{llmux['per_stream_kb']:.1f}",
                     f"{forwarder['idle']:.1f}", f"{forwarder['peak']:.1f}", f"{forwarder['per_stream_kb']:.1f}",
                     f"{llmux['per_stream_kb'] - forwarder['per_stream_kb']:+.1f}",
                     f"{llmux['ttfc_p50']:.1f}", f"{llmux['ttfc_p99']:.1f}", f"{forwarder['ttfc_p99']:.1f}",
                     f"{direct['ttfc_p99_ms']:.1f}", f"{llmux['bunched']} / {forwarder['bunched']}"])
        print(rows[-1], file=sys.stderr)
        time.sleep(2)
    return table("Curve: concurrent SSE streams", [
        f"llmux --workers 1 --log warn --max-connections 100000 --backlog 4096 and the bare forwarder (examples/forwarder.rs, one worker, the same limits: the floor of "
        f"llmux's stack) in turn, mock upstream (1 worker) sending {STREAM_CHUNKS} events "
        f"{STREAM_GAP_MS} ms apart (every stream of a point is open at the peak); all streams released at once "
        "by `bench_client streams`, direct to the mock first. Idle RSS after 10 warm-up streams; RSS per "
        "stream = (peak RSS during the streams − idle RSS) / streams (llmux builds its tokenizer only "
        "for a first estimate, which these streams, carrying usage, never need). Added TTFC = time to first chunk through the proxy minus "
        "direct's, same percentile. Client, mock and proxy share the 2 cores, unpinned: TTFC moves with "
        "the load, RSS does not." + (f" The open-file limit ({limit}) caps the streams at {cap:,} (asked: "
                                      f"{', '.join(f'{c:,}' for c in capped)})." if capped else ""),
        f"Load average at the end: {load_average()}."],
        ["streams", "complete llmux / fwd / direct", "llmux idle RSS MB", "llmux peak RSS MB",
         "llmux KB / stream", "forwarder idle MB", "forwarder peak MB", "forwarder KB / stream",
         "llmux − forwarder KB / stream", "llmux added TTFC p50 ms", "llmux added TTFC p99 ms",
         "forwarder added TTFC p99 ms", "direct TTFC p99 ms", "bunched llmux / fwd"], rows)


def curve_bodies(bench):
    sizes = [(1_000, 300), (100_000, 100), (1_000_000, 20), (10_000_000, 5)]
    if QUICK:
        sizes = [(1_000, 100), (100_000, 40), (1_000_000, 10), (10_000_000, 3)]
    rows = []
    configs = bench.default_configs()
    previous = None
    for size, requests in sizes:
        per = {}
        for target in ("nginx", "forwarder", "llmux-warn"):
            per[target] = bench.measure(target, requests, connections=1, body_bytes=size, configs=configs,
                                        label=f"body-{size}-{target}")["per_request"]
        rows.append([f"{size:,}", requests, f"{per['nginx']:,.0f}", f"{per['forwarder']:,.0f}",
                     f"{per['llmux-warn']:,.0f}", f"{per['llmux-warn'] - per['forwarder']:,.0f}",
                     "—" if previous is None else
                     f"{(per['llmux-warn'] - previous[1]) / (size - previous[0]):.2f}",
                     f"{per['llmux-warn'] / per['forwarder']:.2f}"])
        previous = (size, per["llmux-warn"])
        print(rows[-1], file=sys.stderr)
    return table("Curve: chat request body size", [
        "callgrind instructions per chat request (runs of N and 2N requests, one connection), a body of "
        "one long user message padded to the size. nginx streams bodies (proxy_request_buffering off); "
        "the forwarder reads bodies up to 4 MB whole and streams larger ones; llmux reads the body whole "
        "(bounded) and probes it for the model without a full parse.",
        f"Load average at the end: {load_average()} (does not change instruction counts)."],
        ["body bytes", "N", "nginx Ir", "forwarder Ir", "llmux Ir", "llmux − forwarder Ir",
         "llmux Ir per added byte (vs the size above)", "llmux / forwarder"], rows)


def pool_config(bench, members):
    configs = os.path.join(bench.work, f"pool-{members}")
    os.makedirs(configs, exist_ok=True)
    endpoints = [{"path": "v1/chat/completions", "target_model_name": f"bench-{i}"} for i in range(members)]
    with open(os.path.join(configs, "pool.json"), "w") as f:
        json.dump({"mock": {"target_base_url": f"http://127.0.0.1:{bench.mock_port}",
                            "models": {"bench": {"endpoints": endpoints}}}}, f)
    return configs


def curve_pool(bench):
    rows = []
    requests = 200 if QUICK else 500
    for members in (1, 8, 64):
        cpu = bench.measure("llmux-info", requests, configs=pool_config(bench, members),
                            label=f"pool-{members}")["per_request"]
        rows.append([members, f"{cpu:,.0f}"])
        print(rows[-1], file=sys.stderr)
    return table("Curve: pool members", [
        "callgrind instructions per chat request, llmux --log info, one exposed model whose pool has N "
        f"members (same mock, distinct target models), {requests} vs {2 * requests} requests over 4 connections.",
        f"Load average at the end: {load_average()} (does not change instruction counts)."],
        ["pool members", "Ir / chat request"], rows)


def wrk(url, seconds):
    script = os.path.join(bench_work(), "post.lua")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
            f.write("wrk.body = " + json.dumps(json.dumps(
                {"model": "bench", "messages": [{"role": "user", "content": "Hello!"}]})) + "\n")
    out = subprocess.run(["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", script, url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


_WORK = None


def bench_work():
    return _WORK


def curve_keys(bench):
    counts = [1, 10_000, 100_000] if QUICK else [1, 10_000, 1_000_000]
    requests = 200 if QUICK else 400
    rows = []
    for count in counts:
        configs, authorization = instructions.key_configs(bench.work, bench.mock_port, count)
        size = os.path.getsize(os.path.join(configs, "keys.json"))
        process, port, startup = start_llmux(configs, log="warn",
                                             extra=("--access-control", "on", "--watch", "off"))
        try:
            body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hi"}]}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"content-type": "application/json",
                                                      "authorization": authorization})
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 200, response.status
            rss = rss_mb(process.pid)
        finally:
            stop(process)
        cpu = bench.measure("llmux-keys", requests, configs=configs, label=f"keys-{count}",
                            startup_deadline=1800, authorization=authorization)["per_request"]
        rows.append([f"{count:,}", f"{size / 1e6:.1f}", f"{startup * 1000:,.0f}", f"{rss:.1f}", f"{cpu:,.0f}"])
        print(rows[-1], file=sys.stderr)
    return table("Curve: client keys", [
        "llmux --workers 1 --access-control on (profiling build) with a key file of N keys, each with an "
        "allowed-models list and a minute limit far above the run's requests; the client sends the key in "
        "the middle of the file. Start-up and RSS: native, --log warn, after one admitted request. CPU: "
        f"callgrind instructions per admitted chat request at --log info ({requests} vs {2 * requests} "
        "requests over 4 connections).",
        f"Load average at the end: {load_average()} (does not change instruction counts)."],
        ["keys", "key file MB", "start-up ms", "RSS MB", "Ir / chat request"], rows)


def curve_workers(bench):
    seconds = 3 if QUICK else 8
    rows = []
    configs = bench.default_configs()
    for workers in (1, 2):
        process, port, _ = start_llmux(configs, log="warn", workers=workers)
        try:
            time.sleep(0.5)
            llmux = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", seconds)
        finally:
            stop(process)
        port = free_port()
        forwarder = spawn([os.path.join(BUILD, "examples", "forwarder"), str(port),
                           f"http://127.0.0.1:{bench.mock_port}", str(workers)], stdout=subprocess.DEVNULL)
        try:
            wait_port(port, forwarder, 15)
            floor = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", seconds)
        finally:
            stop(forwarder)
        rows.append([workers, f"{llmux:,.0f}", f"{floor:,.0f}", f"{llmux / floor:.2f}", load_average()])
        print(rows[-1], file=sys.stderr)
    return table("Curve: workers", [
        f"wrk -t1 -c64 -d{seconds}s POSTing a small chat request; llmux --log warn and the bare forwarder "
        "with 1 and 2 workers, unpinned. The mock upstream (1 worker) and wrk run on the same 2 cores: "
        "with 2 workers the proxy competes with its own load generator and upstream, so this shows whether "
        "a second worker helps on this box, not how llmux scales on real cores.",
        f"Load average at the end: {load_average()}."],
        ["workers", "llmux req/s", "forwarder req/s", "llmux / forwarder", "load average after"], rows)


CURVES = {"models": curve_models, "streams": curve_streams, "bodies": curve_bodies, "pool": curve_pool,
          "keys": curve_keys, "workers": curve_workers}


def main():
    global _WORK
    wanted = [a for a in sys.argv[1:] if not a.startswith("--")] or ["all"]
    names = list(CURVES) if wanted == ["all"] else wanted
    bench = instructions.Bench()
    _WORK = bench.work
    for name in names:
        if name not in CURVES:
            sys.exit(f"unknown curve {name}: one of {', '.join(CURVES)} or all")
        write_result(name, CURVES[name](bench))


if __name__ == "__main__":
    try:
        main()
    finally:
        instructions.stop_all()
