//! The secured HTTP surface (`--web.config.file`): TLS with a CA made at test
//! time (rcgen), client certificates, basic auth, junk and oversized requests,
//! bad web configs through the binary, a real Prometheus scraping over TLS with
//! basic auth, the access token absent from every answer and log line, and a
//! reload turning TLS on for new connections.

use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flows_exporter::web::{Web, WebConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::prometheus::Prometheus;
use crate::support::*;

const USER: &str = "prometheus";
const PASSWORD: &str = "scrape-pass-3kX";

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        Pki::write(dir.path(), "");
        Pki { dir }
    }

    /// Writes `{prefix}ca.pem`, `{prefix}server.pem`, `{prefix}server-key.pem`,
    /// `{prefix}client.pem`, `{prefix}client-key.pem`, from a fresh CA.
    fn write(dir: &Path, prefix: &str) {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "flows-exporter test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(names).expect("params");
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        );
        let (client, client_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "scraper");
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server),
            ("server-key.pem", server_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
        ] {
            std::fs::write(dir.join(format!("{prefix}{name}")), pem).expect("write PEM");
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A web config in this directory (relative paths resolve against it).
    fn web(&self, yaml: &str) -> Web {
        let path = self.path("web.yml");
        std::fs::write(&path, yaml).expect("write web config");
        Web::load(&path).expect("valid web config")
    }
}

const TLS: &str = "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n";

fn hash(password: &str, cost: u32) -> String {
    bcrypt::hash_with_salt(password, cost, [42; 16])
        .expect("bcrypt")
        .to_string()
}

fn auth_users(cost: u32) -> String {
    format!("basic_auth_users:\n  {USER}: '{}'\n", hash(PASSWORD, cost))
}

/// A rustls client config trusting `ca`, with the client certificate if
/// `client` names a `{client}.pem` / `{client}-key.pem` pair.
fn tls_client(dir: &Path, ca: &str, client: Option<&str>) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join(ca)).expect("CA PEM"))
        .expect("CA");
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some(name) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).expect("PEM")],
                PrivateKeyDer::from_pem_file(dir.join(format!("{name}-key.pem"))).expect("key"),
            )
            .expect("client cert"),
    }
}

fn https(dir: &Path, ca: &str, client: Option<&str>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_client(dir, ca, client))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The per-flow sample lines: the same in every scrape between two polls.
fn flow_part(text: &str) -> Vec<String> {
    samples(text, "whatsapp_flows_")
        .into_iter()
        .filter(|l| !l.starts_with("whatsapp_flows_exporter_"))
        .collect()
}

fn addr(base: &str) -> &str {
    base.split("://").nth(1).expect("scheme://addr")
}

#[tokio::test]
async fn tls_scrape_gives_the_same_body_as_plain() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let pki = Pki::new();
    let plain = start_server(ex.clone()).await;
    let tls = start_server_web(ex.clone(), pki.web(TLS)).await;
    assert!(tls.base.starts_with("https://127.0.0.1:"));

    let over_tls = https(pki.dir.path(), "ca.pem", None)
        .get(format!("{}/metrics", tls.base))
        .send()
        .await
        .expect("scrape over TLS");
    assert_eq!(over_tls.status(), 200);
    assert_eq!(
        over_tls.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let over_tls = over_tls.text().await.expect("body");
    let over_plain = http()
        .get(format!("{}/metrics", plain.base))
        .send()
        .await
        .expect("plain scrape")
        .text()
        .await
        .expect("body");
    assert!(flow_part(&over_tls).len() > 50, "{over_tls}");
    assert_eq!(flow_part(&over_tls), flow_part(&over_plain));

    // A client that does not trust the CA is refused by its own TLS check.
    let untrusted = http().get(format!("{}/metrics", tls.base)).send().await;
    assert!(untrusted.is_err(), "{untrusted:?}");
}

