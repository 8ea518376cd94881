use redis::aio::ConnectionLike;
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::Error;

/// A single loaded Lua script with its metadata.
#[derive(Debug, Clone)]
pub struct LuaScript {
    /// The script name (e.g., "addStandardJob").
    #[allow(dead_code)]
    pub name: String,
    /// Number of KEYS arguments the script expects.
    pub num_keys: usize,
    /// The Lua source code.
    pub content: String,
    /// SHA1 hash of the script content.
    pub sha: String,
    /// bullpen patch 4 (PATCHES.md): the same script as a Redis Function
    /// library, for the scripts that have one, and whether to call it.
    pub function: Option<Arc<FunctionForm>>,
}

/// bullpen patch 4 (PATCHES.md): a BullMQ script loaded as a Redis Function
/// (Redis >= 7) and run with FCALL instead of EVALSHA. The same Lua runs, so
/// Redis makes the same changes; what differs is that a script's top level
/// (~40 `local function` helper definitions for `moveToFinished`, each a
/// closure allocated on every EVALSHA) runs once, when the library loads.
/// Measured: `moveToFinished` 13-15 µs per call via EVALSHA, 5-6.5 µs via
/// FCALL, in Redis CPU (bench/README.md, session 8).
#[derive(Debug)]
pub struct FunctionForm {
    script_name: String,
    /// The script cut in two: helper definitions, then its body.
    helpers: String,
    body: String,
    /// Rendered by [`ScriptRegistry::use_functions`].
    library: std::sync::OnceLock<Library>,
    /// Calls go through FCALL while this is set; off until `use_functions`
    /// turns it on, and off for good once the server cannot load or run
    /// functions (Redis < 7, ACLs, ...).
    enabled: std::sync::atomic::AtomicBool,
}

/// One function library: the script as a function and, when the worker has
/// a finish prelude (patch 2), the prelude as a second function of the same
/// library, so that a server has both or neither. (A prelude run as a script
/// next to a finish run as a function could be missing, after a restart that
/// kept functions but not scripts, while the finish ran: its writes lost.)
#[derive(Debug)]
pub struct Library {
    /// The library's name and its main function's: `bullpen_<script>_<sha1[..12]>`
    /// of the library source, so versions never clash.
    pub name: String,
    /// The prelude's function (`<name>_prelude`) and the prelude script's SHA1.
    pub prelude: Option<(String, Arc<str>)>,
    pub source: String,
}

/// bullpen patch 4: the line a compiled BullMQ script's code starts with,
/// after its header comment; the helper definitions follow it.
const RCALL_LINE: &str = "local rcall = redis.call";

/// bullpen patch 4: the first line of `moveToFinished`'s body, after its
/// helper definitions.
const MOVE_TO_FINISHED_BODY: &str = "local jobIdKey = KEYS[12]";

