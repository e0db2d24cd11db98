//! The `flowgate` binary: parse the command line, start telemetry, call the library.

use clap::Parser;
use flowgate::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let built = match cli.command.worker_threads() {
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(flowgate::cli::run(cli.command))
}
