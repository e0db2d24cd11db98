//! The relay: one client session (`session`), its runs (`run`), the engine client
//! (`engine_client`), the client protocol (`protocol`) and the workflow cache (`cache`).
//!
//! ```text
//!  client socket ◀──── session task ◀── bounded mpsc ◀── run task ◀── engine socket
//!        │                 │  cancel (CancellationToken) ──▶ │
//!        └─ frames ───────▶│  run request ──▶ spawns ───────▶│
//! ```

pub mod cache;
pub mod engine_client;
pub mod protocol;
pub mod run;
pub mod session;
