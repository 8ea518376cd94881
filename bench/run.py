#!/usr/bin/env python3
"""bullpen benchmarks, side by side on one local redis-server.

    python3 bench/run.py --setup      # the one command: set-up + builds, then every scenario and the targets
    python3 bench/run.py [--jobs 50000] [--scenario worker-concurrent|worker-generic|job-latency|webhook|attempt-overhead|all]
                         [--workers 1,2,4] [--concurrency 10,100,1000] [--rate 1000] [--repeat N] [--smoke]

Scenarios (names from BullMQ's benchmark suite):
  worker-concurrent  N small jobs pre-added, one worker process, concurrency 100, until drained
  worker-generic     the same at concurrency 1 (latency-bound; N/10 jobs)
  job-latency        Queue.add in Node -> `completed` seen by Node's QueueEvents, p50/p90/p99,
                     at a steady --rate jobs/s (N/5 jobs), worker concurrency 100
  webhook            (issue 22) each job POSTs its payload, HMAC-SHA256-signed, to a local server
                     (bench/node/hook-server.js; its CPU per job apart), concurrency 100: node is
                     BullMQ's worker doing fetch + HMAC in-process (bench/node/webhook.js),
                     bullpen-<lang> the webhook-<lang>.wasm plugin; --jobs jobs when named alone,
                     N/10 in the full run (node and bullpen-rust: three interleaved rounds there).
                     Every job must complete with {status: 200, body: "ok"}, rightly signed.
  attempt-overhead   one attempt's host cost without Redis, per language, p50/p90/p99
                     (`cargo bench -p bullpen --bench attempt_overhead`, criterion)
`--concurrency 10,100,1000` runs worker-concurrent at each (RSS growth with concurrency); a full
run (`--scenario all`, the default) does 10 and 1000 too, with node, native and bullpen-rust,
and runs node, native and bullpen-rust at concurrency 100 in three interleaved rounds.
The run ends with the performance targets, each with this run's value (medians of those rounds) and
whether it was met.
`--setup` first runs scripts/setup.sh (release host, plugins, npm and PyPI packages) and builds
the native baseline: from a clean clone it is the only command needed.
`--smoke` is the CI mode (tests/tests/bench_smoke.rs): 300 jobs, every scenario, the contenders that
are built, and exit 1 unless every job completed.
Contenders, each doing echo's work per job (one log line, progress 100, return the data):
  node        BullMQ's own Node worker (bullmq@6)            -- the baseline
  native      a Rust worker on bullmq-official, no Wasm       -- the protocol ceiling
  bullpen-<lang>  bullpen with target/plugins/echo-<lang>.wasm (a fresh instance per job)
For each: jobs/s, worker CPU µs per job (from /proc, summed over worker
processes), Redis CPU µs per job (INFO cpu), Lua scripts per job (INFO
commandstats: EVAL + EVALSHA + FCALL calls) and Redis's share of one core
(100% = Redis is the bottleneck: it is single-threaded), worker RSS, and
the ratios of jobs/s to node's and native's, and of worker CPU per job to node's.
`--workers 1,2,4` repeats each run with that many worker processes on the
queue (the scaling curve). `--together` runs the contenders at once, each on
its own queue (an A/B of worker CPU per job under the same machine phase). Without `--setup` it needs `bash scripts/setup.sh`
and `cargo build --release --manifest-path bench/native/Cargo.toml --target-dir target`.
"""
import argparse, json, os, re, shlex, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def rcli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout.strip()


def redis_cpu(port):
    info = dict(l.split(":", 1) for l in rcli(port, "INFO", "cpu").splitlines() if ":" in l)
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def script_calls(port):
    """EVAL/EVALSHA/FCALL calls since the last CONFIG RESETSTAT (Lua scripts and functions run)."""
    n = 0
    for l in rcli(port, "INFO", "commandstats").splitlines():
        if l.startswith(("cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_fcall:")):
            n += int(l.split("calls=", 1)[1].split(",", 1)[0])
    return n


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def proc_rss_mb(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) / 1024
    return 0.0


