//! `tollgate-fake-llm`: an OpenAI-compatible fake upstream for offline runs, the integration
//! tests and the benchmarks. A development tool, kept out of the `tollgate` product binary.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod server;

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tollgate-fake-llm", version, about)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the first line printed shows it).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Refuse requests whose bearer is not this key.
    #[arg(long)]
    require_api_key: Option<String>,
    /// Stop when standard input closes.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-fake-llm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let serve = server::run(server::FakeLlmOptions {
            host: cli.host,
            port: cli.port,
            delay_ms: cli.delay_ms,
            require_api_key: cli.require_api_key,
        });
        tokio::select! {
            r = serve => r,
            _ = tollgate::sidecar::stop_requested(cli.exit_on_stdin_eof) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-fake-llm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
