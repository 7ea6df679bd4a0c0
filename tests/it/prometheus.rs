//! A real Prometheus (Debian's `prometheus` package) for the end-to-end test:
//! started on a free loopback port with its data and config in a temporary
//! directory, queried over its HTTP API, and killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Prometheus {
    child: Child,
    pub base: String,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Runs on panics too, so no Prometheus outlives its test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of an instant query: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// A port that was free a moment ago. Prometheus binds it itself, so another
/// process could take it in between: `start` retries when that happens.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port) every second as job
    /// `whatsapp_flows`, evaluating `rules` every second, and waits until it is
    /// ready.
    pub async fn start(target: &str, rules: &str) -> Prometheus {
        Prometheus::start_with(target, rules, "").await
    }

    /// [`Prometheus::start`] with more keys for the scrape job (YAML lines
    /// indented by four spaces, e.g. `    scheme: https\n`).
    pub async fn start_with(target: &str, rules: &str, job_keys: &str) -> Prometheus {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let rules_path = dir.path().join("alerts.yml");
            std::fs::write(&rules_path, rules).expect("write rules");
            let config_path = dir.path().join("prometheus.yml");
            std::fs::write(
                &config_path,
                format!(
                    "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                     rule_files:\n  - {}\n\
                     scrape_configs:\n  - job_name: whatsapp_flows\n{job_keys}    static_configs:\n      - targets: [\"{target}\"]\n",
                    rules_path.display()
                ),
            )
            .expect("write config");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect(
                    "prometheus must be installed (the test command installs Debian's prometheus)",
                );
            let mut prometheus = Prometheus {
                child,
                base: format!("http://127.0.0.1:{port}"),
                dir,
                client: crate::support::http(),
            };
            match prometheus.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return prometheus,
                Err(e) => {
                    last_log = format!("{e}\n{}", prometheus.log());
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("Prometheus did not start:\n{last_log}");
    }

    async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("Prometheus exited with {status}"));
            }
            if let Ok(r) = self
                .client
                .get(format!("{}/-/ready", self.base))
                .send()
                .await
            {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("Prometheus not ready within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What Prometheus logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path and return its `data`, or the error Prometheus gave.
    pub async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .map_err(|e| format!("{path_and_query}: {e}"))?;
        let text = response
            .text()
            .await
            .map_err(|e| format!("{path_and_query}: {e}"))?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{path_and_query}: answer is not JSON: {e}: {text}"))?;
        if body["status"] != "success" {
            return Err(format!(
                "{}: {}",
                body["errorType"].as_str().unwrap_or("error"),
                body["error"].as_str().unwrap_or("")
            ));
        }
        Ok(body["data"].clone())
    }

    /// An instant query at the current time: its samples (a scalar becomes one
    /// sample without labels), or Prometheus' error.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await?;
        let value = |v: &Value| -> f64 {
            // Prometheus writes values as strings: "1", "NaN", "+Inf".
            match v[1].as_str().unwrap_or("NaN") {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                s => s.parse().unwrap_or(f64::NAN),
            }
        };
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Sample {
                    labels: s["metric"].as_object().cloned().unwrap_or_default(),
                    value: value(&s["value"]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: serde_json::Map::new(),
                value: value(&data["result"]),
            }],
            other => return Err(format!("unexpected result type {other:?} for {expr}")),
        })
    }

    /// Polls `expr` until it returns at least one sample, or fails at the deadline.
    pub async fn wait_for(&self, expr: &str, within: Duration) -> Vec<Sample> {
        let deadline = Instant::now() + within;
        loop {
            match self.query(expr).await {
                Ok(samples) if !samples.is_empty() => return samples,
                Ok(_) => {}
                Err(e) => panic!("{expr}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "`{expr}` returned nothing within {within:?}; Prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