def contenders(conc, extra_bins=(), hook=None, otlp=None):
    """name -> command(redis url, queue). Echo's work per job; with `hook` (the webhook scenario's
    Hook server) the webhook contract's instead: node runs bench/node/webhook.js, bullpen-<lang>
    webhook-<lang>.wasm granted the server's origin and the secret, and there is no native.
    With `otlp` (--otlp: an OtlpSink) also bullpen-rust-traced: bullpen-rust exporting a trace
    span per attempt to it (`--otlp-endpoint`)."""
    plugin, grants = "echo", []
    c = {"node": lambda url, q: ["node", f"{ROOT}/bench/node/worker.js", url, q, str(conc)]}
    native = f"{ROOT}/target/release/bullpen-bench-native"
    if hook:
        plugin, grants = "webhook", ["--allow-outbound", hook.origin, "--var", f"webhook_secret={hook.secret}"]
        c = {"node": lambda url, q: ["node", f"{ROOT}/bench/node/webhook.js", url, q, str(conc), hook.secret]}
    elif os.path.exists(native):
        c["native"] = lambda url, q: [native, url, q, str(conc)]
    for lang in ("rust", "go", "js", "python"):
        p = f"{ROOT}/target/plugins/{plugin}-{lang}.wasm"
        if os.path.exists(p):
            c[f"bullpen-{lang}"] = lambda url, q, p=p: [f"{ROOT}/target/release/bullpen", "worker", "--redis", url,
                                                        "--queue", q, "--plugin", p, "--concurrency", str(conc), *grants]
            # Opt-in instance reuse (an instance serves up to 1000 attempts): not in the default
            # set, whose point is a fresh instance per job; ask for it with --only (see chosen()).
            c[f"bullpen-{lang}-reuse"] = lambda url, q, p=p: [f"{ROOT}/target/release/bullpen", "worker", "--redis", url,
                                                              "--queue", q, "--plugin", p, "--concurrency", str(conc),
                                                              *grants, "--instance-reuse", "1000"]
    if otlp and "bullpen-rust" in c:
        rust = c["bullpen-rust"]
        c["bullpen-rust-traced"] = lambda url, q: [*rust(url, q), "--otlp-endpoint", otlp.url]
    # A/B of two host builds, or of worker flags, in one run: NAME=PATH [FLAGS...] runs PATH (a
    # `bullpen` binary) with echo-rust.wasm (webhook-rust.wasm in the webhook scenario), and FLAGS
    # after the worker's own.
    for spec in extra_bins:
        name, rest = spec.split("=", 1)
        path, *flags = shlex.split(rest)
        c[name] = lambda url, q, b=path, f=flags: [b, "worker", "--redis", url, "--queue", q,
                                                   "--plugin", f"{ROOT}/target/plugins/{plugin}-rust.wasm", "--concurrency", str(conc),
                                                   *grants, *f]
    return c


class Hook:
    """The webhook scenario's receiver (bench/node/hook-server.js), one process for the scenario:
    POST /hook -> 200 `ok`, the signature checked; its CPU is measured apart from the workers'."""
    secret = "bench-webhook-secret"

    def __init__(self):
        self.proc = subprocess.Popen(["node", f"{ROOT}/bench/node/hook-server.js", self.secret], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.origin}/hook"

    def stats(self):
        """{"ok": rightly signed POST /hook requests, "bad": other requests, "connections": accepted} since it started."""
        import urllib.request
        return json.load(urllib.request.urlopen(f"{self.origin}/stats", timeout=10))

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def close(self):
        self.proc.send_signal(signal.SIGTERM); self.proc.wait(timeout=10)


class OtlpSink:
    """--otlp: an OTLP/HTTP receiver in this process (so its CPU is not the worker's): POST
    /v1/traces -> 200, counting requests, bytes and spans (the protobuf walked just enough to
    count ExportTraceServiceRequest.resource_spans[].scope_spans[].spans[])."""

    def __init__(self):
        import http.server, threading
        sink = self
        self.requests = self.bytes = self.spans = 0

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                sink.requests += 1; sink.bytes += len(body)
                sink.spans += sum(sum(len(fields(ss, 2)) for ss in fields(rs, 2)) for rs in fields(body, 1))
                self.send_response(200); self.send_header("content-length", "0"); self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def fields(buf, number):
    """The length-delimited fields `number` of one protobuf message (the others skipped)."""
    def varint(i):
        n = shift = 0
        while True:
            b = buf[i]; i += 1; n |= (b & 0x7F) << shift; shift += 7
            if b < 0x80:
                return n, i
    out, i = [], 0
    while i < len(buf):
        key, i = varint(i)
        wire = key & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = varint(i)
            if key >> 3 == number:
                out.append(buf[i:i + n])
            i += n
        else:
            raise ValueError(f"protobuf wire type {wire}")
    return out


# Completed jobs whose return value is not the webhook contract's `{"status": 200, "body": "ok"}`.
NOT_200 = """local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local ok, v = pcall(cjson.decode, redis.call('HGET', ARGV[1] .. id, 'returnvalue') or '')
  if not ok or type(v) ~= 'table' or v.status ~= 200 or v.body ~= 'ok' then n = n + 1 end
end
return n"""


def chosen(only, name):
    """--only's names; without it every contender but the opt-in `-reuse` ones."""
    return name in only.split(",") if only else not name.endswith("-reuse")


