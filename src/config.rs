//! The configuration file: raw TOML (`RawConfig`, serde, unknown keys rejected) is
//! checked once into a validated [`Config`]. Every error names the key path that is
//! wrong and why, so `check-config` and start-up can say exactly what to fix.
//!
//! Defaults live here and only here; `config.toml` at the top of the repository
//! documents them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::Granularity;

/// Default listen address: a port in the 9100-9999 range Prometheus exporters use.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9878";
pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
pub const DEFAULT_API_VERSION: &str = "v23.0";
pub const DEFAULT_TOKEN_ENV: &str = "WHATSAPP_ACCESS_TOKEN";
/// Default time limit of one Graph call, retries included (at least the
/// request timeout).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// A configuration problem: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `granularity.hour.schedule`; empty for a file-level problem.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret string (the access token). `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself; call only where it is sent to Graph.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the access token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
}

impl TokenSource {
    /// Reads the token. The error names the source, never the value.
    pub fn load(&self) -> Result<Secret, ConfigError> {
        match self {
            TokenSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(err(
                    "graph.access_token_env",
                    format!("environment variable {var} is empty"),
                )),
                Err(_) => Err(err(
                    "graph.access_token_env",
                    format!(
                        "environment variable {var} is not set (export the WhatsApp access token in it, or set graph.access_token_file)"
                    ),
                )),
            },
            TokenSource::File(path) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(err(
                    "graph.access_token_file",
                    format!("{} is empty", path.display()),
                )),
                Err(e) => Err(err(
                    "graph.access_token_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
            },
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (`Config::load`), which a reload reads again;
    /// `None` for a config built in memory (`Config::parse`, the demo).
    pub path: Option<PathBuf>,
    pub listen: SocketAddr,
    pub graph: GraphConfig,
    pub discovery_schedule: String,
    pub wabas: Vec<String>,
    pub flows: Vec<StaticFlow>,
    /// Enabled granularities only, in `Granularity::ALL` order.
    pub granularities: Vec<GranularityConfig>,
    pub rate_limit: RateLimitConfig,
    pub limits: Limits,
    /// The webhook receiver (`[webhooks]`); `None`: off.
    pub webhooks: Option<WebhooksConfig>,
    /// Where durable state lives (`[storage]`).
    pub storage: StorageConfig,
    /// Messenger Pages (`[[pages]]`).
    pub pages: Vec<PageConfig>,
    /// This replica's shard (`[cluster]`, or `--shard.index`/`--shard.total`,
    /// which win); it polls only the WABAs (and static flows) of its shard.
    pub shard: crate::shard::Shard,
    /// What `[cluster]` in the file says (the flags may have overridden it).
    pub shard_in_file: crate::shard::Shard,
    /// Deprecated keys the file used, with what to write instead; they still
    /// work. `serve` and a reload log them, `check-config` prints them.
    pub deprecated: Vec<String>,
}

/// The webhook receiver (`[webhooks]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Its own listener, apart from `/metrics`.
    pub listen: SocketAddr,
    /// The route Meta (or the business's own receiver) posts to.
    pub path: String,
    /// The app secrets signatures are checked against (several: comma- or
    /// line-separated).
    pub app_secret: SecretSource,
    /// The token of the subscription check; `None` when neither key is set
    /// and the default variable is unset: checks are refused.
    pub verify_token: Option<SecretSource>,
    /// TLS for the webhook listener (an exporter-toolkit web config file, as
    /// `--web.config.file`; its basic auth does not apply to the webhook route).
    pub web_config_file: Option<PathBuf>,
    /// The bearer token of the call-metrics intake (`POST
    /// /calls/{page_id}/metrics`); `None` when neither key is set and the
    /// default variable is unset: the intake refuses every post.
    pub intake_token: Option<SecretSource>,
    /// A call with no `terminate` stops counting as active after this long.
    pub call_timeout: Duration,
}

/// A Messenger Page whose call metrics the exporter takes in and relays
/// (`[[pages]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageConfig {
    pub id: String,
    /// The Page's access token, for `POST /{page_id}/call_metrics`.
    pub token: SecretSource,
}

/// Default webhook route.
pub const DEFAULT_WEBHOOK_PATH: &str = "/webhooks";
pub const DEFAULT_APP_SECRET_ENV: &str = "META_APP_SECRET";
pub const DEFAULT_VERIFY_TOKEN_ENV: &str = "META_WEBHOOK_VERIFY_TOKEN";
pub const DEFAULT_STORAGE_PATH: &str = "flows-exporter.db";
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86400);
/// A call with no `terminate` stops counting as active after this long.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_INTAKE_TOKEN_ENV: &str = "CALL_METRICS_INTAKE_TOKEN";