impl FunctionForm {
    /// The function form of `content`, a compiled BullMQ script laid out as
    /// a header comment, the line `local rcall = redis.call`, helper
    /// definitions (`local function f(...)` or `local f = function (...)`
    /// up to an `end` in column 0, comments) that read neither KEYS nor
    /// ARGV, then its body from the line `body_starts` on: each marker a
    /// whole line, once, in that order. `Err(reason)` when the script is
    /// laid out otherwise (e.g. a new BullMQ version moved things): it then
    /// runs as a plain script (EVALSHA), and `use_functions` says why.
    fn new(script_name: &str, content: &str, body_starts: &str) -> Result<Self, String> {
        let rcall_at = the_line(content, RCALL_LINE)?;
        let body_at = the_line(content, body_starts)?;
        if body_at < rcall_at {
            return Err(format!("its body's first line `{body_starts}` comes before `{RCALL_LINE}`"));
        }
        comments_only(&content[..rcall_at])
            .map_err(|what| format!("{what} before `{RCALL_LINE}` (the function form drops what is there)"))?;
        let helpers = &content[rcall_at + RCALL_LINE.len() + 1..body_at];
        // The helpers run once, when the library loads, without KEYS and ARGV.
        for word in ["KEYS", "ARGV", "redis.register_function"] {
            if let Some(line) = helpers.lines().find(|line| line.contains(word)) {
                return Err(format!("its helpers use {word}: `{}`", line.trim()));
            }
        }
        if let Some(line) = top_level_statement(helpers) {
            return Err(format!("its helpers run code when loaded, not only define functions: `{line}`"));
        }
        Ok(Self {
            script_name: script_name.to_string(),
            helpers: helpers.to_string(),
            body: content[body_at..].to_string(),
            library: std::sync::OnceLock::new(),
            enabled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The library, with `prelude` (a whole script: it runs inside a
    /// function, reading KEYS and ARGV as the library's upvalues) if any.
    fn render(&self, prelude: Option<&str>) -> Library {
        let (script_name, helpers, body) = (&self.script_name, &self.helpers, &self.body);
        let source = |name: &str| {
            let mut lib = format!(
                "#!lua name={name}\n-- bullpen: BullMQ's {script_name} as a Redis Function (see bullpen's vendor/bullmq-official/PATCHES.md)\n\
                 local KEYS, ARGV, rcall\n{helpers}\nlocal function main()\n{body}\nend\n\
                 redis.register_function('{name}', function(keys, args)\n  KEYS, ARGV, rcall = keys, args, redis.call\n  return main()\nend)\n"
            );
            if let Some(p) = prelude {
                lib.push_str(&format!(
                    "-- bullpen's finish prelude\nlocal function prelude()\n{p}\nend\n\
                     redis.register_function('{name}_prelude', function(keys, args)\n  KEYS, ARGV = keys, args\n  return prelude()\nend)\n"
                ));
            }
            lib
        };
        let name = format!("bullpen_{script_name}_{}", &compute_sha1(&source(""))[..12]);
        Library {
            source: source(&name),
            prelude: prelude.map(|p| (format!("{name}_prelude"), Arc::from(compute_sha1(p)))),
            name,
        }
    }

    /// The library to call, when on.
    fn active(&self) -> Option<&Library> {
        if self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            self.library.get()
        } else {
            None
        }
    }

    fn disable(&self, why: &str) {
        if self.enabled.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let name = self.library.get().map_or("", |l| l.name.as_str());
            tracing::warn!(function = %name, reason = %why, "Redis Functions unavailable: running BullMQ's scripts with EVALSHA");
        }
    }

    /// FUNCTION LOAD REPLACE (on every primary, for a Cluster). False, and
    /// off for good, when the server refuses.
    async fn load<C: ConnectionLike>(&self, conn: &mut C, lib: &Library) -> bool {
        let loaded = redis::cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(lib.source.as_str()).query_async::<redis::Value>(conn).await;
        match loaded {
            Ok(_) => true,
            Err(e) => {
                self.disable(&e.to_string());
                false
            }
        }
    }
}

/// bullpen patch 4: where `line` is in `content`: a whole line, found once.
fn the_line(content: &str, line: &str) -> Result<usize, String> {
    let mut found = content
        .match_indices(line)
        .map(|(at, _)| at)
        .filter(|&at| (at == 0 || content.as_bytes()[at - 1] == b'\n') && content[at + line.len()..].starts_with('\n'));
    match (found.next(), found.next()) {
        (Some(at), None) => Ok(at),
        (None, _) => Err(format!("no line `{line}`")),
        (Some(_), Some(_)) => Err(format!("the line `{line}` more than once")),
    }
}

/// bullpen patch 4: `Err` naming what `lua` holds besides comments and blanks.
fn comments_only(lua: &str) -> Result<(), String> {
    let mut rest = lua;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(());
        }
        let Some(comment) = rest.strip_prefix("--") else {
            return Err(format!("code (`{}`)", rest.lines().next().unwrap_or(rest)));
        };
        rest = match long_comment_close(comment) {
            Some(close) => match comment.find(&close) {
                Some(i) => &comment[i + close.len()..],
                None => return Err("a comment left open".to_string()),
            },
            None => comment.split_once('\n').map_or("", |(_, after)| after),
        };
    }
}

/// bullpen patch 4: `]]` (`]==]`, ...) when the comment after `--` opens a
/// long bracket (`[[`, `[==[`, ...).
fn long_comment_close(comment: &str) -> Option<String> {
    let level = comment.strip_prefix('[')?.bytes().take_while(|&b| b == b'=').count();
    comment[1 + level..].starts_with('[').then(|| format!("]{}]", "=".repeat(level)))
}

/// bullpen patch 4: the first line of `helpers` that starts, in column 0,
/// anything but a function definition, the `end` of one, or a comment: code
/// at the top level, which a library runs once, when it loads, where the
/// script ran it on every call. (Lines inside definitions are indented in
/// BullMQ's compiled scripts; a script laid out otherwise is refused too.)
fn top_level_statement(helpers: &str) -> Option<&str> {
    let mut open_comment: Option<String> = None;
    for line in helpers.lines() {
        if let Some(close) = &open_comment {
            if line.contains(close.as_str()) {
                open_comment = None;
            }
            continue;
        }
        if line.trim().is_empty() || line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some(comment) = line.strip_prefix("--") {
            open_comment = long_comment_close(comment).filter(|close| !comment.contains(close.as_str()));
            continue;
        }
        let code = line.split("--").next().unwrap_or(line).trim_end();
        let assigned_function = code.strip_prefix("local ").and_then(|c| c.split_once('=')).is_some_and(|(name, value)| {
            name.trim().chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && value.trim_start().starts_with("function")
        });
        if !(code == "end" || code.starts_with("local function ") || assigned_function) {
            return Some(line);
        }
    }
    None
}