def run_contenders(cmds, jobs, port, workers=1, hook=None):
    """Run the contenders `cmds` (name -> command) at once, each with `workers` processes on its
    own queue of `jobs`, until every queue is drained; a row per contender, measured from the
    first 1% of its jobs to its last. Alone, a contender also gets Redis's CPU and scripts per
    job over that window. Several at once (--together) share the machine's phase (a shared VM
    drifts ±30% over minutes, which interleaved rounds only average out), so their worker CPU per
    job compares closely, but Redis is shared too: its columns are nan (printed "-").
    With `hook` (the webhook scenario) the jobs are webhook jobs to its URL, the server's CPU per
    job is measured over the same window (alone only), and each row says how many jobs did not
    complete with the contract's `{"status": 200, "body": "ok"}` or reached the server with a
    bad signature ("not_ok": such a row has no valid rate)."""
    url = f"redis://127.0.0.1:{port}"
    for name in cmds:
        subprocess.run(["node", f"{ROOT}/bench/node/add.js", url, f"bench-{name}", str(jobs), *([hook.url] if hook else [])], check=True)
    hook_before = hook.stats() if hook else None
    log = tempfile.TemporaryFile()
    procs = {name: [subprocess.Popen(cmd_for(url, f"bench-{name}"), stderr=log, stdout=subprocess.DEVNULL,
                                     env={**os.environ, "NO_COLOR": "1"}) for _ in range(workers)]
             for name, cmd_for in cmds.items()}
    cpu = lambda name: sum(proc_cpu(p.pid) for p in procs[name])
    alone, nan = len(cmds) == 1, float("nan")
    side = lambda: hook.cpu() if hook and alone else nan  # the webhook server's CPU
    # Where a queue drains before its first 1% is seen (a smoke run's few jobs
    # on a fast worker), its window starts at the spawn instead.
    spawned = (time.time(), 0.0, redis_cpu(port) if alone else nan, 0, side())
    start_at, seen, done_at = max(1, jobs // 100), {}, {}
    deadline = time.time() + 600
    while len(done_at) < len(cmds):
        if time.time() > deadline:
            [p.kill() for ps in procs.values() for p in ps]
            raise SystemExit(f"{', '.join(n for n in cmds if n not in done_at)}: not drained in time")
        for name in cmds:
            if name in done_at:
                continue
            done = int(rcli(port, "ZCARD", f"bull:bench-{name}:completed"))
            if name not in seen and done >= start_at:
                seen[name] = (time.time(), cpu(name), redis_cpu(port) if alone else nan, done, side())
                if alone:
                    rcli(port, "CONFIG", "RESETSTAT")
            # A failed job (one attempt) is final too: the queue is drained, and its row says so.
            if done + int(rcli(port, "ZCARD", f"bull:bench-{name}:failed")) >= jobs:
                done_at[name] = (time.time(), cpu(name), redis_cpu(port) if alone else nan,
                                 script_calls(port) if alone else nan, sum(proc_rss_mb(p.pid) for p in procs[name]), side())
        time.sleep(0.01)
    for p in (p for ps in procs.values() for p in ps):
        p.send_signal(signal.SIGTERM)
    rows = []
    for name, ps in procs.items():
        for p in ps:
            p.wait(timeout=30)
        if name not in seen:  # every job failed
            seen[name] = spawned
        (t0, c0, r0, n0, h0), (t1, c1, r1, s1, rss, h1) = seen[name], done_at[name]
        if n0 >= jobs:
            (t0, c0, r0, n0, h0) = spawned
        n = jobs - n0
        row = {"name": name, "workers": workers, "jobs_per_s": n / (t1 - t0), "worker_cpu_us": (c1 - c0) / n * 1e6,
               "redis_cpu_us": (r1 - r0) / n * 1e6, "scripts_per_job": s1 / n, "redis_cpu_pct": (r1 - r0) / (t1 - t0) * 100,
               "rss_mb": rss, "failed": int(rcli(port, "ZCARD", f"bull:bench-{name}:failed"))}
        if hook:
            row["server_cpu_us"] = (h1 - h0) / n * 1e6
            row["not_200"] = int(rcli(port, "EVAL", NOT_200, "1", f"bull:bench-{name}:completed", f"bull:bench-{name}:"))
        rows.append(row)
    if hook:
        # The server counts requests, not contenders: a bad signature, or fewer good requests
        # than jobs completed, marks every row of this run.
        after = hook.stats()
        bad_sig = after["bad"] - hook_before["bad"]
        missing = max(0, sum(jobs - r["failed"] for r in rows) - (after["ok"] - hook_before["ok"]))
        conns = (after["connections"] - hook_before["connections"] - 1) / (len(rows) * jobs)  # - 1: the /stats request
        for r in rows:
            r["bad_requests"] = max(bad_sig, missing)
            r["conns_per_job"] = conns if alone else float("nan")
            r["not_ok"] = r["failed"] + r["not_200"] + r["bad_requests"]
    return rows


def run_latency(name, cmd_for, jobs, port, rate):
    """job-latency: one worker (concurrency 100) on an empty queue; Node adds at `rate` jobs/s."""
    url = f"redis://127.0.0.1:{port}"
    q = f"lat-{name}"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd_for(url, q), stderr=log, stdout=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    try:
        time.sleep(1.5)  # worker connected and waiting (bullpen: plugin from the artifact cache)
        out = subprocess.run(["node", f"{ROOT}/bench/node/latency.js", url, q, str(rate), str(jobs)],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise SystemExit(f"{name}: job-latency failed: {out.stderr}")
        r = json.loads(out.stdout)
    finally:
        proc.send_signal(signal.SIGTERM); proc.wait(timeout=30)
    failed = int(rcli(port, "ZCARD", f"bull:{q}:failed"))
    return {"name": name, **r, "failed": failed}


def machine():
    """One line saying what this run measured on (bench/README.md records it with each result)."""
    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // (1 << 20) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    try:
        bullmq = json.load(open(f"{ROOT}/tests/node/node_modules/bullmq/package.json"))["version"]
    except (OSError, ValueError, KeyError):
        bullmq = "?"
    redis = cmd("redis-server", "--version").split(" v=", 1)[-1].split(" ", 1)[0]
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} x {cpu}, {mem} GiB; Linux {os.uname().release}; "
            f"load average {os.getloadavg()[0]:.2f}; redis-server {redis}; node {cmd('node', '--version')}, bullmq {bullmq}; "
            f"{cmd('rustc', '--version')}; bullpen {cmd('git', '-C', ROOT, 'rev-parse', '--short', 'HEAD')}")


