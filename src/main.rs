//! The `flowgate` binary: parse the command line, start telemetry, call the library.

use clap::Parser;
use flowgate::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(flowgate::cli::run(cli.command))
}