#[tokio::test]
async fn plain_http_and_junk_on_the_tls_port_get_refused_and_it_keeps_serving() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let pki = Pki::new();
    let srv = start_server_web(ex, pki.web(TLS)).await;
    let at = addr(&srv.base);

    let plain = raw(at, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        plain.starts_with("HTTP/1.0 400") && plain.contains("HTTPS server"),
        "plain HTTP answered with {plain:?}"
    );
    // A handshake record full of garbage, then a client that connects and
    // says nothing (cut short by the client here; the server would wait 10 s).
    let garbage = raw(at, b"\x16\x03\x01\x00\x05hello\r\n\r\n").await;
    assert!(!garbage.starts_with("HTTP/1.1 200"), "{garbage:?}");
    drop(tokio::net::TcpStream::connect(at).await.expect("connect"));

    // Junk inside a good TLS session gets hyper's 400.
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_client(pki.dir.path(), "ca.pem", None)));
    let tcp = tokio::net::TcpStream::connect(at).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"\x00\x01junk\xff\r\n\r\n")
        .await
        .expect("send junk");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "junk over TLS: {answer:?}"
    );

    let status = https(pki.dir.path(), "ca.pem", None)
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .expect("scrape after junk")
        .status();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_certificates_are_required_and_verified() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    let pki = Pki::new();
    Pki::write(pki.dir.path(), "other-");
    let srv = start_server_web(
        ex,
        pki.web(&format!(
            "{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS13\n"
        )),
    )
    .await;
    let url = format!("{}/-/healthy", srv.base);
    let dir = pki.dir.path();

    let without = https(dir, "ca.pem", None).get(&url).send().await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let foreign = https(dir, "ca.pem", Some("other-client"))
        .get(&url)
        .send()
        .await;
    assert!(foreign.is_err(), "a certificate of another CA: {foreign:?}");
    let with = https(dir, "ca.pem", Some("client"))
        .get(&url)
        .send()
        .await
        .expect("a certificate of the configured CA is accepted");
    assert_eq!(with.status(), 200);
}

#[tokio::test]
async fn basic_auth_protects_every_path() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let pki = Pki::new();
    let web = pki.web(&format!(
        "{}http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n    X-Frame-Options: deny\n",
        auth_users(4)
    ));
    let srv = start_server_web(ex, web).await;
    let client = http();
    let get = |path: &str, creds: Option<(&str, &str)>| {
        let mut req = client.get(format!("{}{path}", srv.base));
        if let Some((user, password)) = creds {
            req = req.basic_auth(user, Some(password));
        }
        async move { req.send().await.expect("request") }
    };

    for path in ["/metrics", "/", "/-/healthy", "/-/ready", "/nope"] {
        let r = get(path, None).await;
        assert_eq!(r.status(), 401, "{path} without credentials");
        assert_eq!(r.headers()["www-authenticate"], "Basic");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let wrong = get("/metrics", Some((USER, "wrong"))).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.headers()["www-authenticate"], "Basic");
    let unknown = get("/metrics", Some(("mallory", PASSWORD))).await;
    assert_eq!(unknown.status(), 401);
    let not_basic = client
        .get(format!("{}/metrics", srv.base))
        .bearer_auth(PASSWORD)
        .send()
        .await
        .expect("request");
    assert_eq!(not_basic.status(), 401);

    // Many scrapes at once with the right password: all in, bcrypt checked
    // off the runtime (a stalled runtime would time these out).
    let oks =
        futures_util::future::join_all((0..200).map(|_| get("/metrics", Some((USER, PASSWORD)))))
            .await;
    for r in &oks {
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-frame-options"], "deny");
    }
    assert_eq!(get("/nope", Some((USER, PASSWORD))).await.status(), 404);

    // A reload is behind the same auth: refused before it is tried. (This
    // exporter's config was not read from a file, so an allowed reload
    // answers 500.)
    let reload = |creds: Option<(&str, &str)>| {
        let mut req = client.post(format!("{}/-/reload", srv.base));
        if let Some((user, password)) = creds {
            req = req.basic_auth(user, Some(password));
        }
        async move { req.send().await.expect("request").status() }
    };
    assert_eq!(reload(None).await, 401);
    assert_eq!(reload(Some((USER, "wrong"))).await, 401);
    assert_eq!(reload(Some((USER, PASSWORD))).await, 500);
}

