//! The relay: one client session (`session`), its runs (`run`), the engine client
//! (`engine_client`), the client protocol (`protocol`) and the workflow cache (`cache`).
//!
//! ```text
//!  client socket ◀── session task ◀── follows ── run buffer (registry) ◀── run task ◀── engine
//!        │               │ (own cursor = last seq sent)        │ also → run log    │
//!        └─ frames ─────▶│ run request ──▶ spawns ────────────────────────────────▶│
//!                        │ cancel (CancellationToken) ───────────────────────────▶│
//! ```

pub mod cache;
pub mod context;
pub mod dialect;
pub mod engine_client;
pub mod failure;
pub mod hop;
pub mod limits;
pub mod memory;
pub mod protocol;
pub mod registry;
pub mod remote;
pub mod run;
pub mod session;
pub mod stream;
pub mod trace;
pub mod turn;
