#[path = "it/common.rs"]
mod common;
#[path = "it/chain.rs"]
mod chain;
#[path = "it/outage.rs"]
mod outage;
#[path = "it/binary.rs"]
mod binary;
#[path = "it/ops.rs"]
mod ops;