#[tokio::test]
async fn bodies_are_never_read_and_oversized_ones_get_413() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    let srv = start_server(ex).await;
    let at = addr(&srv.base);

    // The body is announced but never sent: the answer must not wait for it.
    let started = Instant::now();
    let big = raw(
        at,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n",
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited for the body"
    );
    let chunked = raw(
        at,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n",
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 411"), "{chunked:?}");
    let small = raw(
        at,
        b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert!(small.starts_with("HTTP/1.1 200"), "{small:?}");
}

#[tokio::test]
async fn the_certificate_is_reloaded_when_its_files_change() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    let pki = Pki::new();
    let srv = start_server_web(ex, pki.web(TLS)).await;
    let dir = pki.dir.path();
    let url = format!("{}/-/healthy", srv.base);
    assert_eq!(
        https(dir, "ca.pem", None)
            .get(&url)
            .send()
            .await
            .expect("first")
            .status(),
        200
    );
    // A renewal: a new CA and server certificate written over the old files.
    Pki::write(dir, "new-");
    for name in ["server.pem", "server-key.pem"] {
        std::fs::rename(dir.join(format!("new-{name}")), dir.join(name)).expect("rename");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match https(dir, "new-ca.pem", None).get(&url).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "the new certificate was never served: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        https(dir, "ca.pem", None).get(&url).send().await.is_err(),
        "the old certificate is no longer served"
    );
}