/// Durable state (`[storage]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// A PostgreSQL database shared by several replicas (`postgres://...`),
    /// used instead of the file when set. `Debug` hides it (a password).
    pub url: Option<Secret>,
    /// How long raw webhook payloads (and the duplicate memory) are kept.
    pub retention: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            path: PathBuf::from(DEFAULT_STORAGE_PATH),
            url: None,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// Where a secret other than the access token comes from; errors name the
/// key it was configured by, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env { var: String, key: String },
    File { path: PathBuf, key: String },
}

impl SecretSource {
    /// Reads the secret (trimmed; empty is an error).
    pub fn load(&self) -> Result<Secret, ConfigError> {
        match self {
            SecretSource::Env { var, key } => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(err(
                    key.as_str(),
                    format!("environment variable {var} is empty"),
                )),
                Err(_) => Err(err(
                    key.as_str(),
                    format!("environment variable {var} is not set"),
                )),
            },
            SecretSource::File { path, key } => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(err(key.as_str(), format!("{} is empty", path.display()))),
                Err(e) => Err(err(
                    key.as_str(),
                    format!("cannot read {}: {e}", path.display()),
                )),
            },
        }
    }

    /// Whether it is the default variable, left unset (an optional secret
    /// nobody configured).
    fn is_unset_default(&self, default_var: &str) -> bool {
        matches!(self, SecretSource::Env { var, .. } if var == default_var && std::env::var_os(var).is_none())
    }
}

/// Bounds on what Graph's answers can make the exporter publish (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Error types Meta does not document kept as their own `error_type` per
    /// flow and period; the rest are summed into `other`.
    pub unknown_error_types: usize,
    /// Pages of one WABA's flow listing read at most; the flows of the pages
    /// read are kept.
    pub listing_pages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            unknown_error_types: 10,
            listing_pages: 100,
        }
    }
}

/// How the Graph client paces itself (`[rate_limit]`); see `ratelimit::Governor`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Usage (a fraction of Graph's hourly allowance) at which calls start to be spaced.
    pub slow_down_at: f64,
    /// Usage at or above which no call is made, except one probe per `cool_down`.
    pub stop_at: f64,
    /// Gap between call starts for one WABA when usage reaches `stop_at`; the gap
    /// grows linearly from zero at `slow_down_at`.
    pub max_delay: Duration,
    /// While usage is at or above `stop_at`: how long until one probe call may go
    /// out to learn whether usage went down (usage only updates with an answer).
    pub cool_down: Duration,
    /// Least time between the starts of any two calls of the client.
    pub min_call_interval: Duration,
    /// Calls per WABA in any rolling 60 minutes; `None`: no budget.
    pub waba_calls_per_hour: Option<u32>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            slow_down_at: 0.75,
            stop_at: 0.95,
            max_delay: Duration::from_secs(60),
            cool_down: Duration::from_secs(300),
            min_call_interval: Duration::from_millis(10),
            waba_calls_per_hour: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    /// Scheme and host (and optional path prefix), without a trailing slash.
    pub base_url: String,
    pub api_version: String,
    pub token: TokenSource,
    /// Time limit of one HTTP request to Graph.
    pub timeout: Duration,
    /// Time limit of one call: its attempts, their retries and the backoff
    /// between them (not the rate limit's waits before it goes out).
    pub deadline: Duration,
    pub max_concurrency: usize,
    pub max_retries: u32,
    pub retry_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFlow {
    pub id: String,
    pub name: Option<String>,
    /// Its WABA, when the config says (`waba`): the flow then goes to that
    /// WABA's shard.
    pub waba_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GranularityConfig {
    pub granularity: Granularity,
    /// Six-field cron expression (seconds first), evaluated in UTC.
    pub schedule: String,
    /// A period is shown only once it ended at least this long ago.
    pub trust_after: Duration,
    /// How far back each query reaches (`since`); `None` lets Graph choose (LIFETIME).
    pub lookback: Option<Duration>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        let mut config = Config::parse(&text)?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| err("", format!("{e}")))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            err(key, e.into_inner().message().trim().to_owned())
        })?;
        raw.validate()
    }

    /// The configured WABAs this replica's shard discovers and polls.
    pub fn owned_wabas(&self) -> Vec<String> {
        self.wabas
            .iter()
            .filter(|w| self.shard.owns(w))
            .cloned()
            .collect()
    }

    /// The static flows this replica's shard polls: with their WABA's shard
    /// when the config names it, else by their own id.
    pub fn owned_flows(&self) -> Vec<StaticFlow> {
        self.flows
            .iter()
            .filter(|f| self.shard.owns(f.waba_id.as_deref().unwrap_or(&f.id)))
            .cloned()
            .collect()
    }

    pub fn granularity(&self, g: Granularity) -> Option<&GranularityConfig> {
        self.granularities.iter().find(|c| c.granularity == g)
    }

    /// Default schedule and lag knobs per granularity, matched to how the data
    /// settles: Graph ingests with a lag of a couple of hours, so an hour is polled
    /// once an hour and trusted three hours after it ends; a day is polled every
    /// three hours and trusted six hours after it ends.
    pub fn default_granularity(g: Granularity) -> GranularityConfig {
        match g {
            Granularity::Hour => GranularityConfig {
                granularity: g,
                schedule: "0 20 * * * *".into(),
                trust_after: Duration::from_secs(3 * 3600),
                lookback: Some(Duration::from_secs(2 * 86400)),
            },
            Granularity::Day => GranularityConfig {
                granularity: g,
                schedule: "0 35 */3 * * *".into(),
                trust_after: Duration::from_secs(6 * 3600),
                lookback: Some(Duration::from_secs(4 * 86400)),
            },
            Granularity::Lifetime => GranularityConfig {
                granularity: g,
                schedule: "0 50 */6 * * *".into(),
                trust_after: Duration::ZERO,
                lookback: None,
            },
        }
    }
}