/// The FCALL command of function `name`.
fn fcall(name: &str, num_keys: usize, keys: &[impl redis::ToRedisArgs], args: &[impl redis::ToRedisArgs]) -> redis::Cmd {
    call("FCALL", name, num_keys, keys, args)
}

/// What an FCALL's error means for the function form.
enum FcallError {
    /// Not loaded here (a restart, FUNCTION FLUSH, a new Cluster node): load, call again.
    Missing,
    /// The server cannot run it (no FCALL before Redis 7, ACLs): scripts from now on.
    Unavailable,
    /// The function ran and failed: the caller's error, as with EVALSHA.
    Other,
}

fn fcall_error(e: &redis::ServerError) -> FcallError {
    let message = format!("{} {}", e.code(), e.details().unwrap_or(""));
    if message.contains("Function not found") {
        FcallError::Missing
    } else if message.contains("unknown command") || message.contains("NOPERM") || e.kind() == Some(redis::ServerErrorKind::NoPerm) {
        FcallError::Unavailable
    } else {
        FcallError::Other
    }
}

impl LuaScript {
    /// Create a new Lua script from name, key count, and content.
    pub fn new(name: &str, num_keys: usize, content: &str) -> Self {
        let sha = compute_sha1(content);
        Self {
            name: name.to_string(),
            num_keys,
            content: content.to_string(),
            sha,
            function: None,
        }
    }

    /// bullpen patch 4: this script as its library's function, after
    /// `prelude` as the same library's other function when given, in one
    /// round trip. `None`: run them as scripts instead (functions off or
    /// refused; a library made for another prelude).
    async fn try_fcall<C: ConnectionLike>(
        &self,
        conn: &mut C,
        prelude: Option<&crate::options::FinishPrelude>,
        keys: &[impl redis::ToRedisArgs],
        args: &[impl redis::ToRedisArgs],
    ) -> Option<Result<redis::Value, Error>> {
        let f = self.function.as_ref()?;
        let lib = f.active()?;
        let prelude = match (prelude, &lib.prelude) {
            (None, _) => None,
            (Some(p), Some((name, sha))) if **sha == *p.sha => Some((name, p)),
            (Some(_), _) => return None,
        };
        // Twice at most: the second after loading the library.
        for _ in 0..2 {
            let mut pipe = redis::pipe();
            if let Some((name, p)) = prelude {
                pipe.add_command(fcall(name, p.keys.len(), &p.keys, &p.args));
            }
            pipe.add_command(fcall(&lib.name, self.num_keys, keys, args)).ignore_errors();
            let mut replies: Vec<redis::Value> = match pipe.query_async(conn).await {
                Ok(r) => r,
                Err(e) => return Some(Err(Error::Redis(e))),
            };
            let (reply, pre_reply) = (replies.pop(), replies.pop());
            if let Some(redis::Value::ServerError(e)) = &reply {
                // Both functions are in one library: when this one was not
                // run for want of it, neither was the prelude.
                match fcall_error(e) {
                    FcallError::Missing => {
                        if !f.load(conn, lib).await {
                            return None;
                        }
                        continue;
                    }
                    FcallError::Unavailable => {
                        f.disable(&format!("{e:?}"));
                        return None;
                    }
                    FcallError::Other => {}
                }
            }
            if let Some(redis::Value::ServerError(e)) = pre_reply {
                tracing::warn!(error = ?e, script = %self.name, "the script sent ahead of this one failed");
            }
            return Some(match reply {
                Some(redis::Value::ServerError(e)) => Err(Error::Redis(e.into())),
                Some(v) => Ok(v),
                None => Err(Error::InvalidConfig("empty pipeline reply".to_string())),
            });
        }
        f.disable("loaded, yet not found");
        None
    }