/// A reload that turns TLS on (and raises min_version) applies to new
/// connections: plain HTTP is refused from then on, TLS 1.3 served, and a
/// TLS 1.2-only client refused.
#[tokio::test]
async fn a_reload_turns_tls_on_for_new_connections() {
    let sb = realistic().await;
    let pki = Pki::new();
    let config = pki.path("config.toml");
    std::fs::write(pki.path("token"), TOKEN).expect("write token");
    std::fs::write(
        &config,
        format!(
            "[graph]\nbase_url = \"{}\"\naccess_token_file = \"{}\"\n[[wabas]]\nid = \"{WABA_1}\"\n",
            sb.base_url,
            pki.path("token").display()
        ),
    )
    .expect("write config");
    let config = flows_exporter::config::Config::load(&config).expect("valid config");
    let ex = flows_exporter::exporter::Exporter::new(
        config,
        flows_exporter::config::Secret::new(TOKEN),
        flows_exporter::model::Clock::fixed(now()),
    )
    .expect("exporter");
    let web_file = pki.path("web.yml");
    std::fs::write(&web_file, "").expect("write web config");
    let web = Arc::new(WebConfig::load(&web_file).expect("valid web config"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at = listener.local_addr().expect("addr").to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(flows_exporter::server::serve_web(
        listener,
        ex.clone(),
        web.clone(),
        stop.cancelled_owned(),
    ));
    let status = http()
        .get(format!("http://{at}/-/healthy"))
        .send()
        .await
        .expect("plain before the reload")
        .status();
    assert_eq!(status, 200);

    std::fs::write(&web_file, format!("{TLS}  min_version: TLS13\n")).expect("write web config");
    flows_exporter::server::reload(ex, web)
        .await
        .expect("the reload is applied");

    let plain = raw(&at, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(plain.contains("HTTPS server"), "{plain:?}");
    let status = https(pki.dir.path(), "ca.pem", None)
        .get(format!("https://{at}/-/healthy"))
        .send()
        .await
        .expect("TLS after the reload")
        .status();
    assert_eq!(status, 200);
    let tls12 = {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject as _;
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_file(pki.path("ca.pem")).expect("CA"))
            .expect("CA");
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth()
    };
    let old_client = reqwest::Client::builder()
        .use_preconfigured_tls(tls12)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
        .get(format!("https://{at}/-/healthy"))
        .send()
        .await;
    assert!(
        old_client.is_err(),
        "TLS 1.2 after min_version TLS13: {old_client:?}"
    );
}

/// Runs the binary with a valid config.toml and `web_yaml` as the web config
/// file in `dir`; returns success and everything it printed.
fn binary_with_web(dir: &Path, subcommand: &str, web_yaml: &str) -> (bool, String) {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[graph]\nbase_url = \"http://127.0.0.1:9\"\naccess_token_env = \"FLOWS_WEB_TEST_TOKEN\"\n[[wabas]]\nid = \"1\"\n",
    )
    .expect("write config");
    let web = dir.join("web.yml");
    std::fs::write(&web, web_yaml).expect("write web config");
    let out = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .arg(subcommand)
        .arg("--config")
        .arg(&config)
        .arg("--web.config.file")
        .arg(&web)
        .env("FLOWS_WEB_TEST_TOKEN", "EAAunused")
        .stdin(Stdio::null())
        .output()
        .expect("run flows-exporter");
    outcome(&out)
}

#[test]
fn bad_web_configs_name_the_key_and_the_binary_exits_non_zero() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let (ok, printed) = binary_with_web(dir, "check-config", &format!("{TLS}{}", auth_users(4)));
    assert!(ok, "{printed}");
    assert!(
        printed.contains("web.yml: OK (TLS, 1 basic-auth user(s))"),
        "{printed}"
    );

    let cases = [
        (
            "tls_server_config:\n  cert_file: server.pem\n  keyfile: x\n",
            "tls_server_config.keyfile",
        ),
        ("basic_auth_user:\n  a: b\n", "basic_auth_user"),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: server-key.pem\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: client-key.pem\n",
            "tls_server_config.key_file",
        ),
        (
            "basic_auth_users:\n  alice: '$2y$10$tooshort'\n",
            "basic_auth_users.alice",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  min_version: TLS10\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  min_version: SSL3\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file",
        ),
        (
            "http_server_config:\n  headers:\n    Content-Type: text/html\n",
            "http_server_config.headers.Content-Type",
        ),
        ("tls_server_config: [\n", ""),
    ];
    for (yaml, key) in cases {
        let (ok, printed) = binary_with_web(dir, "check-config", yaml);
        assert!(!ok, "accepted:\n{yaml}\n{printed}");
        assert!(printed.contains("web.yml"), "names the file: {printed}");
        if !key.is_empty() {
            assert!(
                printed.contains(&format!("key `{key}`")),
                "{yaml}\n{printed}"
            );
        }
    }
    assert!(
        binary_with_web(dir, "check-config", cases[2].0)
            .1
            .contains("missing.pem"),
        "the missing file is named"
    );
    // `serve` refuses to start on a bad web config too.
    let (ok, printed) = binary_with_web(dir, "serve", cases[4].0);
    assert!(
        !ok && printed.contains("basic_auth_users.alice"),
        "{printed}"
    );
}

