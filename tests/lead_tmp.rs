#[path = "it/common.rs"]
mod common;
#[path = "it/chain.rs"]
mod chain;
#[path = "it/chain_pg.rs"]
mod chain_pg;
#[path = "it/faults.rs"]
mod faults;
#[path = "it/runs.rs"]
mod runs;
