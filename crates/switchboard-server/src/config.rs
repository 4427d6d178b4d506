//! Configuration (PROTOCOL §8): documented defaults ← TOML file ← environment
//! (`SWITCHBOARD_<SECTION>_<KEY>`), validated once, every problem reported at
//! once with the key it concerns.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchboard_core::{NamespacePolicy, SubscribeRule};
use switchboard_protocol::ChannelName;

mod otel;
pub use otel::OtelConfig;

/// A duration written as `"500ms"`, `"30s"`, `"10m"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration such as \"500ms\", \"30s\" or \"10m\"")
        })?;
        let factor = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" if n == 0.0 => 0.0,
            _ => {
                return Err(format!(
                    "`{s}` has no known unit (use ms, s, m or h, as in \"30s\")"
                ));
            }
        };
        let secs = n * factor;
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The whole configuration. Every field has a default; see
/// `config/switchboard.example.toml` for each key's meaning.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// This node's name, shown in welcome frames and presence.
    pub node_name: String,
    /// When set, a non-JSON text frame is published to this channel as `{"text": ...}`.
    pub text_channel: String,
    /// How long a shutdown waits for clients to take their close frame.
    pub shutdown_timeout: Dur,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub ws: WsConfig,
    pub limits: LimitsConfig,
    pub broker: BrokerConfig,
    pub presence: PresenceConfig,
    pub history: HistoryConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub admin: AdminConfig,
    pub otel: OtelConfig,
    pub namespaces: Vec<NamespaceConfig>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC secret for HS256/384/512 tokens.
    pub hmac_secret: String,
    /// PEM public key (RSA, EC or Ed25519) for RS*/PS*/ES*/EdDSA tokens.
    pub public_key_file: String,
    /// A JWK Set file; a token's key is chosen by its `kid`.
    pub jwks_file: String,
    /// A JWK Set fetched over http:// or https://, cached, and fetched again on
    /// an unknown `kid`. https:// trusts the system's root certificates plus
    /// those of `jwks_ca_file`.
    pub jwks_url: String,
    /// PEM file of extra CA certificates trusted for an https:// `jwks_url`
    /// (e.g. a private CA); empty: the system's roots only.
    pub jwks_ca_file: String,
    /// Minimum time between two fetches of `jwks_url` triggered by unknown `kid`s.
    pub jwks_refresh_interval: Dur,
    /// Required `aud`; empty: not checked.
    pub audience: String,
    /// Required `iss`; empty: not checked.
    pub issuer: String,
    pub leeway: Dur,
    pub cookie_name: String,
    /// Close a connection with 1008 when its token expires, unless refreshed.
    pub expire_connections: bool,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl AuthConfig {
    /// The key sources that are set, by config key name.
    fn key_sources(&self) -> Vec<&'static str> {
        [
            ("hmac_secret", &self.hmac_secret),
            ("public_key_file", &self.public_key_file),
            ("jwks_file", &self.jwks_file),
            ("jwks_url", &self.jwks_url),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k)
        .collect()
    }

    /// Every problem of the `[auth]` section, each naming its key. Key and
    /// JWKS files are read and parsed here, so a bad one stops the start
    /// (and `check-config`).
    fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        match self.key_sources().as_slice() {
            [] => errs.push(
                "auth.hmac_secret: a secret (or auth.public_key_file, auth.jwks_file or \
                 auth.jwks_url) is required"
                    .into(),
            ),
            [_] => {}
            many => errs.push(format!(
                "auth: set exactly one of hmac_secret, public_key_file, jwks_file and \
                 jwks_url (found {})",
                many.join(", ")
            )),
        }
        if !self.hmac_secret.is_empty() && self.hmac_secret.len() < 16 {
            errs.push("auth.hmac_secret: must be at least 16 bytes".into());
        }
        if !self.public_key_file.is_empty()
            && let Err(e) = crate::auth::check_public_key_file(&self.public_key_file)
        {
            errs.push(e);
        }
        if !self.jwks_file.is_empty()
            && let Err(e) = crate::auth::check_jwks_file(&self.jwks_file)
        {
            errs.push(e);
        }
        if !self.jwks_url.is_empty()
            && let Err(e) = crate::auth::check_jwks_url(&self.jwks_url)
        {
            errs.push(e);
        }
        if !self.jwks_ca_file.is_empty() {
            if !self.jwks_url.starts_with("https://") {
                errs.push("auth.jwks_ca_file: only used with an https:// auth.jwks_url".into());
            } else if let Err(e) = crate::auth::check_jwks_ca_file(&self.jwks_ca_file) {
                errs.push(e);
            }
        }
        if self.jwks_refresh_interval.0.is_zero() {
            errs.push("auth.jwks_refresh_interval: must be above 0".into());
        }
        if self.cookie_name.is_empty() {
            errs.push("auth.cookie_name: must not be empty".into());
        }
        errs
    }
}

