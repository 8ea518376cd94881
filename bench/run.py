#!/usr/bin/env python3
"""bullpen benchmarks, side by side on one local redis-server.

    python3 bench/run.py [--jobs 50000] [--scenario worker-concurrent|worker-generic|job-latency|all]
                         [--workers 1,2,4] [--concurrency 10,100,1000] [--rate 1000] [--smoke]

Scenarios (names from BullMQ's benchmark suite):
  worker-concurrent  N small jobs pre-added, one worker process, concurrency 100, until drained
  worker-generic     the same at concurrency 1 (latency-bound; N/10 jobs)
  job-latency        Queue.add in Node -> `completed` seen by Node's QueueEvents, p50/p90/p99,
                     at a steady --rate jobs/s (N/5 jobs), worker concurrency 100
`--concurrency 10,100,1000` runs worker-concurrent at each (RSS growth with concurrency).
`--smoke` is the CI mode (tests/tests/bench_smoke.rs): 300 jobs, every scenario, the contenders that
are built, and exit 1 unless every job completed.
Contenders, each doing echo's work per job (one log line, progress 100, return the data):
  node        BullMQ's own Node worker (bullmq@6)            -- the baseline
  native      a Rust worker on bullmq-official, no Wasm       -- the protocol ceiling
  bullpen-<lang>  bullpen with target/plugins/echo-<lang>.wasm (a fresh instance per job)
For each: jobs/s, worker CPU µs per job (from /proc, summed over worker
processes), Redis CPU µs per job (INFO cpu), Lua scripts per job (INFO
commandstats: EVAL + EVALSHA calls) and Redis's share of one core
(100% = Redis is the bottleneck: it is single-threaded), worker RSS, and
the ratio of jobs/s to node's. `--workers 1,2,4` repeats each run with that
many worker processes on the queue (the scaling curve). Needs
`bash scripts/setup.sh` (release host, plugins, tests/node) and
`cargo build --release -p bullpen-bench-native`.
"""
import argparse, json, os, shlex, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

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
    """EVAL/EVALSHA calls since the last CONFIG RESETSTAT (Lua scripts run)."""
    n = 0
    for l in rcli(port, "INFO", "commandstats").splitlines():
        if l.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
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


def contenders(conc, extra_bins=()):
    c = {"node": lambda url, q: ["node", f"{ROOT}/bench/node/worker.js", url, q, str(conc)]}
    native = f"{ROOT}/target/release/bullpen-bench-native"
    if os.path.exists(native):
        c["native"] = lambda url, q: [native, url, q, str(conc)]
    for lang in ("rust", "go", "js"):
        p = f"{ROOT}/target/plugins/echo-{lang}.wasm"
        if os.path.exists(p):
            c[f"bullpen-{lang}"] = lambda url, q, p=p: [f"{ROOT}/target/release/bullpen", "worker", "--redis", url,
                                                        "--queue", q, "--plugin", p, "--concurrency", str(conc)]
            # Opt-in instance reuse (an instance serves up to 1000 attempts): not in the default
            # set, whose point is a fresh instance per job; ask for it with --only (see chosen()).
            c[f"bullpen-{lang}-reuse"] = lambda url, q, p=p: [f"{ROOT}/target/release/bullpen", "worker", "--redis", url,
                                                              "--queue", q, "--plugin", p, "--concurrency", str(conc),
                                                              "--instance-reuse", "1000"]
    # A/B of two host builds, or of worker flags, in one run: NAME=PATH [FLAGS...] runs PATH (a
    # `bullpen` binary) with echo-rust.wasm, and FLAGS after the worker's own.
    for spec in extra_bins:
        name, rest = spec.split("=", 1)
        path, *flags = shlex.split(rest)
        c[name] = lambda url, q, b=path, f=flags: [b, "worker", "--redis", url, "--queue", q,
                                                   "--plugin", f"{ROOT}/target/plugins/echo-rust.wasm", "--concurrency", str(conc), *f]
    return c


def chosen(only, name):
    """--only's names; without it every contender but the opt-in `-reuse` ones."""
    return name in only.split(",") if only else not name.endswith("-reuse")