def setup():
    """--setup: what a clean clone needs (scripts/setup.sh), then the native baseline."""
    subprocess.run(["bash", f"{ROOT}/scripts/setup.sh"], check=True)
    subprocess.run(["cargo", "build", "--release", "--manifest-path", f"{ROOT}/bench/native/Cargo.toml",
                    "--target-dir", f"{ROOT}/target"], check=True)


def run_attempt_overhead():
    """attempt-overhead: the criterion bench, and its per-variant p50/p90/p99 summary lines."""
    out = subprocess.run(["cargo", "bench", "-p", "bullpen", "--bench", "attempt_overhead"], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"attempt-overhead failed:\n{out.stderr[-4000:]}")
    rows = []
    for line in out.stdout.split("attempt-overhead (new Store", 1)[-1].splitlines()[1:]:
        m = re.match(r"\s+(\S+)\s+p50 ([\d.]+) µs\s+p90 ([\d.]+) µs\s+p99 ([\d.]+) µs\s+\(n = (\d+)\)", line)
        if m:
            rows.append({"name": m[1], "p50_us": float(m[2]), "p90_us": float(m[3]), "p99_us": float(m[4]), "n": int(m[5])})
    if not rows:
        raise SystemExit(f"attempt-overhead printed no summary:\n{out.stdout[-4000:]}")
    return rows


def median_ratio(rows, name, base, key):
    """Median over rounds of rows[name][key] / rows[base][key] (same round, one worker); None if not both ran."""
    out = []
    for r in rows:
        b = next((x for x in rows if x["name"] == base and x["workers"] == r["workers"] and x["round"] == r["round"]), None)
        if r["name"] == name and r["workers"] == 1 and b and b[key]:
            out.append(r[key] / b[key])
    return statistics.median(out) if out else None


