//! Reloading in one process: `POST /-/reload` against `app::run` applies a good
//! config (WABAs, static flows, granularities, schedules, Graph settings) and
//! refuses a bad one whole; a rotated token file is read again after Graph
//! rejects the token; the web config file is read again with the config file,
//! both or neither. SIGHUP and the binary are in `lifecycle`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flows_exporter::app::DEMO_STATIC_FLOW;
use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::{Exporter, Job};
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::web::WebConfig;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// Never fires during a test: 1 January, midnight.
const NEVER: &str = "0 0 0 1 1 *";

/// A directory for a test's config file and token file (holding `token`).
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(token: &str) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("token"), &format!("{token}\n"));
        Files { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn token(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Writes the config file; its token comes from the token file.
    fn write_config(&self, text: &str) -> PathBuf {
        write(&self.config(), text);
        self.config()
    }
}

/// A config file's text: `graph_extra` in `[graph]` (the token file goes
/// there), `wabas`, then `extra` (static flows, granularities).
fn config_file(base_url: &str, graph_extra: &str, wabas: &[&str], extra: &str) -> String {
    let mut text = format!(
        "[graph]\nbase_url = \"{base_url}\"\nmax_concurrency = 1\nmax_retries = 0\ntimeout = \"5s\"\n{graph_extra}\n[discovery]\nschedule = \"{NEVER}\"\n"
    );
    for w in wabas {
        text.push_str(&format!("[[wabas]]\nid = \"{w}\"\n"));
    }
    text.push_str(extra);
    text
}

fn granularities(hour: &str, day: Option<&str>, lifetime: Option<&str>) -> String {
    let one = |g: &str, schedule: Option<&str>| match schedule {
        Some(s) => format!("[granularity.{g}]\nschedule = \"{s}\"\n"),
        None => format!("[granularity.{g}]\nenabled = false\n"),
    };
    format!(
        "{}{}{}",
        one("hour", Some(hour)),
        one("day", day),
        one("lifetime", lifetime)
    )
}

/// An exporter whose config was read from `path`, as `serve` makes it.
fn exporter_from(path: &Path, token: &str) -> Arc<Exporter> {
    let config = Config::load(path).expect("test config is valid");
    Exporter::new(config, Secret::new(token), Clock::fixed(now())).expect("exporter")
}

/// `app::run` on port 0, stopped when dropped.
struct App {
    base: String,
    stop: CancellationToken,
    run: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl App {
    async fn start(exporter: Arc<Exporter>) -> App {
        App::start_web(exporter, WebConfig::default()).await
    }

    /// `app::run_web`: the server secured as `web` says, reloaded with the config.
    async fn start_web(exporter: Arc<Exporter>, web: WebConfig) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let run = tokio::spawn(flows_exporter::app::run_web(
            exporter.clone(),
            listener,
            Arc::new(web),
            stop.clone(),
        ));
        wait_for("the first poll", Duration::from_secs(20), || {
            exporter.is_ready()
        })
        .await;
        App {
            base,
            stop,
            run: Some(run),
        }
    }

    async fn post_reload(&self) -> (u16, String) {
        self.post_reload_as(&http(), None).await
    }

    /// `POST /-/reload` with `client` and, if given, basic-auth credentials.
    async fn post_reload_as(
        &self,
        client: &reqwest::Client,
        creds: Option<(&str, &str)>,
    ) -> (u16, String) {
        let mut req = client.post(format!("{}/-/reload", self.base));
        if let Some((user, password)) = creds {
            req = req.basic_auth(user, Some(password));
        }
        let r = req.send().await.expect("POST /-/reload");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// The status of `GET /metrics` as `user` with `password`.
    async fn metrics_as(&self, client: &reqwest::Client, user: &str, password: &str) -> u16 {
        client
            .get(format!("{}/metrics", self.base))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("GET /metrics")
            .status()
            .as_u16()
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(run) = self.run.take() {
            tokio::time::timeout(Duration::from_secs(15), run)
                .await
                .expect("stops within the bound")
                .expect("task")
                .expect("run ends without error");
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

fn flow_info_of(text: &str, flow: &str) -> bool {
    samples(text, "whatsapp_flows_flow_info{")
        .iter()
        .any(|l| l.contains(&format!("flow_id=\"{flow}\"")))
}

fn flows_of(sb: &RunningSandbox, waba: &str) -> Vec<String> {
    sb.sandbox
        .flows()
        .into_iter()
        .filter(|f| f.waba_id == waba)
        .map(|f| f.id)
        .collect()
}

/// The per-flow part of `/metrics` (what the last render made), without the
/// live self-metrics.
fn rendered(ex: &Exporter) -> bytes::Bytes {
    ex.scrape(false).parts[0].clone()
}

fn series_with(text: &str, needle: &str) -> usize {
    samples(text, "whatsapp_flows_")
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn reload_value(text: &str, series: &str) -> Option<f64> {
    value(text, &format!("whatsapp_flows_exporter_{series}"))
}

/// Whether the last reload succeeded, and how many reloads ended in `result`.
fn assert_reloads(text: &str, last_successful: bool, result: &str, count: f64) {
    assert_eq!(
        reload_value(text, "config_last_reload_successful"),
        Some(if last_successful { 1.0 } else { 0.0 })
    );
    assert_eq!(
        reload_value(
            text,
            &format!("config_reloads_total{{result=\"{result}\"}}")
        ),
        Some(count),
        "{result} reloads"
    );
}

fn polls(text: &str, poll: &str) -> f64 {
    value(
        text,
        &format!("whatsapp_flows_exporter_polls_total{{poll=\"{poll}\",result=\"success\"}}"),
    )
    .unwrap_or(0.0)
}

fn token_file(path: &Path) -> String {
    format!("access_token_file = \"{}\"", path.display())
}

#[tokio::test]
async fn post_reload_applies_wabas_static_flows_granularities_and_schedules() {
    let sb = start_sandbox(flows_exporter::app::demo_sandbox(Clock::fixed(now()))).await;
    let token = flows_exporter::app::DEMO_TOKEN;
    let files = Files::new(token);
    let graph = token_file(&files.token());
    let path = files.write_config(&config_file(
        &sb.base_url,
        &graph,
        &[WABA_1],
        &granularities(NEVER, Some(NEVER), None),
    ));
    let ex = exporter_from(&path, token);
    let app = App::start(ex.clone()).await;
    let before = scrape(&ex);
    let waba_2_flows = flows_of(&sb, WABA_2);
    assert!(!waba_2_flows.is_empty());
    assert!(!waba_2_flows.iter().any(|f| flow_info_of(&before, f)));
    assert!(!flow_info_of(&before, DEMO_STATIC_FLOW));
    assert!(series_with(&before, "granularity=\"day\"") > 0);
    assert_eq!(series_with(&before, "granularity=\"lifetime\""), 0);
    let hour_polls = polls(&before, "hour");

    // A second WABA and a static flow; day off, lifetime on; hour every second.
    write(
        &path,
        &config_file(
            &sb.base_url,
            &graph,
            &[WABA_1, WABA_2],
            &format!(
                "[[flows]]\nid = \"{DEMO_STATIC_FLOW}\"\nname = \"Partner referral\"\n{}",
                granularities("* * * * * *", None, Some(NEVER))
            ),
        ),
    );
    assert_eq!(app.post_reload().await, (200, "reloaded\n".into()));

    // Disabled: gone with the reload itself, not at some later poll.
    let text = scrape(&ex);
    assert_eq!(series_with(&text, "granularity=\"day\""), 0, "{text}");
    assert_reloads(&text, true, "success", 1.0);

    // The discovery after the reload lists the new WABA and adds the static
    // flow; the newly enabled granularity is polled without waiting for its
    // schedule; the new hour schedule ticks.
    wait_for(
        "the reload's discovery and polls",
        Duration::from_secs(20),
        || {
            let text = scrape(&ex);
            waba_2_flows.iter().all(|f| flow_info_of(&text, f))
                && flow_info_of(&text, DEMO_STATIC_FLOW)
                && series_with(&text, "granularity=\"lifetime\"") > 0
                && polls(&text, "hour") >= hour_polls + 2.0
        },
    )
    .await;
    let text = scrape(&ex);
    assert!(text.contains("source=\"static\""));
    assert_eq!(series_with(&text, "granularity=\"day\""), 0);

    // And back: WABA 2 and the static flow removed; their flows go with the
    // next discovery, which the reload runs.
    write(
        &path,
        &config_file(
            &sb.base_url,
            &graph,
            &[WABA_1],
            &granularities(NEVER, Some(NEVER), None),
        ),
    );
    assert_eq!(app.post_reload().await.0, 200);
    wait_for("the removed flows to go", Duration::from_secs(20), || {
        let text = scrape(&ex);
        !waba_2_flows.iter().any(|f| flow_info_of(&text, f))
            && !flow_info_of(&text, DEMO_STATIC_FLOW)
            && series_with(&text, "granularity=\"lifetime\"") == 0
    })
    .await;
    let text = scrape(&ex);
    assert!(
        !text.contains(&format!("waba_id=\"{WABA_2}\"")),
        "no series of the removed WABA is left"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bad_config_is_refused_whole_with_its_key_and_the_old_one_kept() {
    let sb = realistic().await;
    let files = Files::new(TOKEN);
    let graph = token_file(&files.token());
    let good = config_file(
        &sb.base_url,
        &graph,
        &[WABA_1],
        &granularities(NEVER, Some(NEVER), Some(NEVER)),
    );
    let path = files.write_config(&good);
    let ex = exporter_from(&path, TOKEN);
    let app = App::start(ex.clone()).await;
    let before = rendered(&ex);
    let loaded_at = reload_value(&scrape(&ex), "config_last_reload_success_timestamp_seconds");
    assert!(
        loaded_at.is_some_and(|t| t > 0.0),
        "start-up counts as a load"
    );
    let jobs = ex.jobs();

    // Each of these would change what is polled if it were half applied.
    let missing = files.dir.path().join("no-such-token");
    let bad = [
        (
            config_file(
                &sb.base_url,
                &format!("{graph}\nbogus = 1"),
                &[WABA_1, WABA_2],
                &granularities("* * * * * *", None, None),
            ),
            "graph.bogus",
        ),
        (
            config_file(
                &sb.base_url,
                &graph,
                &[WABA_1, WABA_2],
                &granularities("0 99 * * * *", None, None),
            ),
            "granularity.hour.schedule",
        ),
        (
            config_file(
                &sb.base_url,
                &token_file(&missing),
                &[WABA_1, WABA_2],
                &granularities(NEVER, None, None),
            ),
            "graph.access_token_file",
        ),
        ("[[wabas]]\nid = \"1\"\n[server\n".to_owned(), "TOML"),
    ];
    for (i, (text, key)) in bad.iter().enumerate() {
        write(&path, text);
        let (status, body) = app.post_reload().await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains(key) && body.contains(&path.display().to_string()),
            "the answer names the file and `{key}`: {body}"
        );
        let text = scrape(&ex);
        assert_eq!(
            reload_value(&text, "config_last_reload_successful"),
            Some(0.0)
        );
        assert_eq!(
            reload_value(&text, "config_reloads_total{result=\"failure\"}"),
            Some(i as f64 + 1.0)
        );
        assert_eq!(
            reload_value(&text, "config_last_reload_success_timestamp_seconds"),
            loaded_at
        );
        assert_eq!(rendered(&ex), before, "nothing changed after `{key}`");
        assert_eq!(ex.jobs(), jobs, "nothing rescheduled after `{key}`");
    }
    assert_eq!(ex.config().wabas, vec![WABA_1.to_owned()]);

    let r = http()
        .get(format!("{}/-/reload", app.base))
        .send()
        .await
        .expect("GET /-/reload");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");

    write(&path, &good);
    assert_eq!(app.post_reload().await.0, 200);
    let text = scrape(&ex);
    assert_reloads(&text, true, "success", 1.0);
    app.stop().await;
}

#[tokio::test]
async fn a_config_not_read_from_a_file_cannot_be_reloaded() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    let server = start_server(ex.clone()).await;
    let r = http()
        .post(format!("{}/-/reload", server.base))
        .send()
        .await
        .expect("POST /-/reload");
    assert_eq!(r.status(), 500);
    assert!(
        r.text()
            .await
            .expect("body")
            .contains("not read from a file")
    );
    assert_eq!(
        reload_value(&scrape(&ex), "config_last_reload_successful"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_poll_in_flight_finishes_with_the_config_it_started_with() {
    let old = realistic().await;
    let new = realistic().await;
    let files = Files::new(TOKEN);
    let graph = token_file(&files.token());
    let text = |base: &str| {
        config_file(
            base,
            &graph,
            &[WABA_1],
            &granularities(NEVER, Some(NEVER), Some(NEVER)),
        )
    };
    let path = files.write_config(&text(&old.base_url));
    let ex = exporter_from(&path, TOKEN);
    ex.discover().await;
    let polled = ex.snapshot().polled_flows().len();
    assert!(polled > 1);
    old.sandbox.set_latency(Duration::from_millis(20));

    let (ran, ()) = tokio::join!(ex.run_job(Job::Poll(Granularity::Hour)), async {
        wait_for("the poll to start", Duration::from_secs(10), || {
            !old.sandbox.metric_requests().is_empty()
        })
        .await;
        write(&path, &text(&new.base_url));
        ex.reload().expect("reload");
    });
    assert!(ran);
    assert_eq!(
        old.sandbox.metric_requests().len(),
        polled * 5,
        "the poll made all its calls to the Graph it started with"
    );
    assert!(new.sandbox.metric_requests().is_empty());

    ex.poll(Granularity::Hour).await;
    assert_eq!(new.sandbox.metric_requests().len(), polled * 5);
    assert_eq!(old.sandbox.metric_requests().len(), polled * 5);
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again_after_graph_rejects_the_token() {
    let (_guard, logs) = capture_logs();
    let sb = realistic().await;
    let files = Files::new(TOKEN);
    let token_path = files.token();
    let path = files.write_config(&config_file(
        &sb.base_url,
        &token_file(&token_path),
        &[WABA_1, WABA_2],
        &granularities(NEVER, Some(NEVER), Some(NEVER)),
    ));
    let config = Config::load(&path).expect("valid");
    let token = config.graph.token.load().expect("token file");
    let ex = Exporter::new(config, token, Clock::fixed(now())).expect("exporter");
    ex.startup().await;
    let flow = ex.snapshot().polled_flows()[0].id.clone();
    let stale = |ex: &Exporter| {
        cell(
            &scrape(ex),
            "whatsapp_flows_data_stale",
            &flow,
            "hour",
            "endpoint_request_count",
        )
    };
    let rejected = |ex: &Exporter| {
        value(
            &scrape(ex),
            "whatsapp_flows_exporter_graph_requests_total{endpoint=\"metric\",outcome=\"token\"}",
        )
        .unwrap_or(0.0)
    };
    let token_valid = |ex: &Exporter| value(&scrape(ex), "whatsapp_flows_exporter_token_valid");
    assert_eq!(stale(&ex), Some(0.0));

    // Rotated in Graph and in the file: the poll meets one 190, reads the
    // file, and runs again with the new token at once.
    let first = "EAArotated-first-Kd2";
    sb.sandbox.set_token(first);
    write(&token_path, first);
    assert!(ex.run_job(Job::Poll(Granularity::Hour)).await);
    assert_eq!(rejected(&ex), 1.0, "one call met the old token");
    assert_eq!(token_valid(&ex), Some(1.0));
    assert_eq!(stale(&ex), Some(0.0), "fresh without waiting for a tick");

    // Rotated in Graph only: the file holds the token Graph rejects, so the
    // poll halts as before and is not run again.
    let second = "EAArotated-second-Pw7";
    sb.sandbox.set_token(second);
    let calls = sb.sandbox.request_count();
    assert!(ex.run_job(Job::Poll(Granularity::Hour)).await);
    assert_eq!(
        sb.sandbox.request_count(),
        calls + 1,
        "halted at the first 190"
    );
    assert_eq!(rejected(&ex), 2.0);
    assert_eq!(token_valid(&ex), Some(0.0));
    assert_eq!(stale(&ex), Some(1.0), "last good value kept, marked stale");

    // The file catches up: the next job reads it before calling Graph.
    write(&token_path, second);
    assert!(ex.run_job(Job::Poll(Granularity::Hour)).await);
    assert_eq!(rejected(&ex), 2.0, "no call with the rejected token");
    assert_eq!(token_valid(&ex), Some(1.0));
    assert_eq!(stale(&ex), Some(0.0));

    // A reload reads the token again too.
    let third = "EAArotated-third-Hq4";
    sb.sandbox.set_token(third);
    write(&token_path, third);
    ex.reload().expect("reload");
    ex.poll(Granularity::Hour).await;
    assert_eq!(rejected(&ex), 2.0);
    assert_eq!(stale(&ex), Some(0.0));

    let logs = logs.text();
    assert!(logs.contains("holds a new token"), "{logs}");
    for t in [TOKEN, first, second, third] {
        assert!(!logs.contains(t), "a token leaked into the logs:\n{logs}");
        assert!(!scrape(&ex).contains(t));
    }
    assert!(!format!("{ex:?}").contains(third));
}

/// A web config with one basic-auth user (bcrypt cost 4: fast to check).
fn web_user(user: &str, password: &str) -> String {
    let hash = bcrypt::hash_with_salt(password, 4, [9; 16]).expect("bcrypt");
    format!("basic_auth_users:\n  {user}: '{hash}'\n")
}

/// A config file and a web config file beside it, the exporter started on
/// them with `alice` as the one user, and one client (so requests reuse a
/// kept-alive connection, as a scraper's do).
async fn start_with_web(
    sb: &RunningSandbox,
) -> (Files, PathBuf, Arc<Exporter>, App, reqwest::Client) {
    let files = Files::new(TOKEN);
    let path = files.write_config(&config_file(
        &sb.base_url,
        &token_file(&files.token()),
        &[WABA_1],
        &granularities(NEVER, None, None),
    ));
    let web_path = files.dir.path().join("web.yml");
    write(&web_path, &web_user("alice", "alice-pass"));
    let ex = exporter_from(&path, TOKEN);
    let web = WebConfig::load(&web_path).expect("valid web config");
    let app = App::start_web(ex.clone(), web).await;
    (files, web_path, ex, app, http())
}

/// A reload swaps the basic-auth users: the removed user is refused at once
/// (on the same kept-alive connection, past its cached success), the new one
/// let in; a changed hash refuses the old password, cached before.
#[tokio::test]
async fn a_reload_swaps_basic_auth_users_and_refuses_the_removed_one_at_once() {
    let sb = realistic().await;
    let (_files, web_path, ex, app, client) = start_with_web(&sb).await;
    assert_eq!(app.metrics_as(&client, "alice", "alice-pass").await, 200);
    assert_eq!(app.metrics_as(&client, "bob", "bob-pass").await, 401);

    write(&web_path, &web_user("bob", "bob-pass"));
    let answer = app
        .post_reload_as(&client, Some(("alice", "alice-pass")))
        .await;
    assert_eq!(answer, (200, "reloaded\n".to_owned()));
    assert_eq!(app.metrics_as(&client, "alice", "alice-pass").await, 401);
    assert_eq!(app.metrics_as(&client, "bob", "bob-pass").await, 200);

    write(&web_path, &web_user("bob", "new-bob-pass"));
    let answer = app.post_reload_as(&client, Some(("bob", "bob-pass"))).await;
    assert_eq!(answer.0, 200, "{answer:?}");
    assert_eq!(app.metrics_as(&client, "bob", "bob-pass").await, 401);
    assert_eq!(app.metrics_as(&client, "bob", "new-bob-pass").await, 200);

    let text = scrape(&ex);
    assert_reloads(&text, true, "success", 2.0);
    app.stop().await;
}

/// A bad web config refuses the whole reload, naming the web file and key:
/// the config file's changes in the same reload are not applied and the old
/// users still get in. A bad config file refuses a good web config the same
/// way. Once both are good, both apply.
#[tokio::test]
async fn a_bad_web_config_refuses_the_config_file_too_and_the_other_way_round() {
    let sb = realistic().await;
    let (files, web_path, ex, app, client) = start_with_web(&sb).await;
    let alice = Some(("alice", "alice-pass"));
    let both_wabas = |graph_extra: &str| {
        config_file(
            &sb.base_url,
            &format!("{}\n{graph_extra}", token_file(&files.token())),
            &[WABA_1, WABA_2],
            &granularities(NEVER, None, None),
        )
    };

    // The config file is good, the web config has an unknown key.
    files.write_config(&both_wabas(""));
    write(
        &web_path,
        &format!("{}basic_auth_userz: {{}}\n", web_user("bob", "bob-pass")),
    );
    let (status, body) = app.post_reload_as(&client, alice).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains(&web_path.display().to_string()) && body.contains("key `basic_auth_userz`"),
        "names the web config file and the key: {body}"
    );
    assert_eq!(
        ex.config().wabas,
        [WABA_1],
        "the config file was not applied"
    );
    assert_eq!(app.metrics_as(&client, "alice", "alice-pass").await, 200);
    assert_eq!(app.metrics_as(&client, "bob", "bob-pass").await, 401);
    let text = scrape(&ex);
    assert_reloads(&text, false, "failure", 1.0);

    // The web config is good, the config file is not.
    write(&web_path, &web_user("bob", "bob-pass"));
    files.write_config(&both_wabas("bogus = 1"));
    let (status, body) = app.post_reload_as(&client, alice).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("config.toml") && body.contains("key `graph.bogus`"),
        "{body}"
    );
    assert_eq!(app.metrics_as(&client, "alice", "alice-pass").await, 200);
    assert_eq!(app.metrics_as(&client, "bob", "bob-pass").await, 401);
    assert_eq!(
        reload_value(&scrape(&ex), "config_reloads_total{result=\"failure\"}"),
        Some(2.0)
    );

    // Both good: both apply.
    files.write_config(&both_wabas(""));
    assert_eq!(app.post_reload_as(&client, alice).await.0, 200);
    assert_eq!(ex.config().wabas, [WABA_1, WABA_2]);
    assert_eq!(app.metrics_as(&client, "alice", "alice-pass").await, 401);
    assert_eq!(app.metrics_as(&client, "bob", "bob-pass").await, 200);
    assert_eq!(
        reload_value(&scrape(&ex), "config_last_reload_successful"),
        Some(1.0)
    );
    app.stop().await;
}

/// A reload that changes nothing succeeds but wakes no follower: no
/// rescheduling and no discovery, so `POST /-/reload` in a loop costs no Graph
/// call. A real change does wake it.
#[tokio::test]
async fn a_reload_that_changes_nothing_wakes_no_one() {
    let sb = realistic().await;
    let files = Files::new(TOKEN);
    let text = config_file(
        &sb.base_url,
        &token_file(&files.token()),
        &[WABA_1],
        &granularities(NEVER, None, None),
    );
    let path = files.write_config(&text);
    let ex = exporter_from(&path, TOKEN);
    let mut followed = ex.subscribe();
    followed.mark_unchanged();

    ex.reload().expect("same file");
    assert!(!followed.has_changed().expect("sender alive"));
    let text = scrape(&ex);
    assert_reloads(&text, true, "success", 1.0);

    write(
        &path,
        &config_file(
            &sb.base_url,
            &token_file(&files.token()),
            &[WABA_1, WABA_2],
            &granularities(NEVER, None, None),
        ),
    );
    ex.reload().expect("a second WABA");
    assert!(followed.has_changed().expect("sender alive"));
}
