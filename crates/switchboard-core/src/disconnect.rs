//! Why the server closes a client: a value with its close code (PROTOCOL §4).

/// A reason to close a client, with the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
    /// How long the client should wait before it reconnects: set by a paced
    /// drain so that its clients' returns spread over the drain (PROTOCOL §4).
    pub reconnect_after_ms: Option<u32>,
}

impl Disconnect {
    /// This reason, telling the client to come back after `ms`.
    pub const fn reconnect_after(self, ms: u32) -> Self {
        Disconnect {
            reconnect_after_ms: Some(ms),
            ..self
        }
    }

    /// Whether two reasons are the same close, whatever wait they carry.
    pub fn same_close(&self, other: &Disconnect) -> bool {
        self.code == other.code && self.reason == other.reason
    }

    pub const SHUTDOWN: Disconnect = Disconnect {
        code: 1001,
        reason: "server shutting down",
        reconnect_after_ms: None,
    };
    pub const EXPIRED: Disconnect = Disconnect {
        code: 1008,
        reason: "token expired",
        reconnect_after_ms: None,
    };
    pub const RATE_LIMITED: Disconnect = Disconnect {
        code: 1008,
        reason: "rate limit exceeded",
        reconnect_after_ms: None,
    };
    pub const SLOW: Disconnect = Disconnect {
        code: 1013,
        reason: "slow consumer",
        reconnect_after_ms: None,
    };
    /// Admitted by two nodes at once past `max_connections_per_user`.
    pub const USER_LIMIT: Disconnect = Disconnect {
        code: 1008,
        reason: "too many connections for this user",
        reconnect_after_ms: None,
    };
    pub const KICKED: Disconnect = Disconnect {
        code: 4000,
        reason: "disconnected by the server API",
        reconnect_after_ms: None,
    };
    /// Nothing arrived within `ping_interval + ping_timeout`: the peer is gone,
    /// so no close frame is attempted for long.
    pub const STALE: Disconnect = Disconnect {
        code: 1001,
        reason: "no heartbeat",
        reconnect_after_ms: None,
    };
}