def print_targets(results, smoke, jobs):
    """The performance targets, each with this run's value (medians over rounds) and whether it was met.
    No verdict below 20,000 jobs: Node's worker is still warming up (its JIT) — at 2,000 jobs it
    spent 2–3x its steady CPU per job, which flatters every ratio against it."""
    verdicts = not smoke and jobs >= 20000
    wc = results.get("worker-concurrent", [])
    med = lambda name, key: statistics.median([r[key] for r in wc if r["name"] == name and r["workers"] == 1] or [float("nan")])
    rows = []
    def add(target, value, ok):
        verdict = "reported" if ok is None else ("**met**" if ok else "not met")
        if value == "not measured" or (not verdicts and ok is not None):
            verdict = "-"
        rows.append((target, value, verdict))
    x = median_ratio(wc, "bullpen-rust", "node", "jobs_per_s")
    add("worker-concurrent: bullpen-rust jobs/s ≥ 1.5x node's", f"{x:.2f}x" if x else "not measured", None if x is None else x >= 1.5)
    x = median_ratio(wc, "bullpen-rust", "node", "worker_cpu_us")
    add("worker CPU per job ≤ ½ node's", f"{x:.2f} of node's ({med('bullpen-rust', 'worker_cpu_us'):.0f} vs {med('node', 'worker_cpu_us'):.0f} µs)"
        if x else "not measured", None if x is None else x <= 0.5)
    # Redis runs every script on one thread: with it 100% busy, no worker doing
    # BullMQ's scripts for a job gets past 1e6 / (Redis CPU µs per job) jobs/s.
    if {"node", "bullpen-rust"} <= {r["name"] for r in wc}:
        r_us, node_js = med("bullpen-rust", "redis_cpu_us"), med("node", "jobs_per_s")
        add("(context) Redis-bound ceiling: 1e6 / bullpen-rust's Redis CPU µs per job",
            f"{1e6 / r_us:.0f} jobs/s = {1e6 / r_us / node_js:.2f}x node's", None)
    x = median_ratio(wc, "bullpen-rust", "native", "jobs_per_s")
    add("bullpen-rust jobs/s ≥ 0.9x native's (the cost of Wasm isolation)", f"{x:.2f}x" if x else "not measured", None if x is None else x >= 0.9)
    att = {r["name"]: r for r in results.get("attempt-overhead", [])}
    rust = att.get("rust")
    add("attempt-overhead rust p50 ≤ 30 µs", f"{rust['p50_us']:.1f} µs (p99 {rust['p99_us']:.1f})" if rust else "not measured",
        None if rust is None else rust["p50_us"] <= 30)
    for lang in ("go", "js", "python"):
        if lang in att:
            r, reuse = att[lang], att.get(f"{lang}-reuse")
            extra = f"; reused instance {reuse['p50_us']:.0f} µs" if reuse else ""
            add(f"attempt-overhead {lang} p50 (reported; plan in bench/README.md if > 500 µs)", f"{r['p50_us']:.0f} µs{extra}", None)
    wh = [r for r in results.get("webhook", []) if not r["not_ok"]]
    if "webhook" in results:
        x = median_ratio(wh, "bullpen-rust", "node", "jobs_per_s")
        add("webhook: webhook-rust jobs/s ≥ 1.3x node's (fetch + HMAC in-process)", f"{x:.2f}x" if x else "not measured",
            None if x is None else x >= 1.3)
        x = median_ratio(wh, "bullpen-rust", "node", "worker_cpu_us")
        wmed = lambda name: statistics.median([r["worker_cpu_us"] for r in wh if r["name"] == name] or [float("nan")])
        add("webhook: webhook-rust worker CPU per job ≤ 0.5 of node's",
            f"{x:.2f} of node's ({wmed('bullpen-rust'):.0f} vs {wmed('node'):.0f} µs)" if x else "not measured",
            None if x is None else x <= 0.5)
    rss = []
    for c in (10, 100, 1000):
        rs = [r["rss_mb"] for r in results.get("worker-concurrent" if c == 100 else f"worker-concurrent@{c}", [])
              if r["name"] == "bullpen-rust" and r["workers"] == 1]
        rss.append(f"{statistics.median(rs):.0f}" if rs else "-")
    add("bullpen-rust worker RSS MB at concurrency 10 / 100 / 1000", " / ".join(rss), None)
    note = ("smoke mode: a few hundred jobs, not a measurement" if smoke else
            "this run; medians over rounds" if verdicts else f"{jobs} jobs: too few for a verdict, use --jobs 20000 or more")
    print(f"\n## Targets ({note})")
    print("| target | measured | |")
    print("|---|---|---|")
    for t, v, ok in rows:
        print(f"| {t} | {v} | {ok} |")


