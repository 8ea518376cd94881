//! The benchmark suite's smoke mode, so `bench/run.py` cannot rot.
//! A few hundred jobs per scenario and contender, on its own redis-server;
//! fails unless every job completed. Numbers are not asserted (timed
//! assertions on a shared machine are noise): `bench/README.md` has them.

use std::process::Command;

use bullpen_tests::*;

#[test]
fn bench_run_smoke_mode_completes_every_scenario() {
    // The contenders it runs need these; the harness says what is missing.
    let _ = (bullpen_bin(), plugin("echo", "rust"), plugin("webhook", "rust"));
    let out = Command::new("python3").arg(root().join("bench/run.py")).arg("--smoke").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench/run.py --smoke failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for scenario in ["## worker-concurrent:", "## worker-generic:", "## job-latency:", "## webhook:"] {
        assert!(stdout.contains(scenario), "no {scenario} table:\n{stdout}");
    }
    assert!(stdout.starts_with("# bullpen benchmarks: "), "no machine line first:\n{stdout}");
    // The closing table of a full run (the performance targets, each with the run's value; bench/run.py's
    // `print_targets` titles it as below), not judged in smoke mode.
    assert!(stdout.contains("## Targets (smoke mode"), "no targets table:\n{stdout}");
    assert!(stdout.contains("| worker CPU per job ≤ ½ node's |"), "no CPU target row:\n{stdout}");
    assert!(stdout.contains("| webhook: webhook-rust jobs/s ≥ 1.3x node's"), "no webhook target row:\n{stdout}");
    // The webhook scenario (issue 22) posts every job to a local server; its every job completed
    // with {status: 200, body: "ok"} and reached the server rightly signed, or the run failed above.
    for contender in ["| node |", "| bullpen-rust |", "| bullpen-go |", "| bullpen-js |"] {
        assert_eq!(stdout.matches(contender).count(), 4, "{contender} in every scenario:\n{stdout}");
    }
}

/// `--together`: the contenders run at once, each on its own queue; every job
/// completes and Redis's columns (shared, so not any one contender's) say "-".
#[test]
fn bench_run_together_runs_contenders_side_by_side() {
    let _ = (bullpen_bin(), plugin("echo", "rust"));
    let out = Command::new("python3")
        .arg(root().join("bench/run.py"))
        .args(["--smoke", "--scenario", "worker-concurrent", "--together", "--only", "node,bullpen-rust"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench/run.py --together failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for contender in ["node", "bullpen-rust"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {contender} |")))
            .unwrap_or_else(|| panic!("no {contender} row:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | name | workers | jobs/s | vs node | vs native | CPU | CPU vs node | Redis CPU | scripts | Redis % | RSS | failed |
        assert_eq!(&cells[8..11], ["-", "-", "-"], "Redis columns are shared when together: {row}");
        assert_eq!(cells[12], "0", "no failed jobs: {row}");
    }
}
