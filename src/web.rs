//! Securing the HTTP server: the web config file (Prometheus exporter-toolkit's
//! YAML format, `--web.config.file`) checked into a [`Web`], which holds
//! the TLS settings (rustls, with the certificate re-read when its files change),
//! the basic-auth users (bcrypt hashes, with a cache of successful checks) and
//! the extra response headers. A [`WebConfig`] holds the `Web` in use and the
//! file it came from; a reload reads the file into a new `Web` (with a new,
//! empty cache) and swaps it in whole. `server` asks it; it does no socket I/O
//! itself.
//!
//! Errors are [`ConfigError`]s naming the key path, like the TOML config's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::ConfigError;

/// Distinct successful (user, password) checks remembered; the cache is
/// emptied when full, so a flood of logins cannot grow memory.
const AUTH_CACHE_ENTRIES: usize = 1024;
/// How often, at most, the certificate files are checked for a change.
const TLS_RECHECK: Duration = Duration::from_secs(1);

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// What the web config file asks for, validated. `Web::default()` is plain
/// HTTP without authentication (no `--web.config.file`).
#[derive(Default)]
pub struct Web {
    tls: Option<TlsSource>,
    auth: Option<BasicAuth>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for Web {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Web")
            .field("tls", &self.tls.as_ref().map(|t| &t.settings))
            .field("users", &self.auth.as_ref().map(|a| a.users.len()))
            .field("headers", &self.headers)
            .finish()
    }
}