/// `serve` with TLS and basic auth, the token in the environment: every
/// answer (good and bad requests) and every line it prints is free of the token.
#[tokio::test]
async fn the_token_appears_in_no_answer_and_no_log() {
    let sb = realistic().await;
    let pki = Pki::new();
    let dir = pki.dir.path();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[graph]\nbase_url = \"{}\"\naccess_token_env = \"FLOWS_WEB_TEST_TOKEN\"\nmax_retries = 0\n[[wabas]]\nid = \"{WABA_1}\"\n[[wabas]]\nid = \"999999999999999\"\n",
            sb.base_url
        ),
    )
    .expect("write config");
    std::fs::write(dir.join("web.yml"), format!("{TLS}{}", auth_users(4))).expect("web.yml");
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--web.config.file")
            .arg(dir.join("web.yml"))
            .env("FLOWS_WEB_TEST_TOKEN", TOKEN)
            .env("FLOWS_EXPORTER_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve"),
    );
    let mut stdout = child.0.stdout.take().expect("stdout");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let stderr = child.0.stderr.take().expect("stderr");
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let logs = std::thread::spawn(move || {
        let mut addr_tx = Some(addr_tx);
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("address=").nth(1) {
                if let Some(tx) = addr_tx.take() {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let at = tokio::time::timeout(Duration::from_secs(30), addr_rx)
        .await
        .expect("serve logs its address")
        .expect("address");
    let base = format!("https://{at}");
    let client = https(dir, "ca.pem", None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get(format!("{base}/-/ready"))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sb.sandbox.request_count() > 0,
        "Graph was called with the token"
    );

    let mut answers = Vec::new();
    for path in ["/", "/metrics", "/nope", "/-/ready", "/-/healthy"] {
        for (creds, password) in [
            ("right", Some(PASSWORD)),
            ("wrong", Some("wrong")),
            ("none", None),
        ] {
            let mut req = client.get(format!("{base}{path}"));
            if let Some(p) = password {
                req = req.basic_auth(USER, Some(p));
            }
            let r = req.send().await.expect("request");
            answers.push(format!(
                "{path} {creds}\n{:?}\n{}",
                r.headers().clone(),
                r.text().await.expect("body")
            ));
        }
    }
    let metrics = answers
        .iter()
        .find(|a| a.starts_with("/metrics right"))
        .expect("scraped");
    assert!(metrics.contains("whatsapp_flows_flow_info{"), "{metrics}");
    answers.push(raw(&at, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await);
    answers.push(
        client
            .post(format!("{base}/metrics"))
            .basic_auth(USER, Some(PASSWORD))
            .body(vec![b'x'; 100_000])
            .send()
            .await
            .map(|r| format!("{:?}", r.status()))
            .unwrap_or_else(|e| format!("{e:?}")),
    );

    signal(&child.0, "TERM");
    wait_exit(&mut child.0, Duration::from_secs(15));
    let logs = logs.join().expect("stderr reader");
    let out = out.join().expect("stdout reader");
    assert!(logs.contains("SIGTERM"), "{logs}");
    for (what, text) in answers
        .iter()
        .map(|a| ("an answer", a.as_str()))
        .chain([("stderr", logs.as_str()), ("stdout", out.as_str())])
    {
        assert!(
            !text.contains(TOKEN),
            "the token leaked into {what}:\n{text}"
        );
        assert!(
            !text.contains(PASSWORD),
            "the password leaked into {what}:\n{text}"
        );
    }
}

/// Debian's Prometheus scrapes the exporter with `scheme: https`, the test CA
/// and basic auth (a cost-10 hash, as the README suggests), and sees it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_over_tls_with_basic_auth() {
    let _turn = real_servers().await;
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let pki = Pki::new();
    let srv = start_server_web(ex, pki.web(&format!("{TLS}{}", auth_users(10)))).await;
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: {USER}\n      password: {PASSWORD}\n",
        pki.path("ca.pem").display()
    );
    let prom = Prometheus::start_with(addr(&srv.base), "groups: []\n", &job).await;
    let up = prom
        .wait_for(
            r#"up{job="whatsapp_flows"} == 1 and count_over_time(up{job="whatsapp_flows"}[1m]) >= 3"#,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(up.len(), 1);
    let flows = prom
        .wait_for(
            r#"count(whatsapp_flows_flow_info)"#,
            Duration::from_secs(10),
        )
        .await;
    assert!(flows[0].value >= 5.0, "{flows:?}");
    // Every scrape so far succeeded: none was refused on the way.
    let failed = prom
        .query(r#"count_over_time(up{job="whatsapp_flows"}[1m]) - sum_over_time(up{job="whatsapp_flows"}[1m])"#)
        .await
        .expect("query");
    assert_eq!(failed[0].value, 0.0, "log:\n{}", prom.log());
}

/// `serve` with `[webhooks]` on TLS (its own web config file): signed posts
/// are answered over HTTPS, the subscription check works, the database file
/// is its owner's only, and neither the app secrets nor the verify token
/// appear in a log line, an answer or `/metrics`. Without an app secret,
/// `serve` exits non-zero naming the key.
#[tokio::test]
async fn serve_receives_signed_webhooks_over_tls_and_never_shows_the_secrets() {
    use flows_exporter::webhook::AppSecrets;
    let sb = realistic().await;
    let pki = Pki::new();
    let dir = pki.dir.path();
    let config = dir.join("config.toml");
    let db = dir.join("state.db");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[graph]\nbase_url = \"{}\"\n[[wabas]]\nid = \"{WABA_1}\"\n\
             [webhooks]\nlisten = \"127.0.0.1:0\"\npath = \"/meta\"\nweb_config_file = \"{}\"\n\
             [storage]\npath = \"{}\"\nretention = \"7d\"\n",
            sb.base_url,
            dir.join("hooks-web.yml").display(),
            db.display()
        ),
    )
    .expect("write config");
    std::fs::write(dir.join("hooks-web.yml"), TLS).expect("web.yml");
    let (first, second, verify) = (
        "first-app-s3cret-Qw7",
        "second-app-s3cret-Lp2",
        "verify-t0ken-Zz9",
    );

    // No app secret: refused at start, naming the key.
    let out = Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("WHATSAPP_ACCESS_TOKEN", TOKEN)
        .env_remove("META_APP_SECRET")
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("webhooks.app_secret_env"), "{stderr}");

    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_flows-exporter"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("WHATSAPP_ACCESS_TOKEN", TOKEN)
            .env("META_APP_SECRET", format!("{first}\n{second}\n"))
            .env("META_WEBHOOK_VERIFY_TOKEN", verify)
            .env("FLOWS_EXPORTER_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve"),
    );
    let logs = collect_stderr(&mut child.0);
    let log_text = || logs.lock().expect("logs").clone();
    wait_for("the webhook listener", Duration::from_secs(30), || {
        log_text().contains("receiving webhooks")
    })
    .await;
    let text = log_text();
    let line_with = |what: &str| -> String {
        text.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .expect("an address")
            .to_owned()
    };
    let metrics = format!("http://{}/metrics", line_with("serving /metrics"));
    let hooks = format!(
        "https://localhost:{}/meta",
        line_with("receiving webhooks")
            .rsplit(':')
            .next()
            .expect("port")
    );
    let client = https(dir, "ca.pem", None);

    let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","time":1706616000,"changes":[{"field":"flows","value":{"event":"ENDPOINT_LATENCY","flow_id":"1180349906393871","p50_latency":500,"p90_latency":8000,"requests_count":34,"threshold":7000,"alert_state":"ACTIVATED"}}]}]}"#;
    for (secret, status) in [(second, 200), (first, 200), (verify, 401), ("", 401)] {
        let r = client
            .post(&hooks)
            .header(
                "x-hub-signature-256",
                AppSecrets::sign(secret, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .expect("post over TLS");
        assert_eq!(r.status(), status, "signed with {secret:?}");
        let answer = r.text().await.expect("body");
        for s in [first, second, verify] {
            assert!(!answer.contains(s));
        }
    }
    let check = |token: &str| {
        format!("{hooks}?hub.mode=subscribe&hub.challenge=8842&hub.verify_token={token}")
    };
    let ok = client.get(check(verify)).send().await.expect("check");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "8842");
    assert_eq!(
        client
            .get(check(first))
            .send()
            .await
            .expect("check")
            .status(),
        403
    );

    let text = get_text(&metrics).await;
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_webhook_latency_p90_seconds{flow_id=\"1180349906393871\"}"
        ),
        Some(8.0)
    );
    assert_eq!(
        value(&text, "whatsapp_flows_exporter_webhook_duplicates_total"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_webhook_requests_total{result=\"bad_signature\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "whatsapp_flows_exporter_webhook_requests_total{result=\"verified\"}"
        ),
        Some(1.0)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&db)
            .expect("the database exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the database is its owner's only");
    }
    signal(&child.0, "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
    let logs = log_text();
    for s in [first, second, verify] {
        assert!(!text.contains(s), "a secret in /metrics");
        assert!(!logs.contains(s), "a secret in the logs:\n{logs}");
    }
    assert!(logs.contains("bad signature"), "{logs}");
}
