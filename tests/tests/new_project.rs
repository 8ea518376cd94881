//! What a new user does, per language, from an empty folder with only the
//! `bullpen` binary and the SDK as a package (scripts/package-sdks.sh: the
//! packaged crate, the npm tarball, a Go module proxy; nothing from this
//! repository's paths): `bullpen new`, `bullpen build` (twice: the same
//! digest), `bullpen run` (compiles once, says so), then a real worker
//! processing a job added by Node's bullmq. The template's own unit test
//! (the SDK's test harness, in the language's test runner) runs separately.
//! Also the build-time refusals of a backoff built for the wrong world.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use bullpen_tests::{bullpen_bin, node_add, root, succeeded, wait_finished, Redis, Worker};
use serde_json::json;
use sha2::{Digest, Sha256};

/// scripts/package-sdks.sh's output, made once per test run.
fn packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("target/sdk-packages");
        let out = Command::new("bash").arg(root().join("scripts/package-sdks.sh")).arg(&dir).output().unwrap();
        assert!(out.status.success(), "package-sdks.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// A user's machine: an empty folder (the home of the project) and the
/// environment that makes the unpublished SDK packages the ones resolved.
struct Machine {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let pkgs = packages();
        // Rust: the packaged crate, unpacked, patched in for crates.io's.
        let crates = dir.path().join("crates");
        std::fs::create_dir_all(&crates).unwrap();
        ok(Command::new("tar")
            .arg("-xzf")
            .arg(pkgs.join("bullpen-guest-0.1.0.crate"))
            .arg("-C")
            .arg(&crates)
            .output()
            .unwrap());
        std::fs::create_dir_all(dir.path().join(".cargo")).unwrap();
        std::fs::write(
            dir.path().join(".cargo/config.toml"),
            format!(
                "[patch.crates-io]\nbullpen-guest = {{ path = {:?} }}\n",
                crates.join("bullpen-guest-0.1.0").to_str().unwrap()
            ),
        )
        .unwrap();
        let env = vec![
            // One target folder across runs: the SDK's dependencies compile once.
            ("CARGO_TARGET_DIR".into(), root().join("target/new-project").to_str().unwrap().into()),
            // Go: the module proxy holds bullpen.dev/guest; no checksum
            // database knows it (unpublished); a fresh module cache.
            ("GOPROXY".into(), format!("file://{}", pkgs.join("goproxy").display())),
            ("GOSUMDB".into(), "off".into()),
            ("GOFLAGS".into(), "-mod=mod -modcacherw".into()),
            ("GOMODCACHE".into(), dir.path().join("gomodcache").to_str().unwrap().into()),
            ("GOTOOLCHAIN".into(), "local".into()),
            // bullpen run's compile cache, empty at first.
            ("BULLPEN_CACHE_DIR".into(), dir.path().join("cache").to_str().unwrap().into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        Machine { dir, env }
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str], cwd: &Path) -> Output {
        Command::new(program).args(args).current_dir(cwd).envs(self.env.iter().cloned()).output().unwrap()
    }

    fn bullpen(&self, args: &[&str], cwd: &Path) -> Output {
        self.cmd(bullpen_bin(), args, cwd)
    }

    /// `bullpen new hello --lang <lang>` in the empty folder.
    fn new_project(&self, lang: &str) -> PathBuf {
        let out = ok(self.bullpen(&["new", "hello", "--lang", lang], self.dir.path()));
        assert!(String::from_utf8_lossy(&out.stderr).contains("bullpen build"), "new says what is next");
        let project = self.dir.path().join("hello");
        assert!(project.join("README.md").exists());
        project
    }

    /// `bullpen worker` on queue `hello`, with `bullpen run`'s compile cache
    /// (a JS component is not compiled again: 20-30 s on a busy machine).
    fn worker(&self, redis: &Redis, component: &Path) -> Worker {
        let mut args = redis.args();
        args.extend(["--queue", "hello", "--plugin", component.to_str().unwrap()].map(String::from));
        let cache = self.env.iter().find(|(k, _)| k == "BULLPEN_CACHE_DIR").unwrap();
        Worker::spawn_env(&args, &[(cache.0.as_str(), cache.1.as_str())])
    }

    /// `bullpen build`: the component's path is the last stdout line.
    fn build(&self, project: &Path) -> PathBuf {
        let out = ok(self.bullpen(&["build"], project));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        assert_eq!(last, "dist/hello.wasm", "stdout: {stdout}");
        project.join(last)
    }
}

#[track_caller]
fn ok(out: Output) -> Output {
    succeeded(out, "the command")
}

fn digest(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// new, build twice (the same digest), run (compiling said once), worker.
fn new_build_run_work(lang: &str, prepare: impl FnOnce(&Machine, &Path)) {
    let m = Machine::new();
    let project = m.new_project(lang);
    prepare(&m, &project);
    let component = m.build(&project);
    let first = digest(&component);
    assert_eq!(m.build(&project), component);
    assert_eq!(digest(&component), first, "{lang}: a rebuild of the same source gave another component");

    let run = |data: &str| m.bullpen(&["run", component.to_str().unwrap(), "--data", data], &project);
    let out = ok(run(r#"{"to":"ada"}"#));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("compiling (first load of this version)…"), "{lang}: {stderr}");
    assert!(stdout.contains(r#"completed {"ok":true,"received":{"to":"ada"}}"#), "{lang}: {stdout}");
    assert!(stdout.contains(r#"log "processing job job 1""#), "{lang}: {stdout}");
    // Any JSON object; the second load comes from the compile cache.
    let out = ok(run(r#"{"nested":{"list":[1,2,3]},"unicode":"ünï"}"#));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("compiling"), "{lang}: compiled twice");
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""received":{"nested":{"list":[1,2,3]},"unicode":"ünï"}"#));

    let redis = Redis::start();
    let _worker = m.worker(&redis, &component);
    let ids = node_add(&redis, "hello", json!([{"name": "welcome", "data": {"to": "ada@example.com"}}]));
    let v = wait_finished(&redis, "hello", &ids, Duration::from_secs(60));
    let job = &v["jobs"][0];
    assert_eq!(job["state"], "completed", "{lang}: {job}");
    assert_eq!(job["returnvalue"], json!({"ok": true, "received": {"to": "ada@example.com"}}), "{lang}");
}

fn no_prep(_: &Machine, _: &Path) {}

/// The JS SDK from its npm tarball (what `npm install bullpen-guest` gets).
fn install_js_sdk(m: &Machine, project: &Path) {
    let tgz = packages().join("bullpen-guest-0.1.0.tgz");
    ok(m.cmd("npm", &["install", "--no-audit", "--no-fund", "--prefer-offline", tgz.to_str().unwrap()], project));
}

/// The Python SDK in the project's .venv (`pip install bullpen-guest`
/// from a copy of its source folder, its WIT link followed: it is not on
/// PyPI, and pip builds in the folder it is given).
fn install_python_sdk(m: &Machine, project: &Path) {
    let sdk = root().join("guest-sdk/python");
    assert!(sdk.join("pyproject.toml").exists(), "guest-sdk/python missing (the Python SDK)");
    let copy = m.dir.path().join("python");
    let tar = format!(
        "tar -C {:?} --exclude=.venv --exclude=__pycache__ -chf - python | tar -C {:?} -xf -",
        root().join("guest-sdk"),
        m.dir.path()
    );
    ok(Command::new("bash").args(["-c", &tar]).output().unwrap());
    ok(m.cmd("python3", &["-m", "venv", ".venv"], project));
    ok(m.cmd(".venv/bin/pip", &["install", "--quiet", copy.to_str().unwrap(), "pytest"], project));
}

#[test]
fn rust_project() {
    new_build_run_work("rust", no_prep);
}

#[test]
fn go_project() {
    new_build_run_work("go", no_prep);
}

#[test]
fn js_project() {
    new_build_run_work("js", install_js_sdk);
}

#[test]
fn python_project() {
    new_build_run_work("python", install_python_sdk);
}

/// The template's unit test passes in the language's own runner (the
/// SDK's test harness: no Redis, no Wasm).
fn template_test(lang: &str, prepare: impl FnOnce(&Machine, &Path), test: &[&str]) {
    let m = Machine::new();
    let project = m.new_project(lang);
    prepare(&m, &project);
    ok(m.cmd(test[0], &test[1..], &project));
}

#[test]
fn rust_template_unit_test() {
    template_test("rust", no_prep, &["cargo", "test", "--quiet"]);
}

#[test]
fn go_template_unit_test() {
    template_test("go", no_prep, &["go", "test", "./..."]);
}

#[test]
fn js_template_unit_test() {
    template_test("js", install_js_sdk, &["npm", "test", "--silent"]);
}

#[test]
fn python_template_unit_test() {
    template_test("python", install_python_sdk, &[".venv/bin/python", "-m", "pytest", "-q"]);
}

/// A Go processor that calls guest.WithBackoff, built for the processor
/// world (which has no `backoff` export), is refused with the fix; without
/// --world the world follows the module, and `bullpen build` needs none: a
/// worker then runs the strategy (it gives up, so the job fails after one
/// attempt of two instead of being retried at once).
#[test]
fn a_backoff_for_the_wrong_world_is_refused_at_build() {
    let m = Machine::new();
    let project = m.new_project("go");
    let main = std::fs::read_to_string(project.join("main.go")).unwrap();
    let main = main
        .replace(
            "\tvar data any\n",
            "\tif job.AttemptsMade() == 0 {\n\t\treturn guest.Outcome{}, guest.Retry(\"the first attempt fails\")\n\t}\n\tvar data any\n",
        )
        .replace(
            "func init() { guest.ExportProcessor(process) }",
            "func giveUp(string, uint32, string, *guest.Job) guest.Backoff { return guest.GiveUp }\n\n\
             func init() { guest.ExportProcessor(process, guest.WithBackoff(giveUp)) }",
        );
    assert!(main.contains("WithBackoff(giveUp)") && main.contains("first attempt fails"));
    std::fs::write(project.join("main.go"), main).unwrap();
    let mut go = Command::new("go");
    go.args(["build", "-buildmode=c-shared", "-o", "core.wasm", "."])
        .current_dir(&project)
        .envs(m.env.iter().cloned())
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm");
    ok(go.output().unwrap());

    let tool = bullpen_bin().with_file_name("bullpen-componentize");
    let componentize = |world: &[&str]| {
        Command::new(&tool).arg(project.join("core.wasm")).args(world).arg("-o").arg(project.join("out.wasm")).output()
    };
    let out = componentize(&["--world", "processor"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("calls guest.WithBackoff") && err.contains("--world processor-with-backoff"), "{err}");
    assert!(!project.join("out.wasm").exists());
    ok(componentize(&[]).unwrap());
    std::fs::remove_file(project.join("core.wasm")).unwrap();

    let component = m.build(&project);
    let redis = Redis::start();
    let _worker = m.worker(&redis, &component);
    let opts = json!({"attempts": 2, "backoff": {"type": "custom"}});
    let ids = node_add(&redis, "hello", json!([{"name": "welcome", "data": {}, "opts": opts}]));
    let v = wait_finished(&redis, "hello", &ids, Duration::from_secs(30));
    let job = &v["jobs"][0];
    assert_eq!(job["state"], "failed", "the strategy gave up: {job}");
    assert_eq!(job["attemptsMade"], 1, "{job}");
}
