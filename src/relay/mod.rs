//! The relay: one client session, its runs, and the engine client.

pub mod cache;
