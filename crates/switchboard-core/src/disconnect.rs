//! Why the server closes a client: a value with its close code (PROTOCOL §4).

/// A reason to close a client, with the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

impl Disconnect {
    pub const SHUTDOWN: Disconnect = Disconnect {
        code: 1001,
        reason: "server shutting down",
    };
    pub const EXPIRED: Disconnect = Disconnect {
        code: 1008,
        reason: "token expired",
    };
    pub const RATE_LIMITED: Disconnect = Disconnect {
        code: 1008,
        reason: "rate limit exceeded",
    };
    pub const SLOW: Disconnect = Disconnect {
        code: 1013,
        reason: "slow consumer",
    };
    /// Admitted by two nodes at once past `max_connections_per_user`.
    pub const USER_LIMIT: Disconnect = Disconnect {
        code: 1008,
        reason: "too many connections for this user",
    };
    pub const KICKED: Disconnect = Disconnect {
        code: 4000,
        reason: "disconnected by the server API",
    };
    /// Nothing arrived within `ping_interval + ping_timeout`: the peer is gone,
    /// so no close frame is attempted for long.
    pub const STALE: Disconnect = Disconnect {
        code: 1001,
        reason: "no heartbeat",
    };
}