    /// Execute this script via EVALSHA, falling back to EVAL on NOSCRIPT.
    ///
    /// The NOSCRIPT fallback also covers reconnects: a restarted Redis has an
    /// empty script cache, so the first EVALSHA after recovery transparently
    /// re-loads the script via EVAL.
    pub async fn execute<C: ConnectionLike>(
        &self,
        conn: &mut C,
        keys: &[impl redis::ToRedisArgs],
        args: &[impl redis::ToRedisArgs],
    ) -> Result<redis::Value, Error> {
        if let Some(r) = self.try_fcall(conn, None, keys, args).await {
            return r;
        }
        let cmd = evalsha(&self.sha, self.num_keys, keys, args);

        match cmd.query_async::<redis::Value>(conn).await {
            Ok(val) => Ok(val),
            Err(e) => {
                // Check for NOSCRIPT error - fall back to EVAL
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                    let mut eval_cmd = redis::cmd("EVAL");
                    eval_cmd.arg(self.content.as_str()).arg(self.num_keys);
                    for key in keys {
                        eval_cmd.arg(key);
                    }
                    for arg in args {
                        eval_cmd.arg(arg);
                    }
                    Ok(eval_cmd.query_async::<redis::Value>(conn).await?)
                } else {
                    Err(Error::Redis(e))
                }
            }
        }
    }
}

impl LuaScript {
    /// bullpen patch (PATCHES.md): run `prelude`, then this script, in one
    /// round trip on one connection, so Redis runs them in that order. The
    /// prelude's own reply is not the caller's concern (an error reply is
    /// logged); this script's reply is returned as [`execute`] would.
    ///
    /// NOSCRIPT (a Redis restart or SCRIPT FLUSH emptied the script cache):
    /// when this script did not run, the prelude runs first via EVAL if it
    /// needs to, then this script via [`execute`]. When this script ran but
    /// the prelude did not — the cache emptied and this script reloaded by
    /// another client in between — the prelude's writes are lost and logged,
    /// and the prelude is loaded again for the next job.
    ///
    /// [`execute`]: LuaScript::execute
    pub async fn execute_after<C: ConnectionLike>(
        &self,
        conn: &mut C,
        prelude: &crate::options::FinishPrelude,
        keys: &[impl redis::ToRedisArgs],
        args: &[impl redis::ToRedisArgs],
    ) -> Result<redis::Value, Error> {
        if let Some(r) = self.try_fcall(conn, Some(prelude), keys, args).await {
            return r;
        }
        // Scripts: the finish as EVALSHA too (never FCALL here), so that a
        // prelude missing from the script cache finds the finish missing as well.
        let pre = evalsha(&prelude.sha, prelude.keys.len(), &prelude.keys, &prelude.args);
        let mut pipe = redis::pipe();
        pipe.add_command(pre).add_command(evalsha(&self.sha, self.num_keys, keys, args)).ignore_errors();
        let mut replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        let (reply, pre_reply) = (replies.pop(), replies.pop());
        let noscript =
            |v: &Option<redis::Value>| matches!(v, Some(redis::Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript));
        let prelude_script = || LuaScript {
            name: "finish prelude".to_string(),
            num_keys: prelude.keys.len(),
            content: prelude.source.to_string(),
            sha: prelude.sha.to_string(),
            function: None,
        };
        if noscript(&reply) {
            if noscript(&pre_reply) {
                if let Err(e) = prelude_script().execute(conn, &prelude.keys, &prelude.args).await {
                    tracing::warn!(error = %e, script = %self.name, "the script sent ahead of this one failed");
                }
            }
            return self.execute(conn, keys, args).await;
        }
        if noscript(&pre_reply) {
            tracing::warn!(script = %self.name, "Redis's script cache was emptied: the writes sent ahead of this script were lost");
            // Loads it (the lock-checked prelude writes nothing now).
            let _ = prelude_script().execute(conn, &prelude.keys, &prelude.args).await;
        } else if let Some(redis::Value::ServerError(e)) = pre_reply {
            tracing::warn!(error = ?e, script = %self.name, "the script sent ahead of this one failed");
        }
        match reply {
            Some(redis::Value::ServerError(e)) => Err(Error::Redis(e.into())),
            Some(v) => Ok(v),
            None => Err(Error::InvalidConfig("empty pipeline reply".to_string())),
        }
    }
}

/// bullpen patch: the EVALSHA command of a script (`execute` built it inline;
/// `execute_after` builds two).
fn evalsha(sha: &str, num_keys: usize, keys: &[impl redis::ToRedisArgs], args: &[impl redis::ToRedisArgs]) -> redis::Cmd {
    call("EVALSHA", sha, num_keys, keys, args)
}

/// `<command> <script or function> <numkeys> <keys...> <args...>`.
fn call(command: &str, what: &str, num_keys: usize, keys: &[impl redis::ToRedisArgs], args: &[impl redis::ToRedisArgs]) -> redis::Cmd {
    let mut cmd = redis::cmd(command);
    cmd.arg(what).arg(num_keys);
    for key in keys {
        cmd.arg(key);
    }
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}

