# Demo backend vs loopback mock: CPU per request (llmux + its upstream) and latency under the same
# fixed-rate load. Usage (after `cargo build --release --bin llmux --example mock_upstream --example
# bench_client`): python3 bench/demo_cost.py RPS SECONDS
import json, os, socket, subprocess, sys, tempfile, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = ROOT + "/target/release"
RPS, SECONDS = int(sys.argv[1]), int(sys.argv[2])
TICK = os.sysconf("SC_CLK_TCK")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK

def wait_port(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")

def run(upstream):
    d = tempfile.mkdtemp()
    procs = []
    try:
        if upstream == "mock":
            mport = free_port()
            mock = subprocess.Popen([REL + "/examples/mock_upstream", str(mport), "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(mock); wait_port(mport)
            base = f"http://127.0.0.1:{mport}"
        else:
            base = "builtin:demo"
        cfg = {"bench": {"target_base_url": base, "models": {"bench": {"endpoints": [{"path": "v1/chat/completions", "target_model_name": "bench"}]}}}}
        open(os.path.join(d, "bench.json"), "w").write(json.dumps(cfg))
        port = free_port()
        llmux = subprocess.Popen([REL + "/llmux", "--config-dir", d, "--port", str(port), "--log", "warn", "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(llmux); wait_port(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        subprocess.run([REL + "/examples/bench_client", "rate", url, "200", "2"], capture_output=True, timeout=60)  # warm-up
        before = {p.pid: cpu(p.pid) for p in procs}
        out = subprocess.run([REL + "/examples/bench_client", "rate", url, str(RPS), str(SECONDS)], capture_output=True, text=True, timeout=SECONDS + 60)
        used = {p.pid: cpu(p.pid) - before[p.pid] for p in procs}
        result = json.loads(out.stdout)
        result["cpu_s"] = {("mock" if p is not llmux else "llmux"): used[p.pid] for p in procs}
        return result
    finally:
        for p in procs:
            p.terminate()
            try: p.wait(5)
            except subprocess.TimeoutExpired: p.kill()

for upstream in ["mock", "demo"]:
    r = run(upstream)
    total = sum(r["cpu_s"].values())
    n = r["count"]
    print(upstream, json.dumps(r), f"cpu_us_per_request={total / n * 1e6:.0f}")