// ---- raw, as written in TOML ----

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    graph: RawGraph,
    #[serde(default)]
    discovery: RawDiscovery,
    #[serde(default)]
    wabas: Vec<RawWaba>,
    #[serde(default)]
    flows: Vec<RawFlow>,
    #[serde(default)]
    granularity: RawGranularities,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    limits: RawLimits,
    webhooks: Option<RawWebhooks>,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    pages: Vec<RawPage>,
    #[serde(default)]
    cluster: RawCluster,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    shard_index: Option<i64>,
    shard_total: Option<i64>,
}

impl RawCluster {
    fn validate(self) -> Result<crate::shard::Shard, ConfigError> {
        let total = self.shard_total.unwrap_or(1);
        let index = self.shard_index.unwrap_or(0);
        if !(1..=i64::from(crate::shard::MAX_SHARDS)).contains(&total) {
            return Err(err(
                "cluster.shard_total",
                format!("must be between 1 and {}", crate::shard::MAX_SHARDS),
            ));
        }
        if !(0..total).contains(&index) {
            return Err(err(
                "cluster.shard_index",
                format!(
                    "must be at least 0 and below cluster.shard_total ({total}); shards count from 0"
                ),
            ));
        }
        crate::shard::Shard::new(index as u32, total as u32).map_err(|e| err("cluster", e))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPage {
    id: String,
    access_token_env: Option<String>,
    access_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    listen: Option<String>,
    path: Option<String>,
    app_secret_env: Option<String>,
    app_secret_file: Option<PathBuf>,
    verify_token_env: Option<String>,
    verify_token_file: Option<PathBuf>,
    web_config_file: Option<PathBuf>,
    intake_token_env: Option<String>,
    intake_token_file: Option<PathBuf>,
    call_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    path: Option<PathBuf>,
    url: Option<String>,
    retention: Option<String>,
}

/// One secret from `<name>_env` or `<name>_file` of `[webhooks]` (not both),
/// else the default variable.
fn secret_source(
    name: &str,
    env: Option<String>,
    file: Option<PathBuf>,
    default_var: &str,
) -> Result<SecretSource, ConfigError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(err(
            format!("webhooks.{name}_file"),
            format!("set webhooks.{name}_env or webhooks.{name}_file, not both"),
        )),
        (Some(var), None) if var.trim().is_empty() => Err(err(
            format!("webhooks.{name}_env"),
            "must name an environment variable",
        )),
        (Some(var), None) => Ok(SecretSource::Env {
            var,
            key: format!("webhooks.{name}_env"),
        }),
        (None, Some(path)) => Ok(SecretSource::File {
            path,
            key: format!("webhooks.{name}_file"),
        }),
        (None, None) => Ok(SecretSource::Env {
            var: default_var.to_owned(),
            key: format!("webhooks.{name}_env"),
        }),
    }
}

impl RawWebhooks {
    fn validate(self) -> Result<WebhooksConfig, ConfigError> {
        let Some(listen_text) = self.listen else {
            return Err(err(
                "webhooks.listen",
                "missing: the webhook receiver needs an address of its own, like \"0.0.0.0:9879\"",
            ));
        };
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            err(
                "webhooks.listen",
                format!("`{listen_text}` is not a socket address like \"0.0.0.0:9879\""),
            )
        })?;
        let path = self.path.unwrap_or_else(|| DEFAULT_WEBHOOK_PATH.to_owned());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.starts_with("/-/") {
            return Err(err(
                "webhooks.path",
                format!("`{path}` is not a route like \"/webhooks\""),
            ));
        }
        let app_secret = secret_source(
            "app_secret",
            self.app_secret_env,
            self.app_secret_file,
            DEFAULT_APP_SECRET_ENV,
        )?;
        let verify_token = secret_source(
            "verify_token",
            self.verify_token_env,
            self.verify_token_file,
            DEFAULT_VERIFY_TOKEN_ENV,
        )?;
        let verify_token =
            (!verify_token.is_unset_default(DEFAULT_VERIFY_TOKEN_ENV)).then_some(verify_token);
        let intake_token = secret_source(
            "intake_token",
            self.intake_token_env,
            self.intake_token_file,
            DEFAULT_INTAKE_TOKEN_ENV,
        )?;
        let intake_token =
            (!intake_token.is_unset_default(DEFAULT_INTAKE_TOKEN_ENV)).then_some(intake_token);
        let call_timeout = match self.call_timeout {
            Some(s) => parse_duration("webhooks.call_timeout", &s)?,
            None => DEFAULT_CALL_TIMEOUT,
        };
        if call_timeout < Duration::from_secs(60) || call_timeout > Duration::from_secs(7 * 86400) {
            return Err(err("webhooks.call_timeout", "must be between 1m and 7d"));
        }
        Ok(WebhooksConfig {
            listen,
            path,
            app_secret,
            verify_token,
            web_config_file: self.web_config_file,
            intake_token,
            call_timeout,
        })
    }
}