/// Registry of all BullMQ Lua scripts.
///
/// Scripts execute via EVALSHA and lazily fall back to EVAL on NOSCRIPT.
/// For pipelined operations where that fallback is not available, callers can
/// ensure specific scripts are loaded ahead of time.
#[derive(Debug, Clone)]
pub struct ScriptRegistry {
    scripts: Arc<HashMap<String, LuaScript>>,
    /// bullpen patch 4: the scripts meant to have a function form that do
    /// not (laid out otherwise than the patch expects), and why.
    no_function_form: Arc<Vec<(String, String)>>,
}

impl ScriptRegistry {
    /// Create a new registry and load all embedded scripts.
    pub fn new() -> Self {
        Self::with_scripts(Self::embedded_scripts())
    }

    /// The registry of `list` (`new`: the embedded scripts).
    fn with_scripts<'a>(list: impl IntoIterator<Item = (&'a str, usize, &'a str)>) -> Self {
        let mut scripts = HashMap::new();
        let mut no_function_form = Vec::new();

        // Load the compiled Lua scripts from `rust/src/commands/` (includes already resolved).
        for (name, num_keys, content) in list {
            let mut script = LuaScript::new(name, num_keys, content);
            // bullpen patch 4: the script every job ends with, also as a
            // function (its body starts at this line).
            if name == "moveToFinished" {
                match FunctionForm::new(name, content, MOVE_TO_FINISHED_BODY) {
                    Ok(f) => script.function = Some(Arc::new(f)),
                    Err(why) => no_function_form.push((name.to_string(), why)),
                }
            }
            scripts.insert(name.to_string(), script);
        }