/// `Debug` as the TOML a section serializes to, with every secret redacted
/// by [`crate::secret`]'s rules: a key added later is covered without a
/// change here.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match toml::Value::try_from(self) {
                    Ok(mut v) => {
                        crate::secret::redact_toml(&mut v);
                        write!(f, "{} {}", stringify!($t), v)
                    }
                    Err(_) => f.write_str(concat!(stringify!($t), " { .. }")),
                }
            }
        }
    )*};
}

redacted_debug!(Config, AuthConfig, ApiConfig, BrokerConfig, HistoryConfig);

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer key for `/api/*`.
    pub key: String,
    /// Largest request body accepted on `/api/*`, in bytes.
    pub max_body_bytes: usize,
    /// `/api/*` requests served at once; past it `503` + `Retry-After`
    /// (operations endpoints are not counted).
    pub max_concurrent_requests: usize,
    /// How long an `idempotency_key` answers with its first publish's result.
    pub idempotency_window: Dur,
    /// Keys one node remembers with the memory broker (the oldest are
    /// forgotten early past it); Redis keeps its own, each for the window.
    pub idempotency_max_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Allowed `Origin` values, exact or `https://*.example.com`; empty: any.
    pub allowed_origins: Vec<String>,
    pub ping_interval: Dur,
    pub ping_timeout: Dur,
    pub handshake_timeout: Dur,
    /// Largest frame or message a client may send, in bytes.
    pub max_message_size: usize,
    /// Bytes queued for one client before it is closed 1013.
    pub send_queue_max_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    /// Per connection; bursts up to twice that.
    pub messages_per_second: u32,
    pub max_channels_per_client: usize,
    /// Handshakes in progress (accepted, not yet admitted) past which a new
    /// upgrade is refused 503 with a jittered `Retry-After` before any token
    /// work: in a reconnect storm the refused come back later instead of all
    /// waiting until they time out.
    pub max_pending_handshakes: usize,
    /// Upgrades a second from one address (bursts to twice that), answered
    /// 429 before any token work; 0: no limit.
    pub handshakes_per_address_per_second: u32,
}

/// `[broker] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// One node: offsets, history and presence in this process.
    Memory,
    /// Any number of nodes sharing one Redis or Redis Cluster (PROTOCOL §9).
    Redis,
}

impl BrokerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Memory => "memory",
            BrokerKind::Redis => "redis",
        }
    }
}

/// `[broker] redis_url`: one URL, or a Redis Cluster's seed nodes (a TOML
/// list, or from the environment a comma-separated string).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RedisUrls {
    One(String),
    Seeds(Vec<String>),
}

impl RedisUrls {
    /// Every URL given, in order (a comma-separated string counts as seeds).
    pub fn urls(&self) -> Vec<&str> {
        match self {
            RedisUrls::One(u) => u
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect(),
            RedisUrls::Seeds(us) => us.iter().map(|u| u.trim()).collect(),
        }
    }

    /// More than one URL: a Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisUrls::Seeds(_)) || self.urls().len() > 1
    }
}

/// Credentials never reach a log.
impl fmt::Debug for RedisUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.urls().into_iter().map(redact_url))
            .finish()
    }
}