impl RawStorage {
    fn validate(self) -> Result<StorageConfig, ConfigError> {
        let d = StorageConfig::default();
        let path = self.path.unwrap_or(d.path);
        if path.as_os_str().is_empty() {
            return Err(err("storage.path", "must name a file"));
        }
        let retention = match self.retention {
            Some(s) => parse_duration("storage.retention", &s)?,
            None => d.retention,
        };
        if retention < Duration::from_secs(86400) {
            return Err(err(
                "storage.retention",
                "must be at least 1d: Meta resends a webhook for up to 7 days, and the duplicate memory lasts as long as the payloads",
            ));
        }
        let url = match self.url {
            None => None,
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Some(Secret::new(u))
            }
            Some(_) => {
                return Err(err(
                    "storage.url",
                    "must be a PostgreSQL URL like \"postgres://user:password@host:5432/db\"",
                ));
            }
        };
        Ok(StorageConfig {
            path,
            url,
            retention,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    unknown_error_types: Option<i64>,
    listing_pages: Option<i64>,
}

impl RawLimits {
    fn validate(self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let unknown_error_types = match self.unknown_error_types {
            None => d.unknown_error_types,
            Some(n) if (0..=100).contains(&n) => n as usize,
            Some(_) => {
                return Err(err(
                    "limits.unknown_error_types",
                    "must be between 0 and 100",
                ));
            }
        };
        let listing_pages = match self.listing_pages {
            None => d.listing_pages,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(_) => return Err(err("limits.listing_pages", "must be between 1 and 10000")),
        };
        Ok(Limits {
            unknown_error_types,
            listing_pages,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    slow_down_at: Option<f64>,
    stop_at: Option<f64>,
    max_delay: Option<String>,
    cool_down: Option<String>,
    min_call_interval: Option<String>,
    waba_calls_per_hour: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGraph {
    base_url: Option<String>,
    api_version: Option<String>,
    access_token_env: Option<String>,
    access_token_file: Option<PathBuf>,
    timeout: Option<String>,
    /// Deprecated: `timeout` as a float of seconds.
    timeout_seconds: Option<f64>,
    deadline: Option<String>,
    max_concurrency: Option<i64>,
    max_retries: Option<i64>,
    retry_backoff: Option<String>,
    /// Deprecated: `retry_backoff` as a float of seconds.
    retry_backoff_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    schedule: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWaba {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    id: String,
    name: Option<String>,
    waba: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGranularities {
    hour: Option<RawGranularity>,
    day: Option<RawGranularity>,
    lifetime: Option<RawGranularity>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGranularity {
    enabled: Option<bool>,
    schedule: Option<String>,
    trust_after: Option<String>,
    lookback: Option<String>,
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let listen_text = self.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            err(
                "server.listen",
                format!("`{listen_text}` is not a socket address like \"127.0.0.1:9878\""),
            )
        })?;

        let mut deprecated = Vec::new();
        let graph = self.graph.validate(&mut deprecated)?;

        let discovery_schedule = self
            .discovery
            .schedule
            .unwrap_or_else(|| "0 5 */6 * * *".into());
        check_cron("discovery.schedule", &discovery_schedule)?;

        let mut wabas: Vec<String> = Vec::new();
        for (i, w) in self.wabas.into_iter().enumerate() {
            let key = format!("wabas[{i}].id");
            check_graph_id(&key, &w.id)?;
            if wabas.contains(&w.id) {
                return Err(err(key, format!("WABA {} is listed twice", w.id)));
            }
            wabas.push(w.id);
        }

        let mut flows: Vec<StaticFlow> = Vec::new();
        for (i, f) in self.flows.into_iter().enumerate() {
            let key = format!("flows[{i}].id");
            check_graph_id(&key, &f.id)?;
            if flows.iter().any(|s| s.id == f.id) {
                return Err(err(key, format!("flow {} is listed twice", f.id)));
            }
            if let Some(w) = &f.waba {
                check_graph_id(&format!("flows[{i}].waba"), w)?;
            }
            flows.push(StaticFlow {
                id: f.id,
                name: f.name,
                waba_id: f.waba,
            });
        }

        if wabas.is_empty() && flows.is_empty() {
            return Err(err(
                "wabas",
                "nothing to poll: add at least one [[wabas]] id (flows are discovered) or one [[flows]] id",
            ));
        }

        let mut granularities = Vec::new();
        let raws = [
            (Granularity::Hour, self.granularity.hour),
            (Granularity::Day, self.granularity.day),
            (Granularity::Lifetime, self.granularity.lifetime),
        ];
        for (g, raw) in raws {
            let raw = raw.unwrap_or_default();
            if raw.enabled == Some(false) {
                continue;
            }
            let prefix = format!("granularity.{}", g.label());
            let mut c = Config::default_granularity(g);
            if let Some(s) = raw.schedule {
                check_cron(&format!("{prefix}.schedule"), &s)?;
                c.schedule = s;
            }
            if let Some(s) = raw.trust_after {
                c.trust_after = parse_duration(&format!("{prefix}.trust_after"), &s)?;
            }
            if let Some(s) = raw.lookback {
                let key = format!("{prefix}.lookback");
                let d = parse_duration(&key, &s)?;
                let limit = match g {
                    Granularity::Hour => Some(30),
                    Granularity::Day => Some(90),
                    Granularity::Lifetime => None,
                };
                if let Some(days) = limit {
                    if d > Duration::from_secs(days * 86400) {
                        return Err(err(
                            key,
                            format!("Graph serves at most {days} days of {} data", g.label()),
                        ));
                    }
                }
                if d.is_zero() {
                    return Err(err(key, "must be longer than zero"));
                }
                c.lookback = Some(d);
            }
            granularities.push(c);
        }
        if granularities.is_empty() {
            return Err(err(
                "granularity",
                "every granularity is disabled: enable at least one of hour, day, lifetime",
            ));
        }

        let rate_limit = self.rate_limit.validate()?;
        let limits = self.limits.validate()?;
        let webhooks = self.webhooks.map(RawWebhooks::validate).transpose()?;
        if let Some(w) = &webhooks {
            if w.listen == listen && listen.port() != 0 {
                return Err(err(
                    "webhooks.listen",
                    format!(
                        "{} is server.listen too: the webhook receiver needs an address of its own",
                        w.listen
                    ),
                ));
            }
        }
        let storage = self.storage.validate()?;
        let mut pages: Vec<PageConfig> = Vec::new();
        for (i, p) in self.pages.into_iter().enumerate() {
            let key = format!("pages[{i}].id");
            check_graph_id(&key, &p.id)?;
            if pages.iter().any(|q| q.id == p.id) {
                return Err(err(key, format!("Page {} is listed twice", p.id)));
            }
            let token = match (p.access_token_env, p.access_token_file) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        format!("pages[{i}].access_token_file"),
                        "set access_token_env or access_token_file, not both",
                    ));
                }
                (Some(var), None) => SecretSource::Env {
                    var,
                    key: format!("pages[{i}].access_token_env"),
                },
                (None, Some(path)) => SecretSource::File {
                    path,
                    key: format!("pages[{i}].access_token_file"),
                },
                (None, None) => {
                    return Err(err(
                        format!("pages[{i}].access_token_env"),
                        "a Page needs its access token: set access_token_env or access_token_file",
                    ));
                }
            };
            pages.push(PageConfig { id: p.id, token });
        }
        let shard = self.cluster.validate()?;
        if !pages.is_empty() && webhooks.is_none() {
            return Err(err(
                "pages",
                "[[pages]] need the webhook receiver: add a [webhooks] section (the call-metrics intake is on its listener)",
            ));
        }

        Ok(Config {
            path: None,
            listen,
            graph,
            discovery_schedule,
            wabas,
            flows,
            granularities,
            rate_limit,
            limits,
            webhooks,
            storage,
            pages,
            shard,
            shard_in_file: shard,
            deprecated,
        })
    }
}

impl RawRateLimit {
    fn validate(self) -> Result<RateLimitConfig, ConfigError> {
        let d = RateLimitConfig::default();
        let slow_down_at = self.slow_down_at.unwrap_or(d.slow_down_at);
        if !(slow_down_at > 0.0 && slow_down_at < 1.0) {
            return Err(err(
                "rate_limit.slow_down_at",
                "must be a fraction of the allowance, more than 0 and less than 1 (0.75 is 75 %)",
            ));
        }
        let stop_at = self.stop_at.unwrap_or(d.stop_at);
        if !(stop_at > slow_down_at && stop_at <= 1.0) {
            return Err(err(
                "rate_limit.stop_at",
                format!(
                    "must be more than rate_limit.slow_down_at ({slow_down_at}) and at most 1 (Graph throttles at 1)"
                ),
            ));
        }
        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            Some(s) => parse_duration(&format!("rate_limit.{key}"), &s),
            None => Ok(default),
        };
        let max_delay = duration("max_delay", self.max_delay, d.max_delay)?;
        if max_delay > Duration::from_secs(3600) {
            return Err(err("rate_limit.max_delay", "must be at most 1h"));
        }
        let cool_down = duration("cool_down", self.cool_down, d.cool_down)?;
        if cool_down.is_zero() || cool_down > Duration::from_secs(3600) {
            return Err(err(
                "rate_limit.cool_down",
                "must be longer than zero and at most 1h",
            ));
        }
        let min_call_interval = duration(
            "min_call_interval",
            self.min_call_interval,
            d.min_call_interval,
        )?;
        if min_call_interval > Duration::from_secs(600) {
            return Err(err("rate_limit.min_call_interval", "must be at most 10m"));
        }
        let waba_calls_per_hour = match self.waba_calls_per_hour {
            None => None,
            Some(n) if (1..=1_000_000).contains(&n) => Some(n as u32),
            Some(_) => {
                return Err(err(
                    "rate_limit.waba_calls_per_hour",
                    "must be between 1 and 1000000 (leave it out for no budget)",
                ));
            }
        };
        Ok(RateLimitConfig {
            slow_down_at,
            stop_at,
            max_delay,
            cool_down,
            min_call_interval,
            waba_calls_per_hour,
        })
    }
}

impl RawGraph {
    fn validate(self, deprecated: &mut Vec<String>) -> Result<GraphConfig, ConfigError> {
        let base_url = self
            .base_url
            .unwrap_or_else(|| DEFAULT_BASE_URL.into())
            .trim_end_matches('/')
            .to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://"))
            || base_url.len() <= "https://".len()
        {
            return Err(err(
                "graph.base_url",
                format!("`{base_url}` is not an http(s) URL like \"https://graph.facebook.com\""),
            ));
        }
        if reqwest::Url::parse(&base_url).is_err() {
            return Err(err(
                "graph.base_url",
                format!("`{base_url}` is not a valid URL"),
            ));
        }

        let api_version = self
            .api_version
            .unwrap_or_else(|| DEFAULT_API_VERSION.into());
        let version_ok = api_version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(major, minor)| {
                !major.is_empty()
                    && !minor.is_empty()
                    && major.bytes().all(|b| b.is_ascii_digit())
                    && minor.bytes().all(|b| b.is_ascii_digit())
            });
        if !version_ok {
            return Err(err(
                "graph.api_version",
                format!("`{api_version}` is not a Graph API version like \"v23.0\""),
            ));
        }

