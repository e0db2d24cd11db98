#[path = "it/common.rs"]
mod common;
#[path = "it/security.rs"]
mod security;
