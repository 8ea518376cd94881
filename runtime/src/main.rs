use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("BULLPEN_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = bullpen::cli::Cli::parse();
    match bullpen::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(bullpen::cli::ExitStatus(code)) = e.downcast_ref() {
                return std::process::ExitCode::from(*code);
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