        let token = match (self.access_token_env, self.access_token_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "graph.access_token_file",
                    "set either graph.access_token_env or graph.access_token_file, not both",
                ));
            }
            (None, Some(path)) => TokenSource::File(path),
            (Some(var), None) if var.trim().is_empty() => {
                return Err(err("graph.access_token_env", "must not be empty"));
            }
            (Some(var), None) => TokenSource::Env(var),
            (None, None) => TokenSource::Env(DEFAULT_TOKEN_ENV.into()),
        };

        let timeout = seconds_or_duration(
            ("graph.timeout", self.timeout),
            ("graph.timeout_seconds", self.timeout_seconds),
            Duration::from_secs(30),
            deprecated,
        )?;
        if timeout.is_zero() || timeout > Duration::from_secs(600) {
            return Err(err(
                "graph.timeout",
                "must be longer than zero and at most 10m",
            ));
        }
        let deadline = match self.deadline {
            Some(s) => parse_duration("graph.deadline", &s)?,
            None => DEFAULT_DEADLINE.max(timeout),
        };
        if deadline < timeout || deadline > Duration::from_secs(3600) {
            return Err(err(
                "graph.deadline",
                format!(
                    "must be at least graph.timeout ({}s) and at most 1h",
                    timeout.as_secs_f64()
                ),
            ));
        }
        let max_concurrency = self.max_concurrency.unwrap_or(4);
        if !(1..=64).contains(&max_concurrency) {
            return Err(err("graph.max_concurrency", "must be between 1 and 64"));
        }
        let max_retries = self.max_retries.unwrap_or(3);
        if !(0..=10).contains(&max_retries) {
            return Err(err("graph.max_retries", "must be between 0 and 10"));
        }
        let retry_backoff = seconds_or_duration(
            ("graph.retry_backoff", self.retry_backoff),
            ("graph.retry_backoff_seconds", self.retry_backoff_seconds),
            Duration::from_secs(2),
            deprecated,
        )?;
        if retry_backoff > Duration::from_secs(300) {
            return Err(err("graph.retry_backoff", "must be at most 5m"));
        }

        Ok(GraphConfig {
            base_url,
            api_version,
            token,
            timeout,
            deadline,
            max_concurrency: max_concurrency as usize,
            max_retries: max_retries as u32,
            retry_backoff,
        })
    }
}

