#!/usr/bin/env python3
"""Instructions per proxied chat request, counted by callgrind, for nginx, the bare forwarder and
llmux. Called by bench/instructions.sh.

Each target runs twice under callgrind, fresh: once for N requests, once for 2N. Start-up, the first
(warm-up) requests and shutdown are the same in both runs, so the difference of the two totals is
the cost of N warmed-up requests. Only the proxy runs under valgrind; the mock upstream and the
client run natively. Every process this starts is killed by PID; every wait has a deadline.

    bench/instructions.sh [--requests N] [--connections C] [--targets a,b] [--profile] [--keep DIR]
                          [--body-bytes B] [--config FILE] [--label TEXT] [--keys K]

`llmux-keys` is llmux at `--log info` with access control on: a key file of K client keys (default
1000), each with a minute limit far above what the run sends and an allowed-models list, so every
request pays the whole admission (SHA-256 of the key, table lookup, limit counters); the client
sends the key in the middle of the file.
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("LLMUX_BUILD_DIR", os.path.join(ROOT, "target", "profiling"))
TARGETS = ["nginx", "forwarder", "llmux-info", "llmux-warn", "llmux-keys"]

started = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args, **kwargs):
    process = subprocess.Popen(args, **kwargs)
    started.append(process)
    return process


def stop_all():
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


def wait_port(port, process, deadline):
    end = time.time() + deadline
    while time.time() < end:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {deadline} s")


def nginx_conf(work, port, mock_port):
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""
worker_processes 1;
master_process off;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
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
    return path


def llmux_configs(work, mock_port, config_file):
    configs = os.path.join(work, "configs")
    os.makedirs(configs, exist_ok=True)
    if config_file:
        shutil.copy(config_file, configs)
        return configs
    with open(os.path.join(configs, "bench.json"), "w") as f:
        json.dump({"mock": {"target_base_url": f"http://127.0.0.1:{mock_port}", "request_timeout": 60,
                            "models": {"bench": {"endpoints": [
                                {"path": "v1/chat/completions", "target_model_name": "bench-target"}]}}}}, f)
    return configs


def key_configs(work, mock_port, count, config_file=None):
    """A config dir with the bench provider and a key file of `count` keys; returns it and the
    `Authorization` value of the key the client sends (the one in the middle)."""
    configs = os.path.join(work, f"keys-{count}")
    if os.path.isdir(configs):
        shutil.rmtree(configs)
    shutil.copytree(llmux_configs(work, mock_port, config_file), configs)
    client_key = "llmux_bench_client_key_" + str(count)
    with open(os.path.join(configs, "keys.json"), "w") as f:
        f.write('{"llmux_access": {"keys": [\n')
        for i in range(count):
            key = client_key if i == count // 2 else f"llmux_bench_other_key_{i}"
            digest = hashlib.sha256(key.encode()).hexdigest()
            f.write(("," if i else "") + json.dumps(
                {"name": f"key-{i}", "owner_id": f"owner-{i % 1000}", "key_sha256": digest,
                 "allowed_models": ["bench", "other-*"], "requests_per_minute": 1_000_000_000}) + "\n")
        f.write("]}}\n")
    return configs, f"Bearer {client_key}"


def command(target, work, port, mock_port, configs):
    if target == "nginx":
        return ["nginx", "-c", nginx_conf(work, port, mock_port), "-p", work]
    if target == "forwarder":
        return [os.path.join(BUILD, "examples", "forwarder"), str(port), f"http://127.0.0.1:{mock_port}", "1"]
    level = target.split("-", 1)[1]
    access = ["--access-control", "on", "--watch", "off"] if level == "keys" else []
    level = "info" if level == "keys" else level
    return [os.environ.get("LLMUX_BIN", os.path.join(BUILD, "llmux")), "--config-dir", configs, "--port", str(port),
            "--workers", "1", "--log", level] + access


def total_instructions(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def run_once(target, requests, connections, body_bytes, work, mock_port, configs, out, startup_deadline=120,
             authorization=None):
    """Runs `target` under callgrind for `requests` requests; returns its total instructions."""
    port = free_port()
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
    log = open(out + ".stdout", "w")
    process = spawn(valgrind + command(target, work, port, mock_port, configs),
                    stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, process, startup_deadline)
        client = subprocess.run(
            [os.path.join(BUILD, "examples", "bench_client"), "count",
             f"http://127.0.0.1:{port}/v1/chat/completions", str(requests), str(connections),
             str(body_bytes)],
            capture_output=True, text=True, timeout=900,
            env=dict(os.environ, **({"BENCH_AUTHORIZATION": authorization} if authorization else {})))
        if client.returncode != 0:
            raise RuntimeError(client.stderr[-500:])
        result = json.loads(client.stdout)
        if result["errors"] or result["count"] != requests:
            raise RuntimeError(f"{target}: {result}")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
    return total_instructions(out)


class Bench:
    """A mock upstream, and the place callgrind files go: what every measure shares."""

    def __init__(self, keep=None):
        self.work = tempfile.mkdtemp(prefix="llmux-instr-")
        self.keep = keep or os.path.join(self.work, "callgrind")
        os.makedirs(self.keep, exist_ok=True)
        self.mock_port = free_port()
        mock = spawn([os.path.join(BUILD, "examples", "mock_upstream"), str(self.mock_port), "1"],
                     stdout=subprocess.DEVNULL)
        wait_port(self.mock_port, mock, 15)

    def default_configs(self):
        return llmux_configs(self.work, self.mock_port, None)

    def measure(self, target, requests, connections=4, body_bytes=0, configs=None, label=None,
                startup_deadline=120, authorization=None):
        """Instructions per request of `target`: runs of N and 2N requests, the difference / N.
        `authorization`: the client key the requests carry (for `llmux-keys`)."""
        configs = configs or self.default_configs()
        name = label or target
        single = os.path.join(self.keep, f"{name}.{requests}.out")
        double = os.path.join(self.keep, f"{name}.{2 * requests}.out")
        first = run_once(target, requests, connections, body_bytes, self.work, self.mock_port, configs,
                         single, startup_deadline, authorization)
        second = run_once(target, 2 * requests, connections, body_bytes, self.work, self.mock_port,
                          configs, double, startup_deadline, authorization)
        per_request = (second - first) / requests
        print(f"{name:24} {per_request:>12,.0f} Ir/request", file=sys.stderr)
        return {"per_request": per_request, "run_n": first, "run_2n": second, "files": [single, double]}


FUNCTION_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(.+?)\s*$")


def self_costs(path):
    """Self instructions per function, from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", path],
                         capture_output=True, text=True, timeout=300).stdout
    costs = {}
    in_table = False
    for line in out.splitlines():
        if re.match(r"^-+$", line.strip()) and in_table is False and costs == {}:
            continue
        if "file:function" in line:
            in_table = True
            continue
        if not in_table:
            continue
        match = FUNCTION_LINE.match(line)
        if match and not match.group(2).startswith("PROGRAM TOTALS"):
            name = re.sub(r"\s+\[[^\]]*\]$", "", match.group(2))
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def profile_table(target, single, double, requests):
    a, b = self_costs(single), self_costs(double)
    rows = sorted(((b.get(k, 0) - a.get(k, 0)) / requests, k) for k in set(a) | set(b))
    rows = [r for r in rows[::-1] if r[0] >= 50][:60]
    lines = [f"## {target}: self instructions per request by function (top {len(rows)}, ≥ 50)", "",
             "| Ir/req | function |", "|---:|---|"]
    lines += [f"| {cost:,.0f} | `{name}` |" for cost, name in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000, help="N: the runs send N and 2N requests")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--profile", action="store_true", help="also write per-function tables")
    parser.add_argument("--keep", help="keep the callgrind files in this directory")
    parser.add_argument("--body-bytes", type=int, default=0, help="pad the chat body to about this size")
    parser.add_argument("--config", help="llmux config file to use instead of the one-model config")
    parser.add_argument("--label", default="", help="a note for the report's heading")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument("--keys", type=int, default=1000, help="client keys in llmux-keys' key file")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    for target in targets:
        if target not in TARGETS:
            sys.exit(f"unknown target {target}: one of {', '.join(TARGETS)}")

    bench = Bench(args.keep)
    configs = llmux_configs(bench.work, bench.mock_port, args.config)
    keep = bench.keep
    figures = {}
    for target in targets:
        if target == "llmux-keys":
            key_dir, authorization = key_configs(bench.work, bench.mock_port, args.keys, args.config)
            figures[target] = bench.measure(target, args.requests, args.connections, args.body_bytes,
                                            key_dir, authorization=authorization)
        else:
            figures[target] = bench.measure(target, args.requests, args.connections, args.body_bytes, configs)

    if args.json:
        print(json.dumps({t: f["per_request"] for t, f in figures.items()}))
        return
    floor = figures.get("forwarder", {}).get("per_request")
    nginx = figures.get("nginx", {}).get("per_request")
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    lines = [f"# Instructions per request {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
             + (f" ({args.label})" if args.label else ""), "",
             f"callgrind, user-space instructions (Ir) per proxied chat request: runs of {args.requests} and "
             f"{2 * args.requests} requests over {args.connections} keep-alive connections, difference / "
             f"{args.requests}. Body {args.body_bytes or 'small'} bytes. Load average {load} "
             "(does not change instruction counts).", "",
             "| target | Ir/request | × forwarder | × nginx |", "|---|---:|---:|---:|"]
    for target, f in figures.items():
        ratio = lambda base: f"{f['per_request'] / base:.2f}" if base else "—"
        lines.append(f"| {target} | {f['per_request']:,.0f} | {ratio(floor)} | {ratio(nginx)} |")
    lines.append("")
    lines.append(f"callgrind files: {keep}")
    report = "\n".join(lines) + "\n"
    if args.profile:
        for target, f in figures.items():
            report += "\n" + profile_table(target, *f["files"], args.requests)
    print(report)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    path = os.path.join(ROOT, "bench", "results", f"instructions-{stamp}.md")
    with open(path, "w") as f:
        f.write(report)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
