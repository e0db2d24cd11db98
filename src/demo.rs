//! `flowgate demo`: engine + gateway in one process on the embedded sample agents.

use std::process::ExitCode;

use crate::cli::DemoArgs;

pub async fn run(args: DemoArgs) -> ExitCode {
    let _ = args;
    todo!()
}