/// A duration under `key` (`"30s"`, like every duration in the file) or, the
/// old way, a float of seconds under `old_key`, which still works and is
/// reported in `deprecated`. Both at once is an error.
fn seconds_or_duration(
    (key, value): (&str, Option<String>),
    (old_key, old): (&str, Option<f64>),
    default: Duration,
    deprecated: &mut Vec<String>,
) -> Result<Duration, ConfigError> {
    match (value, old) {
        (Some(_), Some(_)) => Err(err(
            old_key,
            format!("set {key} only ({old_key} is its deprecated spelling)"),
        )),
        (Some(text), None) => parse_duration(key, &text),
        (None, Some(seconds)) => {
            let d = Duration::try_from_secs_f64(seconds)
                .map_err(|_| err(old_key, "must be a number of seconds, 0 or more"))?;
            deprecated.push(format!(
                "{old_key} is deprecated; write {key} = \"{}\" (durations take ms, s, m, h, d)",
                format_duration(d)
            ));
            Ok(d)
        }
        (None, None) => Ok(default),
    }
}

/// A duration as the config writes it: `90s`, `250ms`, `2m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Graph object ids are decimal numbers; anything else would be sent into a URL path.
fn check_graph_id(key: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            key,
            format!("`{id}` is not a Graph object id (digits only)"),
        ));
    }
    Ok(())
}