        Self {
            scripts: Arc::new(scripts),
            no_function_form: Arc::new(no_function_form),
        }
    }

    /// bullpen patch 4 (PATCHES.md): run the scripts that have a Redis
    /// Function form through FCALL (loading the library on first use, and
    /// again whenever a server has lost it), or not. Off by default.
    /// `prelude`: the script every `FinishPrelude` of this worker carries
    /// (patch 2), made a function of the same library.
    pub fn use_functions(&self, on: bool, prelude: Option<&str>) {
        if on {
            for (script, why) in self.no_function_form.iter() {
                tracing::warn!(script = %script, reason = %why, "BullMQ's script is not laid out as bullpen's patch 4 expects: running it with EVALSHA, not as a Redis Function");
            }
        }
        for script in self.scripts.values() {
            if let Some(f) = &script.function {
                if on {
                    f.library.get_or_init(|| f.render(prelude));
                }
                f.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Get a script by name.
    pub fn get(&self, name: &str) -> Option<&LuaScript> {
        self.scripts.get(name)
    }

    /// Ensure the named scripts are loaded into Redis using SCRIPT LOAD.
    ///
    /// This is intended for pipelined operations where EVALSHA must succeed
    /// without a NOSCRIPT -> EVAL fallback round trip.
    pub async fn ensure_loaded<C: ConnectionLike>(
        &self,
        conn: &mut C,
        names: &[&str],
    ) -> Result<(), crate::error::Error> {
        let mut seen = HashSet::new();
        for name in names {
            let Some(script) = self.scripts.get(*name) else {
                continue;
            };
            if !seen.insert(script.sha.as_str()) {
                continue;
            }

            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script.content.as_str())
                .query_async::<String>(conn)
                .await?;
        }
        Ok(())
    }

    /// Returns the embedded compiled Lua scripts as (name, num_keys, content) tuples.
    ///
    /// These are the fully resolved scripts from `rust/src/commands/` (all includes expanded).
    fn embedded_scripts() -> Vec<(&'static str, usize, &'static str)> {
        vec![
            (
                "addStandardJob",
                9,
                include_str!("commands/addStandardJob-9.lua"),
            ),
            (
                "addDelayedJob",
                6,
                include_str!("commands/addDelayedJob-6.lua"),
            ),
            (
                "addPrioritizedJob",
                9,
                include_str!("commands/addPrioritizedJob-9.lua"),
            ),
            (
                "addParentJob",
                6,
                include_str!("commands/addParentJob-6.lua"),
            ),
            ("addLog", 2, include_str!("commands/addLog-2.lua")),
            (
                "moveToActive",
                11,
                include_str!("commands/moveToActive-11.lua"),
            ),
            (
                "moveToFinished",
                14,
                include_str!("commands/moveToFinished-14.lua"),
            ),
            (
                "moveToDelayed",
                11,
                include_str!("commands/moveToDelayed-11.lua"),
            ),
            (
                "moveToWaitingChildren",
                7,
                include_str!("commands/moveToWaitingChildren-7.lua"),
            ),
            (
                "moveStalledJobsToWait",
                9,
                include_str!("commands/moveStalledJobsToWait-9.lua"),
            ),
            (
                "moveJobFromActiveToWait",
                9,
                include_str!("commands/moveJobFromActiveToWait-9.lua"),
            ),
            (
                "moveJobsToWait",
                8,
                include_str!("commands/moveJobsToWait-8.lua"),
            ),
            ("extendLock", 2, include_str!("commands/extendLock-2.lua")),
            ("extendLocks", 1, include_str!("commands/extendLocks-1.lua")),
            ("releaseLock", 1, include_str!("commands/releaseLock-1.lua")),
            ("getCounts", 1, include_str!("commands/getCounts-1.lua")),
            ("getState", 8, include_str!("commands/getState-8.lua")),
            ("getStateV2", 8, include_str!("commands/getStateV2-8.lua")),
            ("getJobs", 1, include_str!("commands/getJobs-1.lua")),
            ("getRanges", 1, include_str!("commands/getRanges-1.lua")),
            (
                "getRateLimitTtl",
                2,
                include_str!("commands/getRateLimitTtl-2.lua"),
            ),
            ("isFinished", 3, include_str!("commands/isFinished-3.lua")),
            ("isJobInList", 1, include_str!("commands/isJobInList-1.lua")),
            ("isMaxed", 2, include_str!("commands/isMaxed-2.lua")),
            ("pause", 7, include_str!("commands/pause-7.lua")),
            ("drain", 5, include_str!("commands/drain-5.lua")),
            ("obliterate", 2, include_str!("commands/obliterate-2.lua")),
            ("removeJob", 2, include_str!("commands/removeJob-2.lua")),
            (
                "removeJobScheduler",
                3,
                include_str!("commands/removeJobScheduler-3.lua"),
            ),
            (
                "cleanJobsInSet",
                3,
                include_str!("commands/cleanJobsInSet-3.lua"),
            ),
            ("updateData", 1, include_str!("commands/updateData-1.lua")),
            (
                "updateProgress",
                3,
                include_str!("commands/updateProgress-3.lua"),
            ),
            (
                "saveStacktrace",
                1,
                include_str!("commands/saveStacktrace-1.lua"),
            ),
            ("retryJob", 11, include_str!("commands/retryJob-11.lua")),
            ("promote", 9, include_str!("commands/promote-9.lua")),
            ("changeDelay", 4, include_str!("commands/changeDelay-4.lua")),
            (
                "changePriority",
                7,
                include_str!("commands/changePriority-7.lua"),
            ),
            (
                "addJobScheduler",
                11,
                include_str!("commands/addJobScheduler-11.lua"),
            ),
            (
                "updateJobScheduler",
                12,
                include_str!("commands/updateJobScheduler-12.lua"),
            ),
            (
                "getJobScheduler",
                1,
                include_str!("commands/getJobScheduler-1.lua"),
            ),
            (
                "removeDeduplicationKey",
                1,
                include_str!("commands/removeDeduplicationKey-1.lua"),
            ),
            ("paginate", 1, include_str!("commands/paginate-1.lua")),
            (
                "getCountsPerPriority",
                2,
                include_str!("commands/getCountsPerPriority-2.lua"),
            ),
            (
                "getDependencyCounts",
                4,
                include_str!("commands/getDependencyCounts-4.lua"),
            ),
            ("getMetrics", 2, include_str!("commands/getMetrics-2.lua")),
            (
                "reprocessJob",
                9,
                include_str!("commands/reprocessJob-9.lua"),
            ),
            (
                "releaseParentIfNoPendingDependencies",
                2,
                include_str!("commands/releaseParentIfNoPendingDependencies-2.lua"),
            ),
            (
                "removeChildDependency",
                1,
                include_str!("commands/removeChildDependency-1.lua"),
            ),
            (
                "removeUnprocessedChildren",
                2,
                include_str!("commands/removeUnprocessedChildren-2.lua"),
            ),
            (
                "removeOrphanedJobs",
                1,
                include_str!("commands/removeOrphanedJobs-1.lua"),
            ),
        ]
    }
}

impl Default for ScriptRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Compute SHA1 hash of a string (for EVALSHA).
fn compute_sha1(content: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(content.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sha1_computation() {
        let sha = compute_sha1("return 1");
        assert_eq!(sha.len(), 40);
    }

    async fn test_conn() -> redis::aio::MultiplexedConnection {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let client = redis::Client::open(url).expect("valid REDIS_URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    async fn script_exists(
        conn: &mut redis::aio::MultiplexedConnection,
        shas: &[&str],
    ) -> Vec<bool> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("EXISTS");
        for sha in shas {
            cmd.arg(*sha);
        }
        cmd.query_async(conn).await.expect("SCRIPT EXISTS")
    }

    #[tokio::test]
    async fn test_execute_falls_back_to_eval_and_caches_script() {
        let mut conn = test_conn().await;
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .arg("SYNC")
            .query_async::<()>(&mut conn)
            .await
            .expect("SCRIPT FLUSH");

        let script = LuaScript::new("test", 0, "return 1");
        let keys: Vec<String> = Vec::new();
        let args: Vec<String> = Vec::new();

        let result = script
            .execute(&mut conn, &keys, &args)
            .await
            .expect("execute");

        assert_eq!(result, redis::Value::Int(1));
        assert_eq!(
            script_exists(&mut conn, &[script.sha.as_str()]).await,
            vec![true]
        );
    }

    #[tokio::test]
    async fn test_ensure_loaded_loads_only_requested_scripts() {
        let mut conn = test_conn().await;
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .arg("SYNC")
            .query_async::<()>(&mut conn)
            .await
            .expect("SCRIPT FLUSH");

        let registry = ScriptRegistry::new();
        registry
            .ensure_loaded(&mut conn, &["addStandardJob", "addStandardJob"])
            .await
            .expect("ensure_loaded");

        let add_standard = registry.get("addStandardJob").expect("addStandardJob");
        let add_parent = registry.get("addParentJob").expect("addParentJob");
        let existing = script_exists(
            &mut conn,
            &[add_standard.sha.as_str(), add_parent.sha.as_str()],
        )
        .await;

        assert_eq!(existing, vec![true, false]);
    }
}

/// bullpen patch 4: the function form is built from `moveToFinished` as
/// shipped, and from no script laid out otherwise (scripts/vendor.sh check
/// runs these).
#[cfg(test)]
mod bullpen_tests {
    use super::*;
    use std::sync::Mutex;

    const REAL: &str = include_str!("commands/moveToFinished-14.lua");

    /// `REAL` with `from` (found exactly once) replaced by `to`.
    fn altered(from: &str, to: &str) -> String {
        assert_eq!(REAL.matches(from).count(), 1, "{from:?} is not in moveToFinished once");
        REAL.replacen(from, to, 1)
    }

    /// The reason `content` has no function form; panics when it has one.
    fn refused(content: &str) -> String {
        match FunctionForm::new("moveToFinished", content, MOVE_TO_FINISHED_BODY) {
            Ok(_) => panic!("a function form was built"),
            Err(why) => why,
        }
    }

    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
        type Writer = Logs;
        fn make_writer(&'a self) -> Logs {
            self.clone()
        }
    }

    /// What `use_functions(true, ..)` logs for a registry of `content` as moveToFinished.
    fn registry_with(content: &str) -> (ScriptRegistry, String) {
        let registry = ScriptRegistry::with_scripts([("moveToFinished", 14, content)]);
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || registry.use_functions(true, None));
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        (registry, logged)
    }

    #[test]
    fn the_real_script_has_a_function_form() {
        let f = FunctionForm::new("moveToFinished", REAL, MOVE_TO_FINISHED_BODY).expect("function form");
        // The cut loses only the header comment before `local rcall = redis.call`.
        let header = &REAL[..REAL.find("\nlocal rcall = redis.call\n").unwrap() + 1];
        assert_eq!(format!("{header}{RCALL_LINE}\n{}{}", f.helpers, f.body), REAL);
        assert!(f.helpers.contains("local function removeLock("));
        assert!(f.body.starts_with("local jobIdKey = KEYS[12]\n"));
        // The same cut as the patch's first version, which only split at the markers.
        let (_, rest) = REAL.split_once("\nlocal rcall = redis.call\n").unwrap();
        let (helpers, body) = rest.split_at(rest.find("local jobIdKey = KEYS[12]\n").unwrap());
        assert_eq!((f.helpers.as_str(), f.body.as_str()), (helpers, body));

        let lib = f.render(Some("return 1"));
        assert!(lib.name.starts_with("bullpen_moveToFinished_"));
        assert!(lib.source.contains("local function main()\nlocal jobIdKey = KEYS[12]\n"));
        assert!(lib.source.contains(&format!("redis.register_function('{}_prelude'", lib.name)));
    }

    #[test]
    fn the_registry_runs_the_real_script_as_a_function() {
        let (registry, logged) = registry_with(REAL);
        assert!(registry.no_function_form.is_empty());
        let f = registry.get("moveToFinished").unwrap().function.as_ref().expect("function form");
        assert!(f.active().is_some(), "on after use_functions(true)");
        assert_eq!(logged, "");
        // And ScriptRegistry::new() is that registry.
        assert!(ScriptRegistry::new().get("moveToFinished").unwrap().function.is_some());
    }

    #[test]
    fn a_marker_missing_falls_back() {
        let why = refused(&altered("\nlocal rcall = redis.call\n", "\nlocal rcall = redis.pcall\n"));
        assert_eq!(why, "no line `local rcall = redis.call`");
        let why = refused(&altered("\nlocal jobIdKey = KEYS[12]\n", "\nlocal jobKey = KEYS[12]\n"));
        assert_eq!(why, "no line `local jobIdKey = KEYS[12]`");
        // Indented, or in the middle of a line, is not the line.
        let why = refused(&altered("\nlocal jobIdKey = KEYS[12]\n", "\n  local jobIdKey = KEYS[12]\n"));
        assert_eq!(why, "no line `local jobIdKey = KEYS[12]`");
    }

    #[test]
    fn a_marker_twice_falls_back() {
        let why = refused(&altered("\nlocal jobIdKey = KEYS[12]\n", "\nlocal rcall = redis.call\nlocal jobIdKey = KEYS[12]\n"));
        assert_eq!(why, "the line `local rcall = redis.call` more than once");
        let why = refused(&altered("\nlocal rcall = redis.call\n", "\nlocal rcall = redis.call\nlocal jobIdKey = KEYS[12]\n"));
        assert_eq!(why, "the line `local jobIdKey = KEYS[12]` more than once");
    }

    #[test]
    fn markers_out_of_order_fall_back() {
        let swapped = altered("\nlocal rcall = redis.call\n", "\nlocal jobIdKey = KEYS[12]\nlocal rcall = redis.call\n")
            .replacen("\nlocal jobIdKey = KEYS[12]\nif rcall(", "\nif rcall(", 1);
        assert_eq!(swapped.len(), REAL.len());
        assert_eq!(refused(&swapped), "its body's first line `local jobIdKey = KEYS[12]` comes before `local rcall = redis.call`");
    }

    #[test]
    fn helpers_reading_keys_or_argv_fall_back() {
        let why = refused(&altered("\nlocal function removeLock(jobKey, stalledKey, token, jobId)\n", "\nlocal function removeLock(jobKey, stalledKey, token, jobId)\n  stalledKey = KEYS[5]\n"));
        assert_eq!(why, "its helpers use KEYS: `stalledKey = KEYS[5]`");
        let why = refused(&altered("\nlocal function removeLock(jobKey, stalledKey, token, jobId)\n", "\nlocal function removeLock(jobKey, stalledKey, token, jobId)\n  jobId = jobId or ARGV[1]\n"));
        assert_eq!(why, "its helpers use ARGV: `jobId = jobId or ARGV[1]`");
    }

    #[test]
    fn code_outside_the_helper_definitions_falls_back() {
        // Before `local rcall = redis.call`: the function form would drop it.
        let why = refused(&altered("]]\nlocal rcall = redis.call\n", "]]\nlocal maxEvents = 10000\nlocal rcall = redis.call\n"));
        assert_eq!(why, "code (`local maxEvents = 10000`) before `local rcall = redis.call` (the function form drops what is there)");
        // Among the helpers: it would run once, at load, not on every call.
        let why = refused(&altered("\nlocal function removeLock(", "\nlocal lockCache = {}\nlocal function removeLock("));
        assert_eq!(why, "its helpers run code when loaded, not only define functions: `local lockCache = {}`");
        // `local rcall = redis.call` inside a comment that is still open.
        let why = refused(&altered("]]\nlocal rcall = redis.call\n", "\nlocal rcall = redis.call\n"));
        assert_eq!(why, "a comment left open before `local rcall = redis.call` (the function form drops what is there)");
    }

    #[test]
    fn a_refused_script_runs_with_evalsha_and_says_why() {
        let content = altered("\nlocal rcall = redis.call\n", "\nlocal rcall = redis.pcall\n");
        let (registry, logged) = registry_with(&content);
        // No function form: try_fcall returns None, execute() sends EVALSHA.
        let script = registry.get("moveToFinished").unwrap();
        assert!(script.function.is_none());
        assert_eq!(script.sha, compute_sha1(&content));
        assert_eq!(
            registry.no_function_form.as_slice(),
            [("moveToFinished".to_string(), "no line `local rcall = redis.call`".to_string())]
        );
        assert!(logged.contains("WARN"), "{logged}");
        assert!(logged.contains("script=moveToFinished"), "{logged}");
        assert!(logged.contains("reason=no line `local rcall = redis.call`"), "{logged}");
        assert!(logged.contains("running it with EVALSHA"), "{logged}");
        // Functions off: nothing to say.
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).finish();
        tracing::subscriber::with_default(subscriber, || registry.use_functions(false, None));
        assert!(logs.0.lock().unwrap().is_empty());
    }
}
