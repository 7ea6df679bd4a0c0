//! The shared [`Store`]: PostgreSQL, for several replicas that receive
//! webhooks behind one load balancer. Every writer takes one transaction-level
//! advisory lock, reads the rows a payload touches, plans against them
//! ([`Store::commit_planned`]) and writes in the same transaction, so an event
//! is applied once whichever replica got it, and duplicates that race are
//! told apart by the database. Outbox items are claimed with `FOR UPDATE
//! SKIP LOCKED` and a lease, so each goes out from one replica. Migrations
//! are numbered in `schema_version`.

use std::sync::Mutex;

use postgres::{Client, GenericClient, NoTls};

use super::{OutboxItem, OutboxSummary, OutboxUpdate, Pruned, Raw, Store, StoreError};
use crate::webhook::payload::{AlertKind, Detail};
use crate::webhook::state::{AlertRecord, Plan, State, StatusRecord, Touched};

/// The schema version this build writes.
const SCHEMA_VERSION: i32 = 1;
/// The advisory lock every writer takes (any constant shared by all replicas).
const WRITE_LOCK: i64 = 0x666c_6f77_7365_7870;
/// How long a claimed outbox item is left to the replica that claimed it.
const LEASE_SECONDS: i64 = 120;

const SCHEMA: &str = "
CREATE TABLE raw_events (id BIGSERIAL PRIMARY KEY, received_at BIGINT NOT NULL,
    understood BOOLEAN NOT NULL, body BYTEA NOT NULL);
CREATE INDEX raw_events_received_at ON raw_events (received_at);
CREATE TABLE seen (key TEXT PRIMARY KEY, received_at BIGINT NOT NULL);
CREATE INDEX seen_received_at ON seen (received_at);
CREATE TABLE alerts (flow_id TEXT NOT NULL, alert TEXT NOT NULL, active BOOLEAN NOT NULL,
    threshold DOUBLE PRECISION, time BIGINT NOT NULL, detail TEXT NOT NULL,
    PRIMARY KEY (flow_id, alert));
CREATE TABLE statuses (flow_id TEXT PRIMARY KEY, status TEXT NOT NULL, time BIGINT NOT NULL);
CREATE TABLE status_changes (flow_id TEXT NOT NULL, from_status TEXT NOT NULL,
    to_status TEXT NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (flow_id, from_status, to_status));
CREATE TABLE expiry_warnings (flow_id TEXT PRIMARY KEY, count BIGINT NOT NULL);
CREATE TABLE wabas (waba_id TEXT PRIMARY KEY, last_received BIGINT NOT NULL);
CREATE TABLE calls (page_id TEXT NOT NULL, call_id TEXT NOT NULL, record TEXT NOT NULL,
    last_seen BIGINT NOT NULL, done BOOLEAN NOT NULL, PRIMARY KEY (page_id, call_id));
CREATE TABLE pages (page_id TEXT PRIMARY KEY, stats TEXT NOT NULL);
CREATE TABLE outbox (id BIGSERIAL PRIMARY KEY, page_id TEXT NOT NULL, call_id TEXT NOT NULL,
    body TEXT NOT NULL, ended_at BIGINT NOT NULL, received_at BIGINT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_at BIGINT NOT NULL, last_result TEXT NOT NULL,
    UNIQUE (page_id, call_id));
CREATE INDEX outbox_due ON outbox (state, next_at);
";

/// A PostgreSQL database shared by replicas.
pub struct Postgres {
    /// `None` only while dropping.
    client: Mutex<Option<Client>>,
    /// `host:port/db`, for logs (no user, no password).
    target: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn fail(what: &str) -> impl Fn(postgres::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

/// Runs `f` on a thread of its own: the `postgres` client drives a runtime
/// of its own, which may not run (or be dropped) on a thread that drives
/// another, and the store is called from both kinds of thread.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(t) => t,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        off_runtime(move || drop(client));
    }
}

impl Postgres {
    /// Runs `f` with the connection, off any runtime (see [`off_runtime`]).
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        let mut guard = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let client = guard
            .as_mut()
            .ok_or_else(|| StoreError("the connection is closed".into()))?;
        off_runtime(move || f(client))
    }

    /// Connects (without TLS: use it on a private network or a local
    /// socket) and brings the schema up to date. Errors never show the URL's
    /// password.
    pub fn connect(url: &str) -> Result<Postgres, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError(format!("the storage URL is not a PostgreSQL URL: {e}")))?;
        let target = describe(&config);
        let client = off_runtime(|| -> Result<Client, StoreError> {
            let mut client = config
                .connect(NoTls)
                .map_err(|e| StoreError(format!("cannot connect to {target}: {e}")))?;
            migrate(&mut client).map_err(|e| StoreError(format!("{target}: {e}")))?;
            Ok(client)
        })?;
        Ok(Postgres {
            client: Mutex::new(Some(client)),
            target,
        })
    }
}

fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{host}:{port}/{}",
        config.get_dbname().unwrap_or("")
    )
}

fn migrate(client: &mut Client) -> Result<(), String> {
    let mut tx = client.transaction().map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map_err(|e| e.to_string())?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(|e| e.to_string())?;
    let version: Option<i32> = tx
        .query_opt("SELECT max(version) FROM schema_version", &[])
        .map_err(|e| e.to_string())?
        .and_then(|r| r.get(0));
    match version {
        None => {
            tx.batch_execute(SCHEMA)
                .map_err(|e| format!("cannot create the schema: {e}"))?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(|e| e.to_string())?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "schema version {v} was written by a newer flows-exporter (this one knows {SCHEMA_VERSION})"
            ));
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Writes `raw` and `plan` (the same rules as the embedded store).
fn write(tx: &mut impl GenericClient, raw: Option<Raw<'_>>, plan: &Plan) -> Result<(), StoreError> {
    if let Some(raw) = raw {
        tx.execute(
            "INSERT INTO raw_events (received_at, understood, body) VALUES ($1, $2, $3)",
            &[&raw.received_at, &raw.understood, &raw.body],
        )
        .map_err(fail("cannot store the payload"))?;
    }
    for key in &plan.seen {
        tx.execute(
            "INSERT INTO seen (key, received_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[key, &plan.received_at],
        )
        .map_err(fail("seen"))?;
    }
    for (flow, kind, r) in &plan.alerts {
        let detail =
            serde_json::to_string(&r.detail).map_err(|e| StoreError(format!("alerts: {e}")))?;
        tx.execute(
            "INSERT INTO alerts (flow_id, alert, active, threshold, time, detail) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (flow_id, alert) DO UPDATE SET active = excluded.active, threshold = excluded.threshold,
               time = excluded.time, detail = excluded.detail WHERE excluded.time >= alerts.time",
            &[flow, &kind.label(), &r.active, &r.threshold, &r.time, &detail],
        )
        .map_err(fail("alerts"))?;
    }
    for (flow, r) in &plan.statuses {
        tx.execute(
            "INSERT INTO statuses (flow_id, status, time) VALUES ($1, $2, $3)
             ON CONFLICT (flow_id) DO UPDATE SET status = excluded.status, time = excluded.time
             WHERE excluded.time >= statuses.time",
            &[flow, &r.status, &r.time],
        )
        .map_err(fail("statuses"))?;
    }
    for (flow, from, to) in &plan.status_changes {
        tx.execute(
            "INSERT INTO status_changes (flow_id, from_status, to_status, count) VALUES ($1, $2, $3, 1)
             ON CONFLICT (flow_id, from_status, to_status) DO UPDATE SET count = status_changes.count + 1",
            &[flow, from, to],
        )
        .map_err(fail("status_changes"))?;
    }
    for flow in &plan.expiry_warnings {
        tx.execute(
            "INSERT INTO expiry_warnings (flow_id, count) VALUES ($1, 1)
             ON CONFLICT (flow_id) DO UPDATE SET count = expiry_warnings.count + 1",
            &[flow],
        )
        .map_err(fail("expiry_warnings"))?;
    }
    for id in &plan.wabas {
        tx.execute(
            "INSERT INTO wabas (waba_id, last_received) VALUES ($1, $2)
             ON CONFLICT (waba_id) DO UPDATE SET last_received = GREATEST(wabas.last_received, excluded.last_received)",
            &[id, &plan.received_at],
        )
        .map_err(fail("wabas"))?;
    }
    for ((page, id), record) in &plan.calls {
        let json = serde_json::to_string(record).map_err(|e| StoreError(format!("calls: {e}")))?;
        tx.execute(
            "INSERT INTO calls (page_id, call_id, record, last_seen, done) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (page_id, call_id) DO UPDATE SET record = excluded.record,
               last_seen = excluded.last_seen, done = excluded.done",
            &[page, id, &json, &record.last_seen, &record.is_done()],
        )
        .map_err(fail("calls"))?;
    }
    for (id, stats) in &plan.pages {
        let json = serde_json::to_string(stats).map_err(|e| StoreError(format!("pages: {e}")))?;
        tx.execute(
            "INSERT INTO pages (page_id, stats) VALUES ($1, $2)
             ON CONFLICT (page_id) DO UPDATE SET stats = excluded.stats",
            &[id, &json],
        )
        .map_err(fail("pages"))?;
    }
    if let Some(intake) = &plan.intake {
        let body = crate::callmetrics::forward_body(&intake.metrics).to_string();
        tx.execute(
            "INSERT INTO outbox (page_id, call_id, body, ended_at, received_at, state, attempts, next_at, last_result)
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $5, '')",
            &[&intake.page_id, &intake.metrics.call_id, &body, &intake.metrics.call_ended_time, &plan.received_at],
        )
        .map_err(fail("outbox"))?;
    }
    Ok(())
}