/// A URL as logs may show it (see [`crate::secret::redact_url`]).
pub fn redact_url(url: &str) -> String {
    crate::secret::redact_url(url).into_owned()
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    pub redis_url: RedisUrls,
    /// No probe back through the broker for this long: not ready (§9).
    pub stall_timeout: Dur,
    /// For `rediss://`: a PEM file of the CA that signs Redis's certificate,
    /// trusted instead of the system's roots. Empty: the system's roots.
    pub redis_tls_ca_file: String,
    /// Replicas that must hold a publication before it is acknowledged
    /// (`WAIT` after the publish): 0 (default) acknowledges once the master
    /// stored it, which a master crash before replication can lose.
    pub redis_min_replicas: usize,
    /// How long a publish waits for `redis_min_replicas` before it answers 503.
    pub redis_replica_timeout: Dur,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    pub ttl: Dur,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Where history lives: `memory` (lost on restart), `file` (survives
    /// restarts) or `postgres` (in PostgreSQL).
    pub store: HistoryStoreKind,
    /// The file of `store = "file"`.
    pub path: String,
    /// The database of `store = "postgres"`: a `postgres://` URL (its
    /// password is redacted wherever the config is printed).
    pub postgres_url: String,
    /// Connections to PostgreSQL this node keeps open.
    pub postgres_pool_size: usize,
    /// `always`: a publish is answered once it is on disk. `batch`: commits
    /// are grouped and made durable within `batch_delay`; a crash loses at
    /// most that window.
    pub sync: String,
    /// Longest delay before a batched commit is on disk.
    pub batch_delay: Dur,
}

/// `[history] store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStoreKind {
    /// In this process: lost on restart (a new epoch tells clients so).
    Memory,
    /// A file on this node's disk (memory broker only).
    File,
    /// PostgreSQL (`postgres_url`): memory broker only for now.
    Postgres,
}