def run_one(name, cmd_for, jobs, port, workers=1):
    url = f"redis://127.0.0.1:{port}"
    q = f"bench-{name}"
    subprocess.run(["node", f"{ROOT}/bench/node/add.js", url, q, str(jobs)], check=True)
    log = tempfile.TemporaryFile()
    procs = [subprocess.Popen(cmd_for(url, q), stderr=log, stdout=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
             for _ in range(workers)]
    cpu = lambda: sum(proc_cpu(p.pid) for p in procs)
    t0 = c0 = r0 = None
    start_at = max(1, jobs // 100)
    deadline = time.time() + 600
    while time.time() < deadline:
        done = int(rcli(port, "ZCARD", f"bull:{q}:completed"))
        if t0 is None and done >= start_at:
            t0, c0, r0, n0 = time.time(), cpu(), redis_cpu(port), done
            rcli(port, "CONFIG", "RESETSTAT")
        if done >= jobs:
            t1, c1, r1, s1 = time.time(), cpu(), redis_cpu(port), script_calls(port)
            break
        time.sleep(0.01)
    else:
        [p.kill() for p in procs]; raise SystemExit(f"{name}: not drained in time")
    rss = sum(proc_rss_mb(p.pid) for p in procs)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=30)
    failed = int(rcli(port, "ZCARD", f"bull:{q}:failed"))
    n = jobs - n0
    return {"name": name, "workers": workers, "jobs_per_s": n / (t1 - t0), "worker_cpu_us": (c1 - c0) / n * 1e6,
            "redis_cpu_us": (r1 - r0) / n * 1e6, "scripts_per_job": s1 / n, "redis_cpu_pct": (r1 - r0) / (t1 - t0) * 100, "rss_mb": rss, "failed": failed}


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--scenario", default="all")
    ap.add_argument("--only", help="comma-separated contender names")
    ap.add_argument("--workers", default="1", help="comma-separated worker process counts (e.g. 1,2,4)")
    ap.add_argument("--concurrency", default="100", help="worker-concurrent at each of these (e.g. 10,100,1000)")
    ap.add_argument("--rate", type=int, default=1000, help="job-latency: jobs/s added")
    ap.add_argument("--bin", action="append", default=[], metavar="NAME=PATH",
                    help="also run this bullpen binary with echo-rust.wasm as contender NAME (A/B of host builds); "
                         "'NAME=PATH --flag value' adds worker flags (A/B of settings)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="worker-concurrent/-generic: run the contenders this many rounds, interleaved, and print the medians")
    ap.add_argument("--smoke", action="store_true", help="CI mode: 300 jobs, fail unless all complete")
    a = ap.parse_args()
    if a.smoke:
        a.jobs, a.rate = 300, 200
    scen = {}
    for c in [int(x) for x in a.concurrency.split(",")]:
        scen["worker-concurrent" if c == 100 else f"worker-concurrent@{c}"] = (c, a.jobs)
    scen["worker-generic"] = (1, a.jobs if a.smoke else max(1000, a.jobs // 10))
    scen["job-latency"] = (100, a.jobs if a.smoke else max(1000, a.jobs // 5))
    names = scen if a.scenario == "all" else {k: v for k, v in scen.items() if k.split("@")[0] == a.scenario}
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
            if sname == "job-latency":
                for name, cmd in contenders(conc, a.bin).items():
                    if not chosen(a.only, name):
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
            # Rounds interleave the contenders, so a machine that drifts
            # (shared VMs do, by ±20% within minutes) drifts for all of them.
            for rnd in range(a.repeat):
                for k in [int(x) for x in a.workers.split(",")]:
                    for name, cmd in contenders(conc, a.bin).items():
                        if not chosen(a.only, name):
                            continue
                        rows.append({**run_one(f"{name}", cmd, jobs, port, k), "round": rnd + 1})
                        rcli(port, "FLUSHALL")
            print(f"\n## {sname}: {jobs} jobs, concurrency {conc} per worker, one redis-server, {os.cpu_count()} cores")
            print(f"| contender | workers | jobs/s | vs node | worker CPU µs/job | Redis CPU µs/job | Redis scripts/job | Redis CPU % | worker RSS MB | failed |")
            print(f"|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                base = next((b["jobs_per_s"] for b in rows if b["name"] == "node" and b["workers"] == r["workers"] and b["round"] == r["round"]), None)
                r["vs_node"] = r["jobs_per_s"] / base if base else None
                ratio = f"{r['vs_node']:.2f}x" if base else "-"
                label = r["name"] + (f" (round {r['round']})" if a.repeat > 1 else "")
                print(f"| {label} | {r['workers']} | {r['jobs_per_s']:.0f} | {ratio} | {r['worker_cpu_us']:.1f} | {r['redis_cpu_us']:.1f} | {r['scripts_per_job']:.2f} | "
                      f"{r['redis_cpu_pct']:.0f} | {r['rss_mb']:.0f} | {r['failed']} |")
            if a.repeat > 1:
                print(f"\nMedians over {a.repeat} rounds (vs node: the median of each round's ratio):")
                print("| contender | workers | jobs/s | vs node | worker CPU µs/job | Redis CPU µs/job | worker RSS MB |")
                print("|---|---|---|---|---|---|---|")
                med = lambda xs: statistics.median(xs) if xs else float("nan")
                for key in dict.fromkeys((r["name"], r["workers"]) for r in rows):
                    rs = [r for r in rows if (r["name"], r["workers"]) == key]
                    vs = [r["vs_node"] for r in rs if r["vs_node"] is not None]
                    ratio = f"{med(vs):.2f}x" if vs else "-"
                    print(f"| {key[0]} | {key[1]} | {med([r['jobs_per_s'] for r in rs]):.0f} | {ratio} | {med([r['worker_cpu_us'] for r in rs]):.1f} | "
                          f"{med([r['redis_cpu_us'] for r in rs]):.1f} | {med([r['rss_mb'] for r in rs]):.0f} |")
            bad += [f"{sname}/{r['name']}" for r in rows if r["failed"]]
            results[sname] = rows
        print("\n" + json.dumps(results))
        if bad:
            raise SystemExit(f"jobs failed in: {', '.join(bad)}")
    finally:
        redis.kill(); redis.wait(); shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