/// Reads every row, or (with `touched`) the rows it names; the duplicate
/// memory only for `touched` keys (the database answers duplicates).
fn read(tx: &mut impl GenericClient, touched: Option<&Touched>) -> Result<State, StoreError> {
    let mut state = State::default();
    let (flows, pages): (Vec<String>, Vec<String>) = match touched {
        Some(t) => (t.flows.clone(), t.pages.clone()),
        None => (Vec::new(), Vec::new()),
    };
    let all = touched.is_none();
    let alerts = if all {
        tx.query("SELECT flow_id, alert, active, threshold, time, detail FROM alerts", &[])
    } else {
        tx.query(
            "SELECT flow_id, alert, active, threshold, time, detail FROM alerts WHERE flow_id = ANY($1)",
            &[&flows],
        )
    }
    .map_err(fail("alerts"))?;
    for r in alerts {
        let (flow, alert): (String, String) = (r.get(0), r.get(1));
        let Some(kind) = AlertKind::from_label(&alert) else {
            continue;
        };
        let detail: Detail = serde_json::from_str(r.get::<_, &str>(5))
            .map_err(|e| StoreError(format!("alerts: detail of {flow} {alert}: {e}")))?;
        state.alerts.insert(
            (flow, kind),
            AlertRecord {
                active: r.get(2),
                threshold: r.get(3),
                time: r.get(4),
                detail,
            },
        );
    }
    let statuses = if all {
        tx.query("SELECT flow_id, status, time FROM statuses", &[])
    } else {
        tx.query(
            "SELECT flow_id, status, time FROM statuses WHERE flow_id = ANY($1)",
            &[&flows],
        )
    }
    .map_err(fail("statuses"))?;
    for r in statuses {
        state.statuses.insert(
            r.get(0),
            StatusRecord {
                status: r.get(1),
                time: r.get(2),
            },
        );
    }
    if all {
        for r in tx
            .query(
                "SELECT flow_id, from_status, to_status, count FROM status_changes",
                &[],
            )
            .map_err(fail("status_changes"))?
        {
            state.status_changes.insert(
                (r.get(0), r.get(1), r.get(2)),
                r.get::<_, i64>(3).max(0) as u64,
            );
        }
        for r in tx
            .query("SELECT flow_id, count FROM expiry_warnings", &[])
            .map_err(fail("expiry_warnings"))?
        {
            state
                .expiry_warnings
                .insert(r.get(0), r.get::<_, i64>(1).max(0) as u64);
        }
        for r in tx
            .query("SELECT waba_id, last_received FROM wabas", &[])
            .map_err(fail("wabas"))?
        {
            state.last_received.insert(r.get(0), r.get(1));
        }
    }
    let calls = match touched {
        None => tx.query("SELECT page_id, call_id, record FROM calls", &[]),
        Some(t) => {
            let (p, c): (Vec<String>, Vec<String>) = t.calls.iter().cloned().unzip();
            tx.query(
                "SELECT page_id, call_id, record FROM calls
                 WHERE (page_id, call_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                &[&p, &c],
            )
        }
    }
    .map_err(fail("calls"))?;
    for r in calls {
        let (page, id): (String, String) = (r.get(0), r.get(1));
        let record = serde_json::from_str(r.get::<_, &str>(2))
            .map_err(|e| StoreError(format!("calls: {page} {id}: {e}")))?;
        state.calls.insert((page, id), record);
    }
    let page_rows = if all {
        tx.query("SELECT page_id, stats FROM pages", &[])
    } else {
        tx.query(
            "SELECT page_id, stats FROM pages WHERE page_id = ANY($1)",
            &[&pages],
        )
    }
    .map_err(fail("pages"))?;
    for r in page_rows {
        let page: String = r.get(0);
        let stats = serde_json::from_str(r.get::<_, &str>(1))
            .map_err(|e| StoreError(format!("pages: {page}: {e}")))?;
        state.pages.insert(page, stats);
    }
    let intakes = match touched {
        None => tx.query("SELECT page_id, call_id FROM outbox", &[]),
        Some(t) => {
            let (p, c): (Vec<String>, Vec<String>) = t.calls.iter().cloned().unzip();
            tx.query(
                "SELECT page_id, call_id FROM outbox
                 WHERE (page_id, call_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                &[&p, &c],
            )
        }
    }
    .map_err(fail("outbox"))?;
    for r in intakes {
        state.intakes.insert((r.get(0), r.get(1)));
    }
    if let Some(t) = touched {
        for r in tx
            .query(
                "SELECT key, received_at FROM seen WHERE key = ANY($1)",
                &[&t.keys],
            )
            .map_err(fail("seen"))?
        {
            state.seen.insert(r.get(0), r.get(1));
        }
    }
    Ok(state)
}

impl Store for Postgres {
    fn commit(&self, raw: Option<Raw<'_>>, plan: &Plan) -> Result<(), StoreError> {
        self.with(|client| {
            let mut tx = client.transaction().map_err(fail("cannot begin"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .map_err(fail("lock"))?;
            write(&mut tx, raw, plan)?;
            tx.commit().map_err(fail("cannot commit"))
        })
    }

    fn commit_planned(
        &self,
        raw: Option<Raw<'_>>,
        touched: &Touched,
        plan: &mut (dyn FnMut(&State) -> Plan + Send),
    ) -> Result<Plan, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction().map_err(fail("cannot begin"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .map_err(fail("lock"))?;
            let current = read(&mut tx, Some(touched))?;
            let plan = plan(&current);
            write(&mut tx, raw, &plan)?;
            tx.commit().map_err(fail("cannot commit"))?;
            Ok(plan)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn load(&self) -> Result<State, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction().map_err(fail("cannot begin"))?;
            let state = read(&mut tx, None)?;
            tx.commit().map_err(fail("cannot commit"))?;
            Ok(state)
        })
    }

    fn prune(&self, cutoff: i64) -> Result<Pruned, StoreError> {
        self.with(|client| {
            let mut tx = client.transaction().map_err(fail("cannot begin"))?;
            let raw_events = tx
                .execute("DELETE FROM raw_events WHERE received_at < $1", &[&cutoff])
                .map_err(fail("cannot prune payloads"))?;
            let seen_keys = tx
                .execute("DELETE FROM seen WHERE received_at < $1", &[&cutoff])
                .map_err(fail("cannot prune duplicate keys"))?;
            tx.execute(
                "DELETE FROM calls WHERE done AND last_seen < $1",
                &[&cutoff],
            )
            .map_err(fail("cannot prune calls"))?;
            tx.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND received_at < $1",
                &[&cutoff],
            )
            .map_err(fail("cannot prune the outbox"))?;
            tx.commit().map_err(fail("cannot commit the prune"))?;
            Ok(Pruned {
                raw_events,
                seen_keys,
            })
        })
    }

    fn outbox_due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        // Claimed for a lease: another replica does not take them meanwhile.
        let rows = self.with(|client| {
            client
                .query(
                    "UPDATE outbox SET next_at = $1 + $3 WHERE id IN (
                   SELECT id FROM outbox WHERE state = 'pending' AND next_at <= $1
                   ORDER BY next_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, page_id, call_id, body, ended_at, attempts",
                    &[&now, &(limit as i64), &LEASE_SECONDS],
                )
                .map_err(fail("outbox"))
        })?;
        let mut items: Vec<OutboxItem> = rows
            .iter()
            .map(|r| OutboxItem {
                id: r.get(0),
                page_id: r.get(1),
                call_id: r.get(2),
                body: r.get(3),
                ended_at: r.get(4),
                attempts: r.get::<_, i32>(5).max(0) as u32,
            })
            .collect();
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    fn outbox_update(&self, id: i64, update: &OutboxUpdate) -> Result<(), StoreError> {
        self.with(|client| {
            client
                .execute(
                    "UPDATE outbox SET state = $2, attempts = $3, next_at = $4, last_result = $5 WHERE id = $1",
                    &[&id, &update.state.label(), &(update.attempts as i32), &update.next_at, &update.result],
                )
                .map_err(fail("outbox"))?;
            Ok(())
        })
    }

    fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        let rows = self.with(|client| {
            client
                .query(
                    "SELECT state, count(*), min(received_at) FROM outbox GROUP BY state",
                    &[],
                )
                .map_err(fail("outbox"))
        })?;
        Ok(OutboxSummary::from_rows(
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))),
        ))
    }

    fn raw_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.with(|client| {
            Ok(client
                .query_one("SELECT count(*) FROM raw_events", &[])
                .map_err(fail("cannot count payloads"))?
                .get(0))
        })?;
        Ok(n.max(0) as u64)
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}
