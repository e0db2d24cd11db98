//! Clients of the gateway shipped with flowgate: the terminal chat client (`chat`).

pub mod chat;
