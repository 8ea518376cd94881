use clap::Parser;
use tracing_subscriber::EnvFilter;

// mimalloc, not glibc's malloc: an attempt allocates and frees many small
// objects (Store, WASI context, fibers, Redis replies) on whichever tokio
// thread runs it. Measured (perf, echo at concurrency 100): glibc spent ~18%
// of the worker's CPU in malloc/free plus futex waits on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Chosen once, here: rustls 0.23 refuses to guess between ring and
    // aws-lc-rs, and every rediss:// connection needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = bullpen::cli::Cli::parse();
    let spec = std::env::var("BULLPEN_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(bullpen::cli::log_filter(&spec)).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        bullpen::cli::LogFormat::Human => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // One JSON object per line; an attempt's lines carry its span
        // (queue, job, attempt, digest) in `span`.
        bullpen::cli::LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    match bullpen::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(bullpen::cli::ExitStatus(code)) = e.downcast_ref() {
                return std::process::ExitCode::from(*code);
            }
            eprintln!("error: {}", bullpen::cli::error_line(&e));
            std::process::ExitCode::from(1)
        }
    }
}