impl Web {
    /// Reads and checks a web config file: its keys, the bcrypt hashes, and
    /// that the certificate, key and CA files load. Relative paths in it are
    /// relative to the file's directory (as in exporter-toolkit).
    pub fn load(path: &Path) -> Result<Web, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Web::parse(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses web config text; relative file paths are joined to `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<Web, ConfigError> {
        let raw: RawWeb = if text.trim().is_empty() {
            RawWeb::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." { String::new() } else { key };
                // serde_yaml_ng puts the path in front of its message; the
                // key is already said. The raw types' names mean nothing to users.
                let message = e.into_inner().to_string();
                let message = match message.split_once(": ") {
                    Some((at, rest)) if !at.contains(' ') && key.starts_with(at) => rest,
                    _ => &message,
                }
                .replace("struct RawWeb", "a mapping")
                .replace("struct RawTls", "a mapping")
                .replace("struct RawHttp", "a mapping");
                err(&key, message)
            })?
        };
        raw.validate(dir)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Number of basic-auth users; 0 means no authentication.
    pub fn users(&self) -> usize {
        self.auth.as_ref().map_or(0, |a| a.users.len())
    }

    /// Headers added to every response.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The rustls config for a new connection: the one loaded last, re-read
    /// first if the certificate, key or CA file changed.
    pub fn tls_config(&self) -> Option<Arc<ServerConfig>> {
        self.tls.as_ref().map(TlsSource::current)
    }

    /// Whether a request's `Authorization` header from `peer` lets it in.
    /// Always allowed without users. See [`AuthResult`] for how a flood of
    /// wrong passwords is kept from delaying the right one.
    pub async fn authorize(&self, headers: &HeaderMap, peer: IpAddr) -> AuthResult {
        match &self.auth {
            None => AuthResult::Allowed,
            Some(auth) => auth.check(headers, peer).await,
        }
    }
}

/// What basic auth said of a request.
///
/// A flood of wrong passwords cannot delay the right one: a check that
/// passed once is remembered (no bcrypt run), so is one that failed; each
/// client address may fail [`FAILURE_BURST`] times, then once per
/// [`FAILURE_REFILL`] (beyond that it is [`Limited`](AuthResult::Limited)
/// without a bcrypt run); and an address that failed recently checks in a
/// lane of its own, one bcrypt run at a time, so it never queues before a
/// client that has not failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Allowed,
    /// Wrong or missing credentials: 401.
    Denied,
    /// Too many failures from this address lately: 429, no check made.
    Limited,
}

impl AuthResult {
    pub const ALL: [AuthResult; 3] = [AuthResult::Allowed, AuthResult::Denied, AuthResult::Limited];

    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Allowed => "allowed",
            AuthResult::Denied => "denied",
            AuthResult::Limited => "limited",
        }
    }
}

/// Failed checks a client address may make at once before it is limited.
pub const FAILURE_BURST: u32 = 5;
/// How often a limited address gets one more try.
pub const FAILURE_REFILL: Duration = Duration::from_secs(1);
/// Client addresses whose failures are tracked; when more fail, the
/// quietest are forgotten.
const TRACKED_ADDRESSES: usize = 4096;

/// The web config in use, swapped whole by a reload, and the file it was read
/// from. The server asks for [`current`](Self::current) once per connection
/// (TLS) and once per request (basic auth, headers), so a reload applies to
/// the next request, and a TLS change to the next connection.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// None when there is no web config file: then a reload leaves it alone.
    path: Option<PathBuf>,
    current: RwLock<Arc<Web>>,
}

impl WebConfig {
    /// A web config not read from a file (tests, `Web::default()`): never reloaded.
    pub fn fixed(web: Web) -> WebConfig {
        WebConfig {
            path: None,
            current: RwLock::new(Arc::new(web)),
        }
    }

    /// Reads and checks `path`, and remembers it for reloads.
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        Ok(WebConfig {
            path: Some(path.to_owned()),
            current: RwLock::new(Arc::new(Web::load(path)?)),
        })
    }

    /// The file the config was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The `Web` in use now.
    pub fn current(&self) -> Arc<Web> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again, if there is one, into a `Web` to swap in; changes
    /// nothing. `Ok(None)` without a file.
    pub fn check(&self) -> Result<Option<Web>, ConfigError> {
        self.path.as_deref().map(Web::load).transpose()
    }

    /// Swaps `web` in: requests from now on see only it, and its empty
    /// success cache, so a removed user or an old password is refused at once.
    pub fn swap(&self, web: Web) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(web);
    }
}

// ---- basic auth ----

struct BasicAuth {
    users: BTreeMap<String, String>,
    /// SHA-256 of (salt, user, hash, password) of checks that failed.
    failed: Mutex<HashSet<[u8; 32]>>,
    /// Failures by client address: a token bucket each.
    failures: Mutex<HashMap<IpAddr, Bucket>>,
    /// bcrypt checks at once for addresses that failed lately.
    suspect: tokio::sync::Semaphore,
    /// The user hash of the highest cost, checked for unknown users so that
    /// their answer takes as long as a wrong password's (and never lets them
    /// in: the user is unknown whatever the check says).
    dummy: String,
    /// SHA-256 of (salt, user, hash, password) of checks that passed.
    cache: Mutex<HashSet<[u8; 32]>>,
    salt: [u8; 32],
    /// bcrypt checks at once: a burst of new logins uses this many cores.
    verifying: tokio::sync::Semaphore,
    /// bcrypt checks run so far (tests prove the cache with it).
    bcrypt_runs: std::sync::atomic::AtomicUsize,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>, dummy: String) -> Result<BasicAuth, ConfigError> {
        let mut salt = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| err("basic_auth_users", "no randomness for the cache salt"))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(BasicAuth {
            users,
            failed: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
            suspect: tokio::sync::Semaphore::new(1),
            dummy,
            cache: Mutex::new(HashSet::new()),
            salt,
            verifying: tokio::sync::Semaphore::new(cores),
            bcrypt_runs: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    async fn check(&self, headers: &HeaderMap, peer: IpAddr) -> AuthResult {
        let Some((user, password)) = credentials(headers) else {
            return AuthResult::Denied;
        };
        let (known, hash) = match self.users.get(&user) {
            Some(h) => (true, h.as_str()),
            None => (false, self.dummy.as_str()),
        };
        let key = self.cache_key(&user, hash, &password);
        if self.cached(&key) {
            return AuthResult::Allowed;
        }
        // An address that failed lately checks in a lane of its own, so it
        // never queues before one that has not.
        let suspect = match self.standing(peer) {
            Some(suspect) => suspect,
            None => return AuthResult::Limited,
        };
        if self.failed_before(&key) {
            self.failure(peer);
            return AuthResult::Denied;
        }
        let lane = if suspect {
            &self.suspect
        } else {
            &self.verifying
        };
        // Many scrapes with the same new credentials: one checks, the others
        // find its result in the cache once they get a permit.
        let Ok(_permit) = lane.acquire().await else {
            return AuthResult::Denied;
        };
        if self.cached(&key) {
            return AuthResult::Allowed;
        }
        if self.failed_before(&key) {
            self.failure(peer);
            return AuthResult::Denied;
        }
        // The bcrypt run takes one of the address's tries (given back if it
        // passes), so failures waiting in a lane cannot outrun the limit.
        if self.take_try(peer).is_none() {
            return AuthResult::Limited;
        }
        self.bcrypt_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hash = hash.to_owned();
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if matched && known {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= AUTH_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key);
            drop(cache);
            self.give_back_try(peer);
            AuthResult::Allowed
        } else {
            let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.len() >= AUTH_CACHE_ENTRIES {
                failed.clear();
            }
            failed.insert(key);
            drop(failed);
            self.mark_failed(peer);
            AuthResult::Denied
        }
    }

    fn failed_before(&self, key: &[u8; 32]) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    /// Whether `peer` failed lately (it then checks in the suspects' lane);
    /// `None` when it has no try left.
    fn standing(&self, peer: IpAddr) -> Option<bool> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bucket) = failures.get_mut(&peer) else {
            return Some(false);
        };
        bucket.refill(Instant::now());
        if bucket.tokens < 1.0 {
            return None;
        }
        // Tries taken by checks still running do not make it a suspect.
        Some(bucket.failed)
    }

    /// Takes one of `peer`'s tries: `None` when it has none left; else
    /// whether it failed lately.
    fn take_try(&self, peer: IpAddr) -> Option<bool> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if failures.len() >= TRACKED_ADDRESSES && !failures.contains_key(&peer) {
            // Forget the addresses that have the most tries back.
            for b in failures.values_mut() {
                b.refill(now);
            }
            failures.retain(|_, b| b.tokens < f64::from(FAILURE_BURST) - 1.0);
            if failures.len() >= TRACKED_ADDRESSES {
                failures.clear();
            }
        }
        let bucket = failures.entry(peer).or_insert(Bucket {
            tokens: f64::from(FAILURE_BURST),
            at: now,
            failed: false,
        });
        bucket.refill(now);
        if bucket.tokens < 1.0 {
            return None;
        }
        bucket.tokens -= 1.0;
        Some(bucket.failed)
    }

    /// A check from `peer` failed: its try stays used, and it is a suspect
    /// until it has all its tries back.
    fn mark_failed(&self, peer: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = failures.get_mut(&peer) {
            bucket.failed = true;
        }
    }

    /// A check that passed gives its try back; an address with all its tries
    /// is forgotten.
    fn give_back_try(&self, peer: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = failures.get_mut(&peer) {
            bucket.refill(Instant::now());
            bucket.tokens += 1.0;
            if bucket.tokens >= f64::from(FAILURE_BURST) {
                failures.remove(&peer);
            }
        }
    }

    /// A credential that failed before, tried again from `peer`: one more try
    /// used, no bcrypt run.
    fn failure(&self, peer: IpAddr) {
        let _ = self.take_try(peer);
        self.mark_failed(peer);
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn cache_key(&self, user: &str, hash: &str, password: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.salt);
        for part in [user, hash, password] {
            ctx.update(&(part.len() as u64).to_le_bytes());
            ctx.update(part.as_bytes());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }
}

/// User and password from `Authorization: Basic ...`, if well formed.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Tries left to one client address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// A check from it failed since it last had all its tries.
    failed: bool,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let gained =
            now.saturating_duration_since(self.at).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(FAILURE_BURST));
        self.at = now;
        // All its tries back: it is no longer a suspect.
        if self.tokens >= f64::from(FAILURE_BURST) {
            self.failed = false;
        }
    }
}

// ---- TLS ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone)]
struct TlsSettings {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_auth: ClientAuth,
    client_ca_file: Option<PathBuf>,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
}

impl TlsSettings {
    fn files(&self) -> impl Iterator<Item = &Path> {
        [
            Some(&self.cert_file),
            Some(&self.key_file),
            self.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
    }

    /// SHA-256 of each file's contents; a change means rebuild. Contents, not
    /// modification times: those can be coarse, and a renewal can swap in a
    /// file of the same length within the same tick.
    fn stamp(&self) -> Vec<Option<[u8; 32]>> {
        self.files()
            .map(|p| {
                let bytes = std::fs::read(p).ok()?;
                let mut d = [0u8; 32];
                d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
                Some(d)
            })
            .collect()
    }

    /// Reads the files and builds the rustls config (ring provider, HTTP/1.1).
    fn build(&self) -> Result<Arc<ServerConfig>, ConfigError> {
        let cert_key = "tls_server_config.cert_file";
        let certs = CertificateDer::pem_file_iter(&self.cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| err(cert_key, format!("{}: {e}", self.cert_file.display())))?;
        if certs.is_empty() {
            return Err(err(
                cert_key,
                format!("{}: no PEM certificate in it", self.cert_file.display()),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| {
            err(
                "tls_server_config.key_file",
                format!("{}: {e}", self.key_file.display()),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions)
            .map_err(|e| err("tls_server_config.min_version", e.to_string()))?;
        let builder = match (self.client_auth, &self.client_ca_file) {
            (ClientAuth::NoClientCert, _) => builder.with_no_client_auth(),
            (auth, Some(ca_file)) => {
                let ca_key = "tls_server_config.client_ca_file";
                let mut roots = rustls::RootCertStore::empty();
                let cas = CertificateDer::pem_file_iter(ca_file)
                    .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| err(ca_key, format!("{}: {e}", ca_file.display())))?;
                let (added, _) = roots.add_parsable_certificates(cas);
                if added == 0 {
                    return Err(err(
                        ca_key,
                        format!("{}: no usable CA certificate in it", ca_file.display()),
                    ));
                }
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if auth == ClientAuth::VerifyClientCertIfGiven {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| err(ca_key, format!("{}: {e}", ca_file.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            (_, None) => {
                return Err(err(
                    "tls_server_config.client_ca_file",
                    "needed when client_auth_type verifies client certificates",
                ));
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            err(
                "tls_server_config.key_file",
                format!("does not go with the certificate: {e}"),
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

struct TlsSource {
    settings: TlsSettings,
    state: Mutex<TlsState>,
}

struct TlsState {
    config: Arc<ServerConfig>,
    stamp: Vec<Option<[u8; 32]>>,
    checked: Instant,
}

impl TlsSource {
    fn new(settings: TlsSettings) -> Result<TlsSource, ConfigError> {
        let stamp = settings.stamp();
        let config = settings.build()?;
        Ok(TlsSource {
            settings,
            state: Mutex::new(TlsState {
                config,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The current config. At most once a second it reads the files (a few
    /// KiB; blocking that briefly is cheaper than a trip to the blocking
    /// pool) and rebuilds the config if they changed; a bad
    /// new certificate is logged and the previous one kept, so a half-done
    /// renewal does not take the exporter down.
    fn current(&self) -> Arc<ServerConfig> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= TLS_RECHECK {
            state.checked = Instant::now();
            let stamp = self.settings.stamp();
            if stamp != state.stamp {
                state.stamp = stamp;
                match self.settings.build() {
                    Ok(config) => {
                        info!(cert_file = %self.settings.cert_file.display(), "TLS certificate reloaded");
                        state.config = config;
                    }
                    Err(e) => {
                        warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                    }
                }
            }
        }
        state.config.clone()
    }
}

// ---- raw, as written in YAML ----

/// The exporter-toolkit keys this exporter knows but does not implement, with
/// why; they are refused by name rather than silently ignored.
fn unsupported(key: &str, why: &str) -> ConfigError {
    err(
        key,
        format!("exporter-toolkit setting not supported by flows-exporter: {why}"),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    tls_server_config: Option<RawTls>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<RawHttp>,
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cert: Option<serde_yaml_ng::Value>,
    key: Option<serde_yaml_ng::Value>,
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    prefer_server_cipher_suites: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The response headers a web config may set, as in exporter-toolkit, with the
/// values allowed where only some make sense. Everything else (Content-Type,
/// Server, Set-Cookie, ...) is the server's own business.
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn tls_version(key: &str, v: &str) -> Result<u16, ConfigError> {
    match v {
        "TLS12" => Ok(12),
        "TLS13" => Ok(13),
        "TLS10" | "TLS11" => Err(err(
            key,
            format!("{v} is insecure and not offered by rustls; use TLS12 or TLS13"),
        )),
        other => Err(err(
            key,
            format!("unknown TLS version `{other}`; use TLS12 or TLS13"),
        )),
    }
}

impl RawWeb {
    fn validate(self, dir: &Path) -> Result<Web, ConfigError> {
        if self.rate_limit.is_some() {
            return Err(unsupported(
                "rate_limit",
                "the server already bounds connections and request sizes",
            ));
        }
        let tls = match self.tls_server_config {
            Some(raw) => raw.validate(dir)?.map(TlsSource::new).transpose()?,
            None => None,
        };
        let auth = match self.basic_auth_users {
            Some(users) if !users.is_empty() => {
                // Unknown users are checked against the dearest real hash.
                let mut dearest: Option<(u32, &String)> = None;
                for (user, hash) in &users {
                    let key = format!("basic_auth_users.{user}");
                    if user.contains(':') {
                        return Err(err(&key, "a user name cannot contain `:`"));
                    }
                    let parts: bcrypt::HashParts = hash.parse().map_err(|e| {
                        err(
                            &key,
                            format!("not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"),
                        )
                    })?;
                    if dearest.is_none_or(|(cost, _)| parts.get_cost() > cost) {
                        dearest = Some((parts.get_cost(), hash));
                    }
                }
                let dummy = dearest.map(|(_, h)| h.clone()).unwrap_or_default();
                Some(BasicAuth::new(users, dummy)?)
            }
            _ => None,
        };
        let mut headers = Vec::new();
        if let Some(http) = self.http_server_config {
            if http.http2 == Some(true) {
                return Err(err(
                    "http_server_config.http2",
                    "the server speaks HTTP/1.1 only; remove the key or set it to false",
                ));
            }
            for (name, value) in http.headers.unwrap_or_default() {
                let key = format!("http_server_config.headers.{name}");
                let Some((canonical, allowed)) = ALLOWED_HEADERS
                    .iter()
                    .find(|(h, _)| h.eq_ignore_ascii_case(&name))
                else {
                    return Err(err(
                        &key,
                        format!(
                            "this header cannot be configured; allowed: {}",
                            ALLOWED_HEADERS.map(|(h, _)| h).join(", ")
                        ),
                    ));
                };
                if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&value)) {
                    return Err(err(
                        &key,
                        format!("value must be one of: {}", allowed.join(", ")),
                    ));
                }
                let value = HeaderValue::from_str(&value)
                    .map_err(|_| err(&key, "not a valid header value"))?;
                let name = HeaderName::from_bytes(canonical.to_ascii_lowercase().as_bytes())
                    .map_err(|_| err(&key, "not a valid header name"))?;
                headers.push((name, value));
            }
        }
        Ok(Web { tls, auth, headers })
    }
}

impl RawTls {
    /// `None` when neither file is given: plain HTTP, as in exporter-toolkit.
    fn validate(self, dir: &Path) -> Result<Option<TlsSettings>, ConfigError> {
        let k = |s: &str| format!("tls_server_config.{s}");
        for (name, set, why) in [
            ("cert", self.cert.is_some(), "give cert_file"),
            ("key", self.key.is_some(), "give key_file"),
            (
                "cipher_suites",
                self.cipher_suites.is_some(),
                "rustls offers only modern suites",
            ),
            (
                "curve_preferences",
                self.curve_preferences.is_some(),
                "rustls chooses the key exchange",
            ),
            (
                "prefer_server_cipher_suites",
                self.prefer_server_cipher_suites.is_some(),
                "rustls always prefers the server's order",
            ),
            (
                "client_allowed_sans",
                self.client_allowed_sans.is_some(),
                "any certificate signed by client_ca_file is accepted",
            ),
        ] {
            if set {
                return Err(unsupported(&k(name), why));
            }
        }
        let path = |p: Option<String>| p.filter(|p| !p.is_empty()).map(|p| dir.join(p));
        let (cert_file, key_file) = match (path(self.cert_file), path(self.key_file)) {
            (None, None) => {
                if self.client_auth_type.is_some() || self.client_ca_file.is_some() {
                    return Err(err(
                        &k("cert_file"),
                        "client certificates need TLS: give cert_file and key_file",
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => return Err(err(&k("key_file"), "missing (cert_file is set)")),
            (None, Some(_)) => return Err(err(&k("cert_file"), "missing (key_file is set)")),
            (Some(c), Some(key)) => (c, key),
        };
        let client_auth = match self.client_auth_type.as_deref() {
            None | Some("" | "NoClientCert") => ClientAuth::NoClientCert,
            Some("VerifyClientCertIfGiven") => ClientAuth::VerifyClientCertIfGiven,
            Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerifyClientCert,
            Some(v @ ("RequestClientCert" | "RequireAnyClientCert")) => {
                return Err(err(
                    &k("client_auth_type"),
                    format!(
                        "{v} accepts certificates without verifying them and is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                    ),
                ));
            }
            Some(other) => {
                return Err(err(
                    &k("client_auth_type"),
                    format!(
                        "unknown value `{other}`; use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                    ),
                ));
            }
        };
        let client_ca_file = path(self.client_ca_file);
        match (client_auth, &client_ca_file) {
            (ClientAuth::NoClientCert, Some(_)) => {
                return Err(err(
                    &k("client_ca_file"),
                    "set, but client_auth_type does not verify client certificates",
                ));
            }
            (ClientAuth::NoClientCert, None) | (_, Some(_)) => {}
            (_, None) => {
                return Err(err(
                    &k("client_ca_file"),
                    "missing: client_auth_type verifies client certificates against it",
                ));
            }
        }
        let min = match &self.min_version {
            Some(v) => tls_version(&k("min_version"), v)?,
            None => 12,
        };
        let max = match &self.max_version {
            Some(v) => tls_version(&k("max_version"), v)?,
            None => 13,
        };
        if min > max {
            return Err(err(&k("min_version"), "higher than max_version"));
        }
        let versions = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
        Ok(Some(TlsSettings {
            cert_file,
            key_file,
            client_auth,
            client_ca_file,
            versions,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> ConfigError {
        Web::parse(text, Path::new("/nonexistent")).expect_err("the web config is refused")
    }

    #[test]
    fn empty_means_plain_http_without_auth() {
        for text in ["", "{}", "tls_server_config:\n", "basic_auth_users: {}\n"] {
            let web = Web::parse(text, Path::new(".")).expect("valid");
            assert!(!web.is_tls() && web.users() == 0, "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("foo: 1", "foo"),
            (
                "tls_server_config:\n  certfile: x",
                "tls_server_config.certfile",
            ),
            (
                "tls_server_config:\n  cert_file: a.pem",
                "tls_server_config.key_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS11",
                "tls_server_config.min_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12",
                "tls_server_config.min_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert",
                "tls_server_config.client_auth_type",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert",
                "tls_server_config.client_ca_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]",
                "tls_server_config.cipher_suites",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b",
                "tls_server_config.cert_file",
            ),
            (
                "basic_auth_users:\n  alice: secret",
                "basic_auth_users.alice",
            ),
            (
                "http_server_config:\n  http2: true",
                "http_server_config.http2",
            ),
            (
                "http_server_config:\n  headers:\n    Server: x",
                "http_server_config.headers.Server",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow",
                "http_server_config.headers.X-Frame-Options",
            ),
            ("rate_limit:\n  interval: 1s", "rate_limit"),
        ];
        for (text, key) in cases {
            assert_eq!(parse_err(text).key, key, "{text}");
        }
    }

    #[test]
    fn allowed_headers_are_kept() {
        let web = Web::parse(
            "http_server_config:\n  headers:\n    x-content-type-options: nosniff\n    Strict-Transport-Security: max-age=31536000\n",
            Path::new("."),
        )
        .expect("valid");
        let names: Vec<_> = web.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["strict-transport-security", "x-content-type-options"]
        );
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwYTpzcw=="),
        );
        assert_eq!(credentials(&h), Some(("user".into(), "pa:ss".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(credentials(&h), None);
    }

    #[tokio::test]
    async fn auth_checks_users_and_caches_successes() {
        let web = alice(4);
        let header = basic;
        assert!(!allowed(&web, &HeaderMap::new()).await);
        assert!(!allowed(&web, &header("alice", "wrong")).await);
        assert!(!allowed(&web, &header("bob", "right")).await);
        assert!(allowed(&web, &header("alice", "right")).await);
        let auth = web.auth.as_ref().expect("auth");
        assert_eq!(
            auth.cache.lock().expect("lock").len(),
            1,
            "one success cached"
        );
        let runs = auth.bcrypt_runs.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(runs, 3, "unknown users and wrong passwords run bcrypt too");
        assert!(allowed(&web, &header("alice", "right")).await);
        assert_eq!(
            auth.bcrypt_runs.load(std::sync::atomic::Ordering::Relaxed),
            runs,
            "a cached success costs no bcrypt"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_new_scrapes_runs_bcrypt_a_few_times_not_each() {
        let web = Arc::new(alice(6));
        let h = basic("alice", "right");
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (web, h) = (web.clone(), h.clone());
                tokio::spawn(async move { allowed(&web, &h).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.expect("task"));
        }
        let runs = web
            .auth
            .as_ref()
            .expect("auth")
            .bcrypt_runs
            .load(std::sync::atomic::Ordering::Relaxed);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(runs <= cores, "{runs} bcrypt runs for 200 scrapes");
    }

    #[tokio::test]
    async fn failures_are_limited_per_address_and_never_cost_the_right_user() {
        let web = alice(4);
        let with = |password: &str| basic("alice", password);
        let attacker: IpAddr = [10, 0, 0, 9].into();
        let user: IpAddr = [10, 0, 0, 1].into();
        let runs = || {
            web.auth
                .as_ref()
                .expect("auth")
                .bcrypt_runs
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut results = Vec::new();
        for i in 0..20 {
            results.push(web.authorize(&with(&format!("guess-{i}")), attacker).await);
        }
        let denied = results.iter().filter(|r| **r == AuthResult::Denied).count();
        assert_eq!(denied, FAILURE_BURST as usize, "{results:?}");
        assert_eq!(
            runs(),
            FAILURE_BURST as usize,
            "limited tries run no bcrypt"
        );
        assert_eq!(
            web.authorize(&with("guess-0"), attacker).await,
            AuthResult::Limited
        );
        // Another address is not limited, and the right password passes.
        assert_eq!(
            web.authorize(&with("right"), user).await,
            AuthResult::Allowed
        );
        // A wrong password tried again costs no bcrypt run.
        let before = runs();
        assert_eq!(
            web.authorize(&with("again"), user).await,
            AuthResult::Denied
        );
        assert_eq!(
            web.authorize(&with("again"), user).await,
            AuthResult::Denied
        );
        assert_eq!(runs(), before + 1);
    }

    /// `Authorization: Basic` for `user` and `password`.
    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {v}")).expect("header"),
        );
        h
    }

    /// A web config with the one user alice, password `right`, hashed at `cost`.
    fn alice(cost: u32) -> Web {
        let hash = bcrypt::hash_with_salt("right", cost, [1; 16])
            .expect("hash")
            .to_string();
        Web::parse(
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
            Path::new("."),
        )
        .expect("valid")
    }

    /// Whether `headers` are let in, from an address with no failures.
    async fn allowed(web: &Web, headers: &HeaderMap) -> bool {
        web.authorize(headers, IpAddr::from([192, 0, 2, 1])).await == AuthResult::Allowed
    }
}
