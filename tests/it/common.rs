//! Shared helpers: spawn the reference engine and a gateway on port 0, connect clients.