impl HistoryStoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryStoreKind::Memory => "memory",
            HistoryStoreKind::File => "file",
            HistoryStoreKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` wins when set.
    pub level: String,
}

/// How a SIGTERM stops the node (PROTOCOL §8 `[shutdown]`): unready first,
/// then clients closed in paced batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// `/ready` answers 503 this long, listener open and clients served,
    /// before the first close: load balancers stop sending clients here.
    pub ready_grace: Dur,
    /// Clients are closed 1001 in paced batches over this long, each told
    /// when to come back, so they do not all reconnect elsewhere at once.
    pub drain_period: Dur,
}

/// `[admin]`: the live admin page (`/admin`) and its endpoints
/// (`/api/admin/*`, behind the API key). Off, both answer 404.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the page and its endpoints (default false).
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    pub name: String,
    pub publish: bool,
    pub presence: bool,
    pub join_leave: bool,
    pub history_size: usize,
    pub history_ttl: Dur,
    /// `any` or `claims`.
    pub subscribe: String,
    /// Channels of this namespace that may keep history at once; a publish
    /// that would start one more is refused `limit_exceeded`.
    pub history_max_channels: usize,
    /// Per-device acknowledged cursors (PROTOCOL §10); only the `user`
    /// namespace, with history, may be an inbox.
    pub inbox: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".into(),
            node_name: "n1".into(),
            text_channel: String::new(),
            shutdown_timeout: Dur::secs(10),
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            ws: WsConfig::default(),
            limits: LimitsConfig::default(),
            broker: BrokerConfig::default(),
            presence: PresenceConfig::default(),
            history: HistoryConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            admin: AdminConfig::default(),
            otel: OtelConfig::default(),
            namespaces: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: String::new(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_ca_file: String::new(),
            jwks_refresh_interval: Dur::secs(300),
            audience: String::new(),
            issuer: String::new(),
            leeway: Dur::secs(5),
            cookie_name: "sb_token".into(),
            expire_connections: false,
            require_exp: true,
        }
    }
}

/// The most a `pub` frame adds around an API publication's body: the frame's
/// keys, a 255-byte channel name, a 20-digit offset and the epoch (the
/// body's own `channel` key, which the frame drops, makes up the rest).
pub const PUB_ENVELOPE_BYTES: usize = 1024;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: String::new(),
            // What fits the default send queue with a `pub` frame around it.
            max_body_bytes: (1 << 20) - PUB_ENVELOPE_BYTES,
            max_concurrent_requests: 128,
            idempotency_window: Dur::secs(24 * 3600),
            idempotency_max_keys: switchboard_core::idempotency::KeyTable::DEFAULT_MAX_KEYS,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            allowed_origins: Vec::new(),
            ping_interval: Dur::secs(30),
            ping_timeout: Dur::secs(10),
            handshake_timeout: Dur::secs(10),
            max_message_size: 65536,
            send_queue_max_bytes: 1 << 20,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_connections_per_user: 32,
            messages_per_second: 50,
            max_channels_per_client: 128,
            max_pending_handshakes: 2048,
            handshakes_per_address_per_second: 0,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::Memory,
            redis_url: RedisUrls::One("redis://127.0.0.1:6379".into()),
            stall_timeout: Dur::secs(5),
            redis_tls_ca_file: String::new(),
            redis_min_replicas: 0,
            redis_replica_timeout: Dur::secs(1),
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { ttl: Dur::secs(60) }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            store: HistoryStoreKind::Memory,
            path: "data/history.db".into(),
            postgres_url: String::new(),
            postgres_pool_size: 8,
            sync: "always".into(),
            batch_delay: Dur(Duration::from_millis(10)),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            ready_grace: Dur::secs(5),
            drain_period: Dur::secs(10),
        }
    }
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            name: String::new(),
            publish: false,
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl: Dur::secs(0),
            subscribe: "any".into(),
            history_max_channels: 100_000,
            inbox: false,
        }
    }
}

/// A config that cannot be used; the message names every bad key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

const SECTIONS: &[&str] = &[
    "auth", "api", "ws", "limits", "broker", "presence", "history", "log", "shutdown", "admin",
    "otel",
];

/// Maps `SWITCHBOARD_AUTH_HMAC_SECRET` to `("auth", "hmac_secret")` and
/// `SWITCHBOARD_NODE_NAME` to `("", "node_name")`.
fn env_key(var: &str) -> Option<(&'static str, String)> {
    let rest = var.strip_prefix("SWITCHBOARD_")?.to_ascii_lowercase();
    for s in SECTIONS {
        if let Some(key) = rest.strip_prefix(&format!("{s}_")) {
            return Some((s, key.to_string()));
        }
    }
    Some(("", rest))
}

fn env_value(raw: &str, like: &toml::Value) -> Result<toml::Value, String> {
    Ok(match like {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a whole number"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| format!("`{raw}` is not a number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(format!("`{raw}` is not true or false")),
        }),
        toml::Value::Array(_) => {
            let t = raw.trim();
            if t.starts_with('[') {
                let doc: toml::Table = toml::from_str(&format!("v = {t}"))
                    .map_err(|e| format!("`{raw}` is not a TOML array: {e}"))?;
                doc.get("v").cloned().unwrap_or(toml::Value::Array(vec![]))
            } else {
                toml::Value::Array(
                    t.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                )
            }
        }
        _ => return Err("this key cannot be set from the environment".into()),
    })
}

impl Config {
    /// Loads defaults, then `file` (when given), then the `SWITCHBOARD_*`
    /// variables of `env`, then validates. Unknown environment names are
    /// returned as warnings, not errors: other tools share the prefix.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let (config, warnings) = Config::load_unvalidated(file, env)?;
        config.validate()?;
        Ok((config, warnings))
    }

    /// [`Config::load`] without [`Config::validate`]: for commands that need
    /// a part of the config only (`switchboard token` needs the secret, not
    /// the API key a server needs).
    pub fn load_unvalidated(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut table: toml::Table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                // Parse once as Config for precise messages (line, key) ...
                // A parse error quotes the line: a secret's value is redacted.
                let bad = |e: toml::de::Error| {
                    let e = crate::secret::redact_message(&e.to_string());
                    ConfigError(format!("config file {}: {e}", path.display()))
                };
                toml::from_str::<Config>(&text).map_err(bad)?;
                toml::from_str(&text).map_err(bad)?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(format!("internal: defaults do not serialize: {e}")))?;
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SWITCHBOARD_"))
            .collect();
        vars.sort();
        for (var, raw) in vars {
            let Some((section, key)) = env_key(&var) else {
                continue;
            };
            let like = if section.is_empty() {
                defaults.get(&key)
            } else {
                defaults
                    .get(section)
                    .and_then(|s| s.as_table())
                    .and_then(|t| t.get(&key))
            };
            let Some(like) = like.filter(|v| !v.is_table()) else {
                warnings.push(format!("{var}: names no config key; ignored"));
                continue;
            };
            let value = match env_value(&raw, like) {
                Ok(v) => v,
                Err(e) => {
                    let sensitive =
                        crate::secret::is_secret_key(&key) || crate::secret::is_url_key(&key);
                    let e = if sensitive {
                        e.replace(&raw, crate::secret::REDACTED)
                    } else {
                        e
                    };
                    let name = if section.is_empty() {
                        key.clone()
                    } else {
                        format!("{section}.{key}")
                    };
                    errors.push(format!("{name} (from {var}): {e}"));
                    continue;
                }
            };
            if section.is_empty() {
                table.insert(key, value);
            } else {
                let entry = table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(t) = entry.as_table_mut() {
                    t.insert(key, value);
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors.join("\n")));
        }
        let config: Config = toml::Value::Table(table).try_into().map_err(|e| {
            ConfigError(format!(
                "config: {}",
                crate::secret::redact_message(&e.to_string())
            ))
        })?;
        Ok((config, warnings))
    }

    /// Reports every problem at once, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs: Vec<String> = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "listen: `{}` is not an address such as \"127.0.0.1:8000\"",
                self.listen
            ));
        }
        if self.node_name.is_empty() {
            errs.push("node_name: must not be empty".into());
        }
        if !self.text_channel.is_empty() && ChannelName::parse(&self.text_channel).is_err() {
            errs.push(format!(
                "text_channel: `{}` is not a valid channel name",
                self.text_channel
            ));
        }
        errs.extend(self.auth.problems());
        if self.api.key.is_empty() {
            errs.push("api.key: an API key is required".into());
        }
        if self.api.max_body_bytes == 0 {
            errs.push("api.max_body_bytes: must be above 0".into());
        }
        if self.api.max_concurrent_requests == 0 {
            errs.push("api.max_concurrent_requests: must be above 0".into());
        }
        if self.api.idempotency_window.0.is_zero() {
            errs.push("api.idempotency_window: must be above 0".into());
        }
        if self.api.idempotency_max_keys == 0 {
            errs.push("api.idempotency_max_keys: must be above 0".into());
        }
        for (i, o) in self.ws.allowed_origins.iter().enumerate() {
            if let Err(e) = crate::http::origin::check_pattern(o) {
                errs.push(format!(
                    "ws.allowed_origins[{i}]: `{o}` is not an origin such as \
                     \"https://app.example.com\" or \"https://*.example.com\": {e}"
                ));
            }
        }
        if self.ws.ping_interval.0.is_zero() {
            errs.push("ws.ping_interval: must be above 0".into());
        }
        if self.ws.ping_timeout.0.is_zero() {
            errs.push("ws.ping_timeout: must be above 0".into());
        }
        if self.ws.handshake_timeout.0.is_zero() {
            errs.push("ws.handshake_timeout: must be above 0".into());
        }
        if self.ws.max_message_size < 128 {
            errs.push("ws.max_message_size: must be at least 128".into());
        }
        if self.ws.send_queue_max_bytes < 1024 {
            errs.push("ws.send_queue_max_bytes: must be at least 1024".into());
        }
        if self.limits.max_connections == 0 {
            errs.push("limits.max_connections: must be above 0".into());
        }
        if self.limits.max_pending_handshakes == 0 {
            errs.push("limits.max_pending_handshakes: must be above 0".into());
        }
        if self.limits.max_connections_per_user == 0 {
            errs.push("limits.max_connections_per_user: must be above 0".into());
        }
        if self.limits.messages_per_second == 0 {
            errs.push("limits.messages_per_second: must be above 0".into());
        }
        errs.extend(self.broker_problems());
        if self.history.store == HistoryStoreKind::Postgres {
            let url = &self.history.postgres_url;
            if url.is_empty() {
                errs.push(
                    "history.postgres_url: a URL is required with store = \"postgres\"".into(),
                );
            } else if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                errs.push(format!(
                    "history.postgres_url: `{}` must start with postgres:// or postgresql://",
                    redact_url(url)
                ));
            }
            if self.history.postgres_pool_size < 2 || self.history.postgres_pool_size > 256 {
                errs.push("history.postgres_pool_size: must be 2 to 256".into());
            }
        }
        if self.history.store == HistoryStoreKind::File && self.history.path.is_empty() {
            errs.push("history.path: a file path is required with store = \"file\"".into());
        }
        if self.history.batch_delay.0.is_zero()
            || self.history.batch_delay.0 > Duration::from_secs(1)
        {
            errs.push("history.batch_delay: must be above 0 and at most 1s".into());
        }
        if !matches!(self.history.sync.as_str(), "always" | "batch") {
            errs.push(format!(
                "history.sync: `{}` must be \"always\" or \"batch\"",
                self.history.sync
            ));
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            errs.push(format!(
                "log.level: `{}` must be error, warn, info, debug or trace",
                self.log.level
            ));
        }
        errs.extend(self.otel.problems());
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !seen.insert(ns.name.as_str()) {
                errs.push(format!("namespaces[{i}].name: `{}` appears twice", ns.name));
            }
            if !ns.name.is_empty()
                && (ns.name.contains(':') || ChannelName::parse(&ns.name).is_err())
            {
                errs.push(format!(
                    "namespaces[{i}].name: `{}` is not a valid namespace",
                    ns.name
                ));
            }
            if !matches!(ns.subscribe.as_str(), "any" | "claims") {
                errs.push(format!(
                    "namespaces[{i}].subscribe: `{}` must be \"any\" or \"claims\"",
                    ns.subscribe
                ));
            }
            if ns.history_size > 0 && ns.history_ttl.0.is_zero() {
                errs.push(format!(
                    "namespaces[{i}].history_ttl: must be above 0 when history_size is set"
                ));
            }
            if ns.history_max_channels == 0 {
                errs.push(format!(
                    "namespaces[{i}].history_max_channels: must be above 0"
                ));
            }
            if ns.inbox && ns.name != "user" {
                errs.push(format!(
                    "namespaces[{i}].inbox: only the `user` namespace (personal channels) may be an inbox"
                ));
            }
            if ns.inbox && (ns.history_size == 0 || ns.history_ttl.0.is_zero()) {
                errs.push(format!(
                    "namespaces[{i}].inbox: an inbox needs history (history_size and history_ttl above 0)"
                ));
            }
        }
        // An API publication reaches each subscriber as one `pub` frame in its
        // send queue: one that cannot fit would close every subscriber 1013.
        let largest_pub = self.api.max_body_bytes.saturating_add(PUB_ENVELOPE_BYTES);
        if self.api.max_body_bytes > 0 && largest_pub > self.ws.send_queue_max_bytes {
            errs.push(format!(
                "api.max_body_bytes ({}) plus the `pub` frame around it ({} bytes) must fit \
                 ws.send_queue_max_bytes ({}): lower api.max_body_bytes to at most {} or raise \
                 ws.send_queue_max_bytes to at least {largest_pub}",
                self.api.max_body_bytes,
                PUB_ENVELOPE_BYTES,
                self.ws.send_queue_max_bytes,
                self.ws
                    .send_queue_max_bytes
                    .saturating_sub(PUB_ENVELOPE_BYTES),
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs.join("\n")))
        }
    }

    /// The namespaces as the engine takes them.
    pub fn namespace_policies(&self) -> Vec<NamespacePolicy> {
        self.namespaces
            .iter()
            .map(|n| NamespacePolicy {
                name: n.name.clone(),
                publish: n.publish,
                presence: n.presence,
                join_leave: n.join_leave,
                history_size: n.history_size,
                history_ttl: n.history_ttl.0,
                subscribe: if n.subscribe == "claims" {
                    SubscribeRule::Claims
                } else {
                    SubscribeRule::Any
                },
                history_max_channels: n.history_max_channels,
                inbox: n.inbox,
            })
            .collect()
    }

    /// The development-mode additions: a `chat` namespace for the demo page and
    /// a `user` namespace with an inbox.
    pub fn with_dev_namespaces(mut self) -> Self {
        if self.namespaces.is_empty() {
            self.namespaces = vec![
                NamespaceConfig {
                    name: "chat".into(),
                    publish: true,
                    presence: true,
                    join_leave: true,
                    history_size: 100,
                    history_ttl: Dur::secs(600),
                    ..Default::default()
                },
                NamespaceConfig {
                    name: "user".into(),
                    history_size: 100,
                    history_ttl: Dur::secs(3600),
                    ..Default::default()
                },
            ];
        }
        self
    }

    fn broker_problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.broker.stall_timeout.0 < Duration::from_secs(1) {
            // The probe goes every second: less would flap.
            errs.push("broker.stall_timeout: must be at least 1s".into());
        }
        if self.presence.ttl.0 < Duration::from_secs(1) {
            errs.push("presence.ttl: must be at least 1s".into());
        }
        if self.broker.kind != BrokerKind::Redis {
            return errs;
        }
        let urls = self.broker.redis_url.urls();
        if urls.is_empty() {
            errs.push("broker.redis_url: a URL is required with kind = \"redis\"".into());
        }
        for u in urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                errs.push(format!(
                    "broker.redis_url: `{}` must start with redis:// or rediss://",
                    redact_url(u)
                ));
            }
        }
        if self.history.store == HistoryStoreKind::File {
            // PROTOCOL §8: history lives in Redis with the Redis broker.
            errs.push(
                "history.store: \"file\" works with the memory broker only; with \
                 broker.kind = \"redis\" history lives in Redis (use \"memory\")"
                    .into(),
            );
        }
        if self.history.store == HistoryStoreKind::Postgres {
            // Not built yet: PostgreSQL assigning offsets under Redis's fan-out.
            errs.push(
                "history.store: \"postgres\" works with the memory broker only in this \
                 version; with broker.kind = \"redis\" history lives in Redis (use \"memory\")"
                    .into(),
            );
        }
        if self.broker.redis_min_replicas > 0 && self.broker.redis_replica_timeout.0.is_zero() {
            errs.push(
                "broker.redis_replica_timeout: must be above 0 with redis_min_replicas".into(),
            );
        }
        if !self.broker.redis_tls_ca_file.is_empty()
            && !Path::new(&self.broker.redis_tls_ca_file).is_file()
        {
            errs.push(format!(
                "broker.redis_tls_ca_file: `{}` is not a readable file",
                self.broker.redis_tls_ca_file
            ));
        }
        errs
    }

    /// The config as TOML with secrets replaced (URL credentials too), for
    /// the start-up log and anything else that prints it.
    pub fn redacted_toml(&self) -> String {
        let Ok(mut v) = toml::Value::try_from(self) else {
            return String::new();
        };
        crate::secret::redact_toml(&mut v);
        toml::to_string(&v).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const OK: &[(&str, &str)] = &[
        ("SWITCHBOARD_AUTH_HMAC_SECRET", "0123456789abcdef0123"),
        ("SWITCHBOARD_API_KEY", "key"),
    ];

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(Dur::parse("500ms"), Ok(Dur(Duration::from_millis(500))));
        assert_eq!(Dur::parse("10m"), Ok(Dur::secs(600)));
        assert_eq!(Dur::parse("1.5s"), Ok(Dur(Duration::from_millis(1500))));
        assert!(Dur::parse("10").is_err());
        assert!(Dur::parse("abc").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert_eq!(Dur::secs(600).to_string(), "10m");
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
    }

    #[test]
    fn environment_overrides_defaults() {
        let mut e = env(OK);
        e.extend(env(&[
            ("SWITCHBOARD_NODE_NAME", "n7"),
            ("SWITCHBOARD_WS_PING_INTERVAL", "2s"),
            ("SWITCHBOARD_LIMITS_MAX_CONNECTIONS", "10"),
            (
                "SWITCHBOARD_WS_ALLOWED_ORIGINS",
                "http://a.com, https://*.b.com",
            ),
            ("SWITCHBOARD_SOMETHING_ELSE", "x"),
        ]));
        let (c, warnings) = Config::load(None, e).expect("valid");
        assert_eq!(c.node_name, "n7");
        assert_eq!(c.ws.ping_interval, Dur::secs(2));
        assert_eq!(c.limits.max_connections, 10);
        assert_eq!(c.ws.allowed_origins.len(), 2);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut e = env(OK);
        e.push(("SWITCHBOARD_LIMITS_MAX_CONNECTIONS".into(), "many".into()));
        let err = Config::load(None, e).expect_err("invalid").0;
        assert!(err.contains("limits.max_connections"), "{err}");
        let err = Config::load(None, env(&[])).expect_err("invalid").0;
        assert!(
            err.contains("auth.hmac_secret") && err.contains("api.key"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_in_a_file_stop_the_start() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("c.toml");
        std::fs::write(&f, "[ws]\nping_intervall = \"1s\"\n").expect("write");
        let err = Config::load(Some(&f), env(OK)).expect_err("invalid").0;
        assert!(err.contains("ping_intervall"), "{err}");
        std::fs::write(&f, "[ws]\nping_interval = \"soon\"\n").expect("write");
        let err = Config::load(Some(&f), env(OK)).expect_err("invalid").0;
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn the_broker_is_typed_and_redis_refuses_the_file_store() {
        let mut e = env(OK);
        e.push(("SWITCHBOARD_BROKER_KIND".into(), "nats".into()));
        let err = Config::load(None, e).expect_err("unknown kind").0;
        assert!(err.contains("nats"), "{err}");
        let mut e = env(OK);
        e.push(("SWITCHBOARD_BROKER_KIND".into(), "redis".into()));
        e.push(("SWITCHBOARD_HISTORY_STORE".into(), "file".into()));
        e.push(("SWITCHBOARD_BROKER_REDIS_URL".into(), "http://x".into()));
        let err = Config::load(None, e).expect_err("file store with redis").0;
        assert!(
            err.contains("history.store") && err.contains("broker.redis_url"),
            "{err}"
        );
        let mut e = env(OK);
        e.push(("SWITCHBOARD_BROKER_KIND".into(), "redis".into()));
        e.push((
            "SWITCHBOARD_BROKER_REDIS_URL".into(),
            "redis://:pw1@a:1, rediss://u:pw2@b:2".into(),
        ));
        let (c, _) = Config::load(None, e).expect("seeds from the environment");
        assert_eq!(c.broker.kind, BrokerKind::Redis);
        assert!(c.broker.redis_url.is_cluster());
        assert_eq!(
            c.broker.redis_url.urls(),
            ["redis://:pw1@a:1", "rediss://u:pw2@b:2"]
        );
        let shown = format!("{} {:?}", c.redacted_toml(), c.broker);
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert!(shown.contains("a:1") && shown.contains("b:2"), "{shown}");
        let listed: Config = toml::from_str(
            "[broker]\nkind = \"redis\"\nredis_url = [\"redis://a:1\", \"redis://b:2\"]\n",
        )
        .expect("a list of seeds");
        assert!(listed.broker.redis_url.is_cluster());
        assert!(!Config::default().broker.redis_url.is_cluster());
    }

    #[test]
    fn the_admin_page_is_off_unless_enabled() {
        let (c, _) = Config::load(None, env(OK)).expect("valid");
        assert!(!c.admin.enabled);
        let mut e = env(OK);
        e.push(("SWITCHBOARD_ADMIN_ENABLED".into(), "true".into()));
        let (c, warnings) = Config::load(None, e).expect("valid");
        assert!(c.admin.enabled && warnings.is_empty(), "{warnings:?}");
        let bad = toml::from_str::<Config>("[admin]\nenabled = \"yes\"\n");
        assert!(bad.is_err(), "enabled is a boolean");
    }

    #[test]
    fn the_example_file_equals_the_defaults() {
        let text = include_str!("../../../config/switchboard.example.toml");
        let parsed: Config = toml::from_str(text).expect("example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn a_body_that_cannot_fit_a_send_queue_stops_the_start() {
        let mut e = env(OK);
        e.push(("SWITCHBOARD_API_MAX_BODY_BYTES".into(), "1048576".into()));
        let err = Config::load(None, e).expect_err("contradicting sizes").0;
        assert!(
            err.contains("api.max_body_bytes") && err.contains("ws.send_queue_max_bytes"),
            "{err}"
        );
        let mut e = env(OK);
        e.push(("SWITCHBOARD_API_MAX_BODY_BYTES".into(), "1048576".into()));
        e.push((
            "SWITCHBOARD_WS_SEND_QUEUE_MAX_BYTES".into(),
            "1049600".into(),
        ));
        Config::load(None, e).expect("a queue that fits the body");
        Config::load(None, env(OK)).expect("the defaults agree");
    }

    #[test]
    fn history_max_channels_must_be_above_zero() {
        let mut c = Config::default();
        c.auth.hmac_secret = "0123456789abcdef0123".into();
        c.api.key = "k".into();
        c.namespaces.push(NamespaceConfig {
            name: "chat".into(),
            history_max_channels: 0,
            ..Default::default()
        });
        let err = c.validate().expect_err("zero cap").0;
        assert!(err.contains("namespaces[0].history_max_channels"), "{err}");
        c.namespaces[0].history_max_channels = 10;
        c.validate().expect("valid");
        assert_eq!(c.namespace_policies()[0].history_max_channels, 10);
    }

    #[test]
    fn otel_is_set_from_the_environment_and_checked() {
        let mut e = env(OK);
        e.extend(env(&[
            ("SWITCHBOARD_OTEL_ENDPOINT", "http://127.0.0.1:4318"),
            ("SWITCHBOARD_OTEL_SAMPLE_RATIO", "0.25"),
        ]));
        let (c, warnings) = Config::load(None, e).expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.otel.endpoint, "http://127.0.0.1:4318");
        assert_eq!(c.otel.sample_ratio, 0.25);
        let mut e = env(OK);
        e.push(("SWITCHBOARD_OTEL_ENDPOINT".into(), "localhost:4318".into()));
        let err = Config::load(None, e).expect_err("no scheme").0;
        assert!(err.contains("otel.endpoint"), "{err}");
        let mut e = env(OK);
        e.push(("SWITCHBOARD_OTEL_SAMPLE_RATIO".into(), "most".into()));
        let err = Config::load(None, e).expect_err("not a number").0;
        assert!(err.contains("otel.sample_ratio"), "{err}");
    }

    #[test]
    fn redacted_toml_hides_secrets() {
        let mut c = Config::default();
        c.auth.hmac_secret = "supersecretvalue!".into();
        c.api.key = "apikey-123".into();
        let t = c.redacted_toml();
        assert!(!t.contains("supersecretvalue") && !t.contains("apikey-123"));
        assert!(!format!("{c:?}").contains("supersecretvalue"));
    }
}
