#!/usr/bin/env python3
"""CPU per request through TLS: llmux against nginx, both proxying to the same HTTPS upstream, in one run.

    bench/tls.sh [--quick]

The upstream is an nginx TLS server (certificate from a CA made here with the openssl CLI) that
answers a static chat completion, on two ports: one offering HTTP/1.1 only, one offering h2 too.
The proxies under test are pinned to CPU 0, the upstream and wrk to CPU 1:

- nginx: `proxy_pass https://…` with a keep-alive pool, certificate verification on against the CA,
  TLS session reuse (nginx speaks HTTP/1.1 to upstreams, never h2);
- llmux: `--workers 1 --log warn --upstream-ca-file CA` (HTTP/1.1 or h2, as the port offers).

wrk POSTs a chat request over plain HTTP to each proxy (`-t1 -c64`); a proxy's CPU time (user +
system, /proc/PID/stat) over the run, divided by the requests completed, is its CPU per request.
Every process started here is killed by PID; every load is bounded in time.
"""
import json
import shutil
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
REPEATS = 1 if QUICK else 3
SECONDS = 3 if QUICK else 8
TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
PROXY_CPU = "0"
LOAD_CPU = "1" if CORES > 1 else "0"
CHAT_BODY = '{"model":"bench","messages":[{"role":"user","content":"Hello! How are you today?"}]}'
ANSWER = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-target",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! I am fine, thank you."},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}})
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


def run(args):
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def make_certs(work):
    ca_key, ca, key, csr, cert = (os.path.join(work, n) for n in ("ca.key", "ca.pem", "up.key", "up.csr", "up.pem"))
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=llmux bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
    ext = os.path.join(work, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext])
    return ca, cert, key


def nginx_conf(work, name, server_blocks):
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(work, name, d), exist_ok=True)
    base = os.path.join(work, name)
    path = os.path.join(base, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""
worker_processes 1;
master_process off;
daemon off;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {base}/body; proxy_temp_path {base}/proxy; fastcgi_temp_path {base}/fastcgi;
  uwsgi_temp_path {base}/uwsgi; scgi_temp_path {base}/scgi;
  keepalive_requests 1000000;
{server_blocks}
}}
""")
    return path


def wrk(work, url):
    script = os.path.join(work, "post.lua")
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{SECONDS}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, timeout=SECONDS + 60).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": requests, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def measure(work, target):
    before = cpu_seconds(target["pid"])
    result = wrk(work, target["url"] + "/v1/chat/completions")
    result["cpu_us"] = (cpu_seconds(target["pid"]) - before) * 1e6 / max(result["requests"], 1)
    return result


def main(work):
    with open(os.path.join(work, "post.lua"), "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f"wrk.body = {json.dumps(CHAT_BODY)}\n")
    ca, cert, key = make_certs(work)
    h1_port, h2_port, nginx_h1_port, nginx_h2_port = (free_port() for _ in range(4))
    answer = ANSWER.replace("'", "\\'")
    upstream = nginx_conf(work, "upstream", f"""
  server {{
    listen 127.0.0.1:{h1_port} ssl backlog=4096;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ default_type application/json; return 200 '{answer}'; }}
  }}
  server {{
    listen 127.0.0.1:{h2_port} ssl http2 backlog=4096;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ default_type application/json; return 200 '{answer}'; }}
  }}""")
    spawn(["nginx", "-c", upstream], LOAD_CPU, stderr=subprocess.DEVNULL)
    wait_port(h1_port)
    wait_port(h2_port)

    def proxy_block(listen, port):
        return f"""
  upstream up{port} {{ server 127.0.0.1:{port}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{listen} backlog=4096;
    location / {{
      proxy_pass https://up{port};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}"""
    proxy = nginx_conf(work, "proxy", proxy_block(nginx_h1_port, h1_port) + proxy_block(nginx_h2_port, h2_port))
    nginx = spawn(["nginx", "-c", proxy], PROXY_CPU, stderr=subprocess.DEVNULL)
    wait_port(nginx_h1_port)

    targets = {}
    for name, port in (("h1", h1_port), ("h2", h2_port)):
        config = os.path.join(work, f"llmux-{name}")
        os.makedirs(config)
        with open(os.path.join(config, "bench.json"), "w") as f:
            json.dump({"tls-bench": {"target_base_url": f"https://127.0.0.1:{port}", "models": {
                "bench": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "bench-target"}]}}}}, f)
        listen = free_port()
        binary = os.environ.get("LLMUX_BENCH_BIN", os.path.join(ROOT, "target", "release", "llmux"))
        llmux = spawn([binary, "--port", str(listen), "--workers", "1",
                       "--log", "warn", "--config-dir", config, "--upstream-ca-file", ca], PROXY_CPU,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(listen)
        targets[f"llmux {name}"] = {"url": f"http://127.0.0.1:{listen}", "pid": llmux.pid}
    targets["nginx h1"] = {"url": f"http://127.0.0.1:{nginx_h1_port}", "pid": nginx.pid}
    targets["nginx h2-port"] = {"url": f"http://127.0.0.1:{nginx_h2_port}", "pid": nginx.pid}

    # Warm up: TLS handshakes and pools.
    for target in targets.values():
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-XPOST", "-H", "content-type: application/json",
                        "-d", CHAT_BODY, target["url"] + "/v1/chat/completions"], timeout=10, check=True)
    results = {name: [] for name in targets}
    names = list(targets)
    for repeat in range(REPEATS):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            results[name].append(measure(work, targets[name]))
    load = os.getloadavg()
    lines = [f"CPU per request through TLS ({REPEATS} x {SECONDS}s, wrk -c64; load average {load[0]:.2f} {load[1]:.2f})", "",
             "| proxy | upstream protocol | req/s | CPU µs/req | errors |", "|---|---|---|---|---|"]
    for name in names:
        runs = results[name]
        protocol = "HTTP/2" if name == "llmux h2" else "HTTP/1.1"
        lines.append(f"| {name} | {protocol} | {statistics.median(r['rps'] for r in runs):.0f} | "
                     f"{statistics.median(r['cpu_us'] for r in runs):.1f} | {sum(r['errors'] for r in runs)} |")
    def ratio(a, b):
        return statistics.median(x["cpu_us"] / y["cpu_us"] for x, y in zip(results[a], results[b]))
    lines += ["", f"llmux/nginx CPU per request, both HTTP/1.1 over TLS: {ratio('llmux h1', 'nginx h1'):.2f}",
              f"llmux (h2 upstream)/nginx (HTTP/1.1, h2 not available to it): {ratio('llmux h2', 'nginx h1'):.2f}"]
    report = "\n".join(lines)
    print(report)
    if "LLMUX_BENCH_BIN" in os.environ:
        return
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with open(os.path.join(ROOT, "bench", "results", f"tls-{stamp}.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    work_dir = tempfile.mkdtemp(prefix="llmux-bench-tls-")
    try:
        main(work_dir)
    finally:
        stop_all()
        shutil.rmtree(work_dir, ignore_errors=True)
