//! WebSocket close codes: one type for every hop — client ↔ gateway (docs/protocol.md, "Close
//! codes"), gateway ↔ engine, and the terminal client that explains a close to its user.

/// A close code flowgate sends or explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the conversation is over.
    Normal,
    /// 1001: the peer is going away.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol (bad framing, invalid UTF-8 in a text frame).
    ProtocolError,
    /// 1008: a policy was violated (e.g. the engine's handshake input).
    Policy,
    /// 1009: a message above the size limit.
    TooBig,
    /// 1011: an internal error.
    Internal,
    /// 1012: the server is restarting (shutdown); reconnect and resume.
    Restart,
    /// 1013: overloaded (the session cap); try again later.
    TryAgain,
    /// 4401: no token, or a refused or expired one.
    Unauthenticated,
    /// 4403: the token's user may not do this.
    Forbidden,
    /// 4404: no such agent.
    AgentNotFound,
    /// 4408: too slow or idle (the peer can resume).
    TooSlow,
    /// 4429: too many messages.
    RateLimited,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::Restart,
        CloseCode::TryAgain,
        CloseCode::Unauthenticated,
        CloseCode::Forbidden,
        CloseCode::AgentNotFound,
        CloseCode::TooSlow,
        CloseCode::RateLimited,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::Restart => 1012,
            CloseCode::TryAgain => 1013,
            CloseCode::Unauthenticated => 4401,
            CloseCode::Forbidden => 4403,
            CloseCode::AgentNotFound => 4404,
            CloseCode::TooSlow => 4408,
            CloseCode::RateLimited => 4429,
        }
    }

    /// The code with this number, if flowgate knows it.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// What the code means, for a person reading a client's message.
    pub const fn meaning(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "going away",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error on the gateway",
            CloseCode::Restart => "the gateway is restarting, try again later",
            CloseCode::TryAgain => "the gateway is overloaded, try again later",
            CloseCode::Unauthenticated => "unauthenticated",
            CloseCode::Forbidden => "forbidden",
            CloseCode::AgentNotFound => "agent not found",
            CloseCode::TooSlow => "too slow or idle",
            CloseCode::RateLimited => "rate limited",
        }
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_in_order() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        assert!(CloseCode::ALL.windows(2).all(|w| w[0].code() < w[1].code()));
        assert_eq!(CloseCode::from_code(1006), None);
    }
}