def run_webhook(a, conc, jobs, port, only, core_rounds):
    """webhook (issue 22): each contender posts every job's payload, signed, to one local server
    (bench/node/hook-server.js), at concurrency 100 on its own queue; node is BullMQ's worker doing
    the same fetch + HMAC in-process (bench/node/webhook.js), bullpen-<lang> the webhook plugin.
    Rounds (--repeat) interleave the contenders; the full run does node and bullpen-rust three times.
    A contender with a job that failed, did not return {status: 200, body: "ok"} or reached the
    server badly signed gets no rate: its row says FAILED."""
    hook = Hook()
    rows = []
    try:
        rounds = 3 if core_rounds else a.repeat
        for rnd in range(rounds):
            cmds = {n: c for n, c in contenders(conc, a.bin, hook).items() if chosen(only, n)}
            if a.together:
                if rnd % 2:
                    cmds = dict(reversed(list(cmds.items())))
                rows += [{**r, "round": rnd + 1} for r in run_contenders(cmds, jobs, port, hook=hook)]
                rcli(port, "FLUSHALL")
                continue
            for name, cmd in cmds.items():
                if rnd > 0 and core_rounds and name not in ("node", "bullpen-rust"):
                    continue
                rows += [{**r, "round": rnd + 1} for r in run_contenders({name: cmd}, jobs, port, hook=hook)]
                rcli(port, "FLUSHALL")
    finally:
        hook.close()
    rounds = max(r["round"] for r in rows) if rows else 1
    num = lambda x, spec: "-" if x != x else format(x, spec)
    print(f"\n## webhook: {jobs} jobs, concurrency {conc}, POST + HMAC-SHA256 to a local server (its CPU apart), one redis-server, {os.cpu_count()} cores")
    print("| contender | jobs/s | vs node | worker CPU µs/job | CPU vs node | server CPU µs/job | server connections/job | Redis CPU µs/job | Redis scripts/job | worker RSS MB | failed | not 200 / bad requests |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        node = next((b for b in rows if b["name"] == "node" and b["round"] == r["round"]), None)
        ok = not r["not_ok"] and node and not node["not_ok"]
        r["vs_node"] = r["jobs_per_s"] / node["jobs_per_s"] if ok else None
        r["cpu_vs_node"] = r["worker_cpu_us"] / node["worker_cpu_us"] if ok else None
        label = r["name"] + (f" (round {r['round']})" if rounds > 1 else "")
        rate = f"{r['jobs_per_s']:.0f}" if not r["not_ok"] else "FAILED (no rate)"
        fmt = lambda x, spec: format(x, spec) if x is not None else "-"
        print(f"| {label} | {rate} | {fmt(r['vs_node'], '.2f')}{'x' if r['vs_node'] else ''} | "
              f"{r['worker_cpu_us']:.1f} | {fmt(r['cpu_vs_node'], '.2f')} | {num(r['server_cpu_us'], '.1f')} | {num(r['conns_per_job'], '.2f')} | "
              f"{num(r['redis_cpu_us'], '.1f')} | {num(r['scripts_per_job'], '.2f')} | {r['rss_mb']:.0f} | {r['failed']} | {r['not_200']} / {r['bad_requests']} |")
    if rounds > 1:
        med = lambda xs: statistics.median(xs) if xs else float("nan")
        print(f"\nMedians over {rounds} rounds (vs node: the median of each round's ratio; a contender that ran once: its round):")
        print("| contender | jobs/s | vs node | worker CPU µs/job | CPU vs node | server CPU µs/job | Redis CPU µs/job | worker RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for name in dict.fromkeys(r["name"] for r in rows):
            rs = [r for r in rows if r["name"] == name and not r["not_ok"]]
            if not rs:
                print(f"| {name} | FAILED | - | - | - | - | - | - |")
                continue
            vs = [r["vs_node"] for r in rs if r["vs_node"] is not None]
            cn = [r["cpu_vs_node"] for r in rs if r["cpu_vs_node"] is not None]
            print(f"| {name} | {med([r['jobs_per_s'] for r in rs]):.0f} | {f'{med(vs):.2f}x' if vs else '-'} | "
                  f"{med([r['worker_cpu_us'] for r in rs]):.1f} | {f'{med(cn):.2f}' if cn else '-'} | "
                  f"{num(med([r['server_cpu_us'] for r in rs]), '.1f')} | {num(med([r['redis_cpu_us'] for r in rs]), '.1f')} | "
                  f"{med([r['rss_mb'] for r in rs]):.0f} |")
    # Issue 22's target, on this scenario's own rows (the full run's targets table repeats it).
    x = median_ratio([r for r in rows if not r["not_ok"]], "bullpen-rust", "node", "jobs_per_s")
    y = median_ratio([r for r in rows if not r["not_ok"]], "bullpen-rust", "node", "worker_cpu_us")
    if x and y:
        verdict = ("not judged (smoke mode)" if a.smoke else f"not judged ({jobs} jobs: Node's JIT is still warming up; use 2000 or more)"
                   if jobs < 2000 else "**met**" if x >= 1.3 and y <= 0.5 else "not met")
        print(f"\nTarget (issue 22): bullpen-rust ≥ 1.3x node's jobs/s at ≤ 0.5 of its worker CPU per job: {x:.2f}x, {y:.2f} — {verdict}")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--scenario", default="all")
    ap.add_argument("--only", help="comma-separated contender names")
    ap.add_argument("--workers", default="1", help="comma-separated worker process counts (e.g. 1,2,4)")
    ap.add_argument("--concurrency", help="worker-concurrent at each of these (default: 10,100,1000 for --scenario all, else 100)")
    ap.add_argument("--rate", type=int, default=1000, help="job-latency: jobs/s added")
    ap.add_argument("--bin", action="append", default=[], metavar="NAME=PATH",
                    help="also run this bullpen binary with echo-rust.wasm as contender NAME (A/B of host builds); "
                         "'NAME=PATH --flag value' adds worker flags (A/B of settings)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="worker-concurrent/-generic: run the contenders this many rounds, interleaved, and print the medians "
                         "(default 1; the full run, --scenario all: 3 rounds of node, native and bullpen-rust at concurrency 100)")
    ap.add_argument("--smoke", action="store_true", help="CI mode: 300 jobs, fail unless all complete")
    ap.add_argument("--setup", action="store_true", help="first run scripts/setup.sh and build the native baseline")
    ap.add_argument("--otlp", action="store_true",
                    help="also run bullpen-rust-traced: bullpen-rust with --otlp-endpoint to a receiver in this process "
                         "(tracing on vs off; e.g. --scenario worker-concurrent --only bullpen-rust,bullpen-rust-traced --together)")
    ap.add_argument("--together", action="store_true",
                    help="worker-concurrent/-generic: run the chosen contenders at the same time, each on its own queue "
                         "(an A/B of worker CPU per job under the same machine phase; jobs/s and Redis CPU are shared)")
    a = ap.parse_args()
    if a.smoke:
        a.jobs, a.rate = 300, 200
    if a.concurrency is None:
        a.concurrency = "10,100,1000" if a.scenario == "all" and not a.smoke else "100"
    # One round per contender lands in whatever phase the VM is in (Node's
    # CPU per job moved 55-80 µs between runs here): the full run takes the
    # targets' numbers from the median of three interleaved rounds of the
    # contenders they name; the other scenarios and contenders run once.
    core_rounds = a.repeat is None and a.scenario == "all" and not a.smoke
    if a.repeat is None:
        a.repeat = 1
    if a.setup:
        setup()
    print(f"# bullpen benchmarks: {machine()}")
    scen = {}
    for c in [int(x) for x in a.concurrency.split(",")]:
        scen["worker-concurrent" if c == 100 else f"worker-concurrent@{c}"] = (c, a.jobs)
    scen["worker-generic"] = (1, a.jobs if a.smoke else max(1000, a.jobs // 10))
    scen["job-latency"] = (100, a.jobs if a.smoke else max(1000, a.jobs // 5))
    # Named alone, webhook runs --jobs jobs; in the full run N/10 (each job is an HTTP request).
    scen["webhook"] = (100, a.jobs if a.smoke or a.scenario == "webhook" else max(1000, a.jobs // 10))
    # In smoke mode CI runs the bench itself (`cargo test --benches`, criterion's test mode).
    if not a.smoke:
        scen["attempt-overhead"] = (0, 0)
    names = scen if a.scenario == "all" else {k: v for k, v in scen.items() if k.split("@")[0] == a.scenario}
    otlp = OtlpSink() if a.otlp else None
    d = tempfile.mkdtemp()
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
                             stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                rcli(port, "PING"); break
            except subprocess.CalledProcessError:
                time.sleep(0.05)
        results = {}
        bad = []
        for sname, (conc, jobs) in names.items():
            rows = []
            if sname == "attempt-overhead":
                rows = run_attempt_overhead()
                print("\n## attempt-overhead: one attempt's host cost, no Redis (new Store + instantiate + process + drop; -reuse: a reused instance)")
                print("| guest | p50 µs | p90 µs | p99 µs | iterations |")
                print("|---|---|---|---|---|")
                for r in rows:
                    print(f"| {r['name']} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | {r['p99_us']:.1f} | {r['n']} |")
                results[sname] = rows
                continue
            # Other concurrencies than 100 are for RSS growth and the curve:
            # node, native and bullpen-rust unless --only says otherwise.
            only = a.only or ("node,native,bullpen-rust" if "@" in sname else None)
            if sname == "job-latency":
                for name, cmd in contenders(conc, a.bin, otlp=otlp).items():
                    if not chosen(only, name):
                        continue
                    rows.append(run_latency(name, cmd, jobs, port, a.rate))
                    rcli(port, "FLUSHALL")
                print(f"\n## job-latency: {jobs} jobs at {a.rate} jobs/s, Queue.add -> QueueEvents completed (ms), one redis-server, {os.cpu_count()} cores")
                print("| contender | p50 ms | p90 ms | p99 ms | max ms | achieved jobs/s | failed |")
                print("|---|---|---|---|---|---|---|")
                for r in rows:
                    print(f"| {r['name']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['rate']:.0f} | {r['failed']} |")
                    if r["failed"] or r["n"] != jobs:
                        bad.append(f"{sname}/{r['name']}")
                results[sname] = rows
                continue
            if sname == "webhook":
                rows = run_webhook(a, conc, jobs, port, only, core_rounds)
                results[sname] = rows
                bad += [f"{sname}/{r['name']}" for r in rows if r["not_ok"]]
                continue
            # Rounds interleave the contenders, so a machine that drifts
            # (shared VMs do, by ±20% within minutes) drifts for all of them.
            rounds = 3 if core_rounds and sname == "worker-concurrent" else a.repeat
            for rnd in range(rounds):
                if a.together:
                    cmds = {n: c for n, c in contenders(conc, a.bin, otlp=otlp).items() if chosen(only, n)}
                    # Alternate who starts first, in case starting order matters.
                    if rnd % 2:
                        cmds = dict(reversed(list(cmds.items())))
                    rows += [{**r, "round": rnd + 1} for r in run_contenders(cmds, jobs, port)]
                    rcli(port, "FLUSHALL")
                    continue
                for k in [int(x) for x in a.workers.split(",")]:
                    for name, cmd in contenders(conc, a.bin, otlp=otlp).items():
                        if not chosen(only, name) or (rnd > 0 and core_rounds and name not in ("node", "native", "bullpen-rust")):
                            continue
                        rows += [{**r, "round": rnd + 1} for r in run_contenders({name: cmd}, jobs, port, k)]
                        rcli(port, "FLUSHALL")
            print(f"\n## {sname}: {jobs} jobs, concurrency {conc} per worker, one redis-server, {os.cpu_count()} cores")
            print(f"| contender | workers | jobs/s | vs node | vs native | worker CPU µs/job | CPU vs node | Redis CPU µs/job | Redis scripts/job | Redis CPU % | worker RSS MB | failed |")
            print(f"|---|---|---|---|---|---|---|---|---|---|---|---|")
            num = lambda x, spec: "-" if x != x else format(x, spec)  # nan: not measured (--together)
            for r in rows:
                same = lambda b, n: b["name"] == n and b["workers"] == r["workers"] and b["round"] == r["round"]
                node = next((b for b in rows if same(b, "node")), None)
                native = next((b for b in rows if same(b, "native")), None)
                r["vs_node"] = r["jobs_per_s"] / node["jobs_per_s"] if node else None
                fmt = lambda x, unit="x": f"{x:.2f}{unit}" if x is not None else "-"
                label = r["name"] + (f" (round {r['round']})" if rounds > 1 else "")
                print(f"| {label} | {r['workers']} | {r['jobs_per_s']:.0f} | {fmt(r['vs_node'])} | {fmt(r['jobs_per_s'] / native['jobs_per_s'] if native else None)} | "
                      f"{r['worker_cpu_us']:.1f} | {fmt(r['worker_cpu_us'] / node['worker_cpu_us'] if node else None, '')} | {num(r['redis_cpu_us'], '.1f')} | "
                      f"{num(r['scripts_per_job'], '.2f')} | {num(r['redis_cpu_pct'], '.0f')} | {r['rss_mb']:.0f} | {r['failed']} |")
            if rounds > 1:
                print(f"\nMedians over {rounds} rounds (vs node: the median of each round's ratio; a contender that ran once: its round):")
                print("| contender | workers | jobs/s | vs node | vs native | worker CPU µs/job | CPU vs node | Redis CPU µs/job | worker RSS MB |")
                print("|---|---|---|---|---|---|---|---|---|")
                med = lambda xs: statistics.median(xs) if xs else float("nan")
                for key in dict.fromkeys((r["name"], r["workers"]) for r in rows):
                    rs = [r for r in rows if (r["name"], r["workers"]) == key]
                    vs = [r["vs_node"] for r in rs if r["vs_node"] is not None]
                    ratio = f"{med(vs):.2f}x" if vs else "-"
                    vn = median_ratio(rows, key[0], "native", "jobs_per_s") if key[1] == 1 else None
                    cn = median_ratio(rows, key[0], "node", "worker_cpu_us") if key[1] == 1 else None
                    print(f"| {key[0]} | {key[1]} | {med([r['jobs_per_s'] for r in rs]):.0f} | {ratio} | {f'{vn:.2f}x' if vn else '-'} | "
                          f"{med([r['worker_cpu_us'] for r in rs]):.1f} | {f'{cn:.2f}' if cn else '-'} | "
                          f"{num(med([r['redis_cpu_us'] for r in rs]), '.1f')} | {med([r['rss_mb'] for r in rs]):.0f} |")
            bad += [f"{sname}/{r['name']}" for r in rows if r["failed"]]
            results[sname] = rows
        if a.scenario == "all":
            print_targets(results, a.smoke, a.jobs)
        if otlp:
            print(f"\nOTLP receiver (--otlp): {otlp.spans} spans in {otlp.requests} requests, {otlp.bytes / 1e6:.1f} MB")
        print("\n" + json.dumps(results))
        if bad:
            raise SystemExit(f"jobs failed in: {', '.join(bad)}")
    finally:
        redis.kill(); redis.wait(); shutil.rmtree(d, ignore_errors=True)
        if otlp:
            otlp.close()


if __name__ == "__main__":
    main()