fn check_cron(key: &str, expr: &str) -> Result<(), ConfigError> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(err(
            key,
            format!(
                "`{expr}` has {fields} fields; write six: second minute hour day-of-month month day-of-week (UTC)"
            ),
        ));
    }
    // Parse it exactly as the scheduler will.
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| err(key, format!("`{expr}` is not a valid cron expression")))
}

/// Parses durations like `250ms`, `90s`, `45m`, `3h`, `2d`, `1h30m`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        err(
            key,
            format!("`{text}` is not a duration like \"90m\", \"3h\" or \"2d\""),
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    let mut digits = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit_ms = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, key: &str, needle: &str) {
        let e = Config::parse(text).expect_err("config should be rejected");
        assert_eq!(e.key, key, "wrong key in {e}");
        assert!(
            e.message.contains(needle),
            "message `{}` lacks `{needle}`",
            e.message
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("[[wabas]]\nid = \"123\"\n").expect("valid");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.graph.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.graph.token, TokenSource::Env(DEFAULT_TOKEN_ENV.into()));
        assert_eq!(c.granularities.len(), 3);
        assert_eq!(
            c.granularity(Granularity::Hour).map(|g| g.trust_after),
            Some(Duration::from_secs(3 * 3600))
        );
    }

    #[test]
    fn old_duration_keys_still_work_and_say_what_to_write() {
        let c = Config::parse(
            "[graph]\ntimeout_seconds = 12.5\nretry_backoff_seconds = 0.25\n[[wabas]]\nid=\"1\"",
        )
        .expect("valid");
        assert_eq!(c.graph.timeout, Duration::from_millis(12_500));
        assert_eq!(c.graph.retry_backoff, Duration::from_millis(250));
        assert_eq!(
            c.deprecated,
            [
                "graph.timeout_seconds is deprecated; write graph.timeout = \"12500ms\" (durations take ms, s, m, h, d)",
                "graph.retry_backoff_seconds is deprecated; write graph.retry_backoff = \"250ms\" (durations take ms, s, m, h, d)",
            ]
        );
        let new = Config::parse(
            "[graph]\ntimeout = \"12500ms\"\nretry_backoff = \"250ms\"\n[[wabas]]\nid=\"1\"",
        )
        .expect("valid");
        assert_eq!(
            (new.graph.timeout, new.graph.retry_backoff),
            (c.graph.timeout, c.graph.retry_backoff)
        );
        assert!(new.deprecated.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        check_err(
            "[server]\nlisten = \"nope\"\n[[wabas]]\nid=\"1\"",
            "server.listen",
            "socket address",
        );
        check_err(
            "[graph]\ntimeout = \"0s\"\n[[wabas]]\nid=\"1\"",
            "graph.timeout",
            "longer than zero",
        );
        check_err(
            "[graph]\ntimeout = 5\n[[wabas]]\nid=\"1\"",
            "graph.timeout",
            "invalid type",
        );
        check_err(
            "[graph]\ntimeout = \"5s\"\ntimeout_seconds = 5\n[[wabas]]\nid=\"1\"",
            "graph.timeout_seconds",
            "set graph.timeout only",
        );
        check_err(
            "[graph]\nbogus = 1\n[[wabas]]\nid=\"1\"",
            "graph.bogus",
            "unknown field `bogus`",
        );
        check_err("[[wabas]]\nid = \"12a\"", "wabas[0].id", "digits only");
        check_err(
            "[[flows]]\nid = \"1\"\n[[flows]]\nid = \"1\"",
            "flows[1].id",
            "twice",
        );
        check_err("", "wabas", "nothing to poll");
        check_err(
            "[[wabas]]\nid=\"1\"\n[granularity.hour]\nschedule = \"* * * *\"",
            "granularity.hour.schedule",
            "six",
        );
        check_err(
            "[[wabas]]\nid=\"1\"\n[granularity.hour]\nschedule = \"0 99 * * * *\"",
            "granularity.hour.schedule",
            "not a valid cron",
        );
        check_err(
            "[[wabas]]\nid=\"1\"\n[granularity.day]\nlookback = \"120d\"",
            "granularity.day.lookback",
            "90 days",
        );
        check_err(
            "[[wabas]]\nid=\"1\"\n[granularity.day]\ntrust_after = \"3 hours\"",
            "granularity.day.trust_after",
            "not a duration",
        );
        check_err(
            "[[wabas]]\nid=\"1\"\n[granularity.weekly]\nenabled = true",
            "granularity.weekly",
            "unknown field `weekly`",
        );
        check_err(
            "[graph]\napi_version = \"23\"\n[[wabas]]\nid=\"1\"",
            "graph.api_version",
            "v23.0",
        );
        check_err(
            "[graph]\naccess_token_env = \"A\"\naccess_token_file = \"/x\"\n[[wabas]]\nid=\"1\"",
            "graph.access_token_file",
            "not both",
        );
    }

    #[test]
    fn rate_limit_defaults_and_errors() {
        let c = Config::parse("[[wabas]]\nid=\"1\"").expect("valid");
        assert_eq!(c.rate_limit, RateLimitConfig::default());
        let c = Config::parse(
            "[[wabas]]\nid=\"1\"\n[rate_limit]\nslow_down_at = 0.5\nstop_at = 1.0\nmax_delay = \"2s\"\ncool_down = \"200ms\"\nmin_call_interval = \"0s\"\nwaba_calls_per_hour = 180",
        )
        .expect("valid");
        assert_eq!(
            c.rate_limit,
            RateLimitConfig {
                slow_down_at: 0.5,
                stop_at: 1.0,
                max_delay: Duration::from_secs(2),
                cool_down: Duration::from_millis(200),
                min_call_interval: Duration::ZERO,
                waba_calls_per_hour: Some(180),
            }
        );
        let base = "[[wabas]]\nid=\"1\"\n[rate_limit]\n";
        for (body, key, needle) in [
            (
                "slow_down_at = 75",
                "rate_limit.slow_down_at",
                "less than 1",
            ),
            (
                "slow_down_at = 0.0",
                "rate_limit.slow_down_at",
                "more than 0",
            ),
            (
                "stop_at = 0.5",
                "rate_limit.stop_at",
                "more than rate_limit.slow_down_at",
            ),
            ("stop_at = 1.5", "rate_limit.stop_at", "at most 1"),
            (
                "max_delay = \"1 min\"",
                "rate_limit.max_delay",
                "not a duration",
            ),
            ("max_delay = \"2h\"", "rate_limit.max_delay", "at most 1h"),
            (
                "cool_down = \"0s\"",
                "rate_limit.cool_down",
                "longer than zero",
            ),
            (
                "min_call_interval = \"1h\"",
                "rate_limit.min_call_interval",
                "at most 10m",
            ),
            (
                "waba_calls_per_hour = 0",
                "rate_limit.waba_calls_per_hour",
                "between 1",
            ),
            (
                "waba_calls_per_hour = \"200\"",
                "rate_limit.waba_calls_per_hour",
                "invalid type",
            ),
            (
                "budget = 200",
                "rate_limit.budget",
                "unknown field `budget`",
            ),
        ] {
            check_err(&format!("{base}{body}"), key, needle);
        }
    }

    #[test]
    fn toml_syntax_error_is_reported() {
        let e = Config::parse("[server\nlisten=1").expect_err("bad toml");
        assert!(e.message.contains("line 1"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("k", "90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("k", "1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("k", "2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(parse_duration("k", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("k", "1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("k", "1s500ms"),
            Ok(Duration::from_millis(1500))
        );
        assert!(parse_duration("k", "5ms5").is_err());
        assert!(parse_duration("k", "5").is_err());
        assert!(parse_duration("k", "h").is_err());
        assert!(parse_duration("k", "").is_err());
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("EAAG-secret-token");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn disabled_granularity_is_left_out() {
        let c = Config::parse("[[wabas]]\nid=\"1\"\n[granularity.lifetime]\nenabled = false")
            .expect("valid");
        assert!(c.granularity(Granularity::Lifetime).is_none());
        assert!(c.granularity(Granularity::Day).is_some());
    }
}
