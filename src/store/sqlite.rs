//! The embedded [`Store`]: SQLite (rusqlite, the library compiled in) in WAL
//! mode with `synchronous = FULL`, so a commit is on disk when it returns.
//! One connection behind a mutex: webhooks are written one transaction at a
//! time, which an fsync of well under a millisecond makes cheap enough. The
//! file is created readable by its owner only: it keeps raw payloads, and
//! `messages` payloads carry what customers wrote.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{OutboxItem, OutboxSummary, OutboxUpdate, Pruned, Raw, Store, StoreError};
use crate::webhook::payload::{AlertKind, Detail};
use crate::webhook::state::{AlertRecord, Plan, State, StatusRecord};

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE raw_events (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    understood INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX raw_events_received_at ON raw_events (received_at);
CREATE TABLE seen (
    key TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL
);
CREATE INDEX seen_received_at ON seen (received_at);
CREATE TABLE alerts (
    flow_id TEXT NOT NULL,
    alert TEXT NOT NULL,
    active INTEGER NOT NULL,
    threshold REAL,
    time INTEGER NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (flow_id, alert)
);
CREATE TABLE statuses (
    flow_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    time INTEGER NOT NULL
);
CREATE TABLE status_changes (
    flow_id TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (flow_id, from_status, to_status)
);
CREATE TABLE expiry_warnings (
    flow_id TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE wabas (
    waba_id TEXT PRIMARY KEY,
    last_received INTEGER NOT NULL
);
";

/// Version 2: Messenger calls, their Pages' counts, the call-metrics outbox.
const SCHEMA_2: &str = "
CREATE TABLE calls (
    page_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    record TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    done INTEGER NOT NULL,
    PRIMARY KEY (page_id, call_id)
);
CREATE TABLE pages (
    page_id TEXT PRIMARY KEY,
    stats TEXT NOT NULL
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    page_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    body TEXT NOT NULL,
    ended_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    last_result TEXT NOT NULL,
    UNIQUE (page_id, call_id)
);
CREATE INDEX outbox_due ON outbox (state, next_at);
";

/// A SQLite file.
#[derive(Debug)]
pub struct Sqlite {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Set for [`Sqlite::temporary`]: removed with the store.
    _dir: Option<tempfile::TempDir>,
}

/// Every row `sql` selects from `table`, read by `read`.
fn rows<T>(
    conn: &Connection,
    table: &str,
    sql: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut query = conn.prepare(sql).map_err(fail(table))?;
    let rows = query.query_map([], read).map_err(fail(table))?;
    rows.collect::<Result<Vec<T>, _>>().map_err(fail(table))
}

fn fail(what: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

impl Sqlite {
    /// Opens (or creates) the database at `path` and brings its schema up to
    /// date.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        create_private(path)?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let setup = |conn: &Connection| -> rusqlite::Result<String> {
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            conn.execute_batch("PRAGMA synchronous = FULL;")?;
            Ok(mode)
        };
        let mode = setup(&conn)
            .map_err(|e| StoreError(format!("cannot set up {}: {e}", path.display())))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError(format!(
                "{}: the file system does not allow WAL mode (journal mode {mode})",
                path.display()
            )));
        }
        migrate(&conn).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        Ok(Sqlite {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            _dir: None,
        })
    }

    /// A database in a new temporary directory, removed when the store is
    /// dropped (`demo`, tests).
    pub fn temporary() -> Result<Sqlite, StoreError> {
        let dir = tempfile::tempdir()
            .map_err(|e| StoreError(format!("cannot make a temporary directory: {e}")))?;
        let mut store = Sqlite::open(&dir.path().join("flows-exporter.db"))?;
        store._dir = Some(dir);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates the file readable and writable by its owner only, if it is not there.
fn create_private(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError(format!("cannot create {}: {e}", path.display()))),
    }
}

fn migrate(conn: &Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| format!("cannot read the schema version: {e}"))?;
    match version {
        0 => conn
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} {SCHEMA_2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| format!("cannot create the schema: {e}")),
        1 => conn
            .execute_batch(&format!(
                "BEGIN; {SCHEMA_2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| format!("cannot migrate the schema from version 1: {e}")),
        SCHEMA_VERSION => Ok(()),
        v => Err(format!(
            "schema version {v} was written by a newer flows-exporter (this one knows {SCHEMA_VERSION})"
        )),
    }
}

impl Store for Sqlite {
    fn commit(&self, raw: Option<Raw<'_>>, plan: &Plan) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(fail("cannot begin"))?;
        if let Some(raw) = raw {
            tx.execute(
                "INSERT INTO raw_events (received_at, understood, body) VALUES (?1, ?2, ?3)",
                params![raw.received_at, raw.understood, raw.body],
            )
            .map_err(fail("cannot store the payload"))?;
        }
        {
            let mut call = tx
                .prepare_cached(
                    "INSERT INTO calls (page_id, call_id, record, last_seen, done) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (page_id, call_id) DO UPDATE SET record = excluded.record,
                       last_seen = excluded.last_seen, done = excluded.done",
                )
                .map_err(fail("calls"))?;
            for ((page, id), record) in &plan.calls {
                let json =
                    serde_json::to_string(record).map_err(|e| StoreError(format!("calls: {e}")))?;
                call.execute(params![page, id, json, record.last_seen, record.is_done()])
                    .map_err(fail("calls"))?;
            }
            let mut page = tx
                .prepare_cached(
                    "INSERT INTO pages (page_id, stats) VALUES (?1, ?2)
                     ON CONFLICT (page_id) DO UPDATE SET stats = excluded.stats",
                )
                .map_err(fail("pages"))?;
            for (id, stats) in &plan.pages {
                let json =
                    serde_json::to_string(stats).map_err(|e| StoreError(format!("pages: {e}")))?;
                page.execute(params![id, json]).map_err(fail("pages"))?;
            }
            if let Some(intake) = &plan.intake {
                let body = crate::callmetrics::forward_body(&intake.metrics).to_string();
                tx.execute(
                    "INSERT INTO outbox (page_id, call_id, body, ended_at, received_at, state, attempts, next_at, last_result)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?5, '')",
                    params![
                        intake.page_id,
                        intake.metrics.call_id,
                        body,
                        intake.metrics.call_ended_time,
                        plan.received_at
                    ],
                )
                .map_err(fail("outbox"))?;
            }
        }
        {
            let mut seen = tx
                .prepare_cached("INSERT OR IGNORE INTO seen (key, received_at) VALUES (?1, ?2)")
                .map_err(fail("seen"))?;
            for key in &plan.seen {
                seen.execute(params![key, plan.received_at])
                    .map_err(fail("seen"))?;
            }
            let mut alert = tx
                .prepare_cached(
                    "INSERT INTO alerts (flow_id, alert, active, threshold, time, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (flow_id, alert) DO UPDATE SET
                       active = excluded.active, threshold = excluded.threshold,
                       time = excluded.time, detail = excluded.detail
                     WHERE excluded.time >= alerts.time",
                )
                .map_err(fail("alerts"))?;
            for (flow, kind, r) in &plan.alerts {
                let detail = serde_json::to_string(&r.detail)
                    .map_err(|e| StoreError(format!("alerts: {e}")))?;
                alert
                    .execute(params![
                        flow,
                        kind.label(),
                        r.active,
                        r.threshold,
                        r.time,
                        detail
                    ])
                    .map_err(fail("alerts"))?;
            }
            let mut status = tx
                .prepare_cached(
                    "INSERT INTO statuses (flow_id, status, time) VALUES (?1, ?2, ?3)
                     ON CONFLICT (flow_id) DO UPDATE SET status = excluded.status, time = excluded.time
                     WHERE excluded.time >= statuses.time",
                )
                .map_err(fail("statuses"))?;
            for (flow, r) in &plan.statuses {
                status
                    .execute(params![flow, r.status, r.time])
                    .map_err(fail("statuses"))?;
            }
            let mut change = tx
                .prepare_cached(
                    "INSERT INTO status_changes (flow_id, from_status, to_status, count) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (flow_id, from_status, to_status) DO UPDATE SET count = count + 1",
                )
                .map_err(fail("status_changes"))?;
            for (flow, from, to) in &plan.status_changes {
                change
                    .execute(params![flow, from, to])
                    .map_err(fail("status_changes"))?;
            }
            let mut expiry = tx
                .prepare_cached(
                    "INSERT INTO expiry_warnings (flow_id, count) VALUES (?1, 1)
                     ON CONFLICT (flow_id) DO UPDATE SET count = count + 1",
                )
                .map_err(fail("expiry_warnings"))?;
            for flow in &plan.expiry_warnings {
                expiry
                    .execute(params![flow])
                    .map_err(fail("expiry_warnings"))?;
            }
            let mut waba = tx
                .prepare_cached(
                    "INSERT INTO wabas (waba_id, last_received) VALUES (?1, ?2)
                     ON CONFLICT (waba_id) DO UPDATE SET last_received = max(last_received, excluded.last_received)",
                )
                .map_err(fail("wabas"))?;
            for id in &plan.wabas {
                waba.execute(params![id, plan.received_at])
                    .map_err(fail("wabas"))?;
            }
        }
        tx.commit().map_err(fail("cannot commit"))
    }

    fn load(&self) -> Result<State, StoreError> {
        let conn = self.conn();
        let mut state = State::default();
        type AlertRow = (String, String, bool, Option<f64>, i64, String);
        let alerts: Vec<AlertRow> = rows(
            &conn,
            "alerts",
            "SELECT flow_id, alert, active, threshold, time, detail FROM alerts",
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?;
        for (flow, alert, active, threshold, time, detail) in alerts {
            let Some(kind) = AlertKind::from_label(&alert) else {
                continue;
            };
            let detail: Detail = serde_json::from_str(&detail)
                .map_err(|e| StoreError(format!("alerts: detail of {flow} {alert}: {e}")))?;
            state.alerts.insert(
                (flow, kind),
                AlertRecord {
                    active,
                    threshold,
                    time,
                    detail,
                },
            );
        }
        for (flow, status, time) in rows(
            &conn,
            "statuses",
            "SELECT flow_id, status, time FROM statuses",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )? {
            state.statuses.insert(flow, StatusRecord { status, time });
        }
        for (flow, from, to, n) in rows(
            &conn,
            "status_changes",
            "SELECT flow_id, from_status, to_status, count FROM status_changes",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?)),
        )? {
            state
                .status_changes
                .insert((flow, from, to), n.max(0) as u64);
        }
        for (flow, n) in rows(
            &conn,
            "expiry_warnings",
            "SELECT flow_id, count FROM expiry_warnings",
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)?)),
        )? {
            state.expiry_warnings.insert(flow, n.max(0) as u64);
        }
        state.last_received = rows(
            &conn,
            "wabas",
            "SELECT waba_id, last_received FROM wabas",
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect();
        state.seen = rows(&conn, "seen", "SELECT key, received_at FROM seen", |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .into_iter()
        .collect();
        for (page, id, record) in rows(
            &conn,
            "calls",
            "SELECT page_id, call_id, record FROM calls",
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)),
        )? {
            let record = serde_json::from_str(&record)
                .map_err(|e| StoreError(format!("calls: {page} {id}: {e}")))?;
            state.calls.insert((page, id), record);
        }
        for (page, stats) in rows(&conn, "pages", "SELECT page_id, stats FROM pages", |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })? {
            let stats = serde_json::from_str(&stats)
                .map_err(|e| StoreError(format!("pages: {page}: {e}")))?;
            state.pages.insert(page, stats);
        }
        state.intakes = rows(
            &conn,
            "outbox",
            "SELECT page_id, call_id FROM outbox",
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect();
        Ok(state)
    }

    fn prune(&self, cutoff: i64) -> Result<Pruned, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(fail("cannot begin"))?;
        let raw_events = tx
            .execute("DELETE FROM raw_events WHERE received_at < ?1", [cutoff])
            .map_err(fail("cannot prune payloads"))? as u64;
        let seen_keys = tx
            .execute("DELETE FROM seen WHERE received_at < ?1", [cutoff])
            .map_err(fail("cannot prune duplicate keys"))? as u64;
        tx.execute(
            "DELETE FROM calls WHERE done = 1 AND last_seen < ?1",
            [cutoff],
        )
        .map_err(fail("cannot prune calls"))?;
        tx.execute(
            "DELETE FROM outbox WHERE state != 'pending' AND received_at < ?1",
            [cutoff],
        )
        .map_err(fail("cannot prune the outbox"))?;
        tx.commit().map_err(fail("cannot commit the prune"))?;
        Ok(Pruned {
            raw_events,
            seen_keys,
        })
    }

    fn outbox_due(&self, now: i64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let conn = self.conn();
        let mut q = conn
            .prepare_cached(
                "SELECT id, page_id, call_id, body, ended_at, attempts FROM outbox
                 WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2",
            )
            .map_err(fail("outbox"))?;
        let rows = q
            .query_map(params![now, limit as i64], |r| {
                Ok(OutboxItem {
                    id: r.get(0)?,
                    page_id: r.get(1)?,
                    call_id: r.get(2)?,
                    body: r.get(3)?,
                    ended_at: r.get(4)?,
                    attempts: r.get::<_, i64>(5)?.max(0) as u32,
                })
            })
            .map_err(fail("outbox"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail("outbox"))
    }

    fn outbox_update(&self, id: i64, update: &OutboxUpdate) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE outbox SET state = ?2, attempts = ?3, next_at = ?4, last_result = ?5 WHERE id = ?1",
                params![
                    id,
                    update.state.label(),
                    update.attempts,
                    update.next_at,
                    update.result
                ],
            )
            .map_err(fail("outbox"))?;
        Ok(())
    }

    fn outbox_summary(&self) -> Result<OutboxSummary, StoreError> {
        let conn = self.conn();
        Ok(OutboxSummary::from_rows(rows(
            &conn,
            "outbox",
            "SELECT state, count(*), min(received_at) FROM outbox GROUP BY state",
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            },
        )?))
    }

    fn raw_count(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn()
            .query_row("SELECT count(*) FROM raw_events", [], |r| r.get(0))
            .optional()
            .map_err(fail("cannot count payloads"))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::payload::parse;

    #[test]
    fn state_survives_reopening_and_prune_removes_old_payloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"w","time":100,"changes":[
            {"field":"flows","value":{"event":"ENDPOINT_LATENCY","flow_id":"1","p50_latency":500,"p90_latency":8000,"requests_count":34,"threshold":7000,"alert_state":"ACTIVATED"}},
            {"field":"flows","value":{"event":"FLOW_STATUS_CHANGE","flow_id":"1","old_status":"PUBLISHED","new_status":"THROTTLED"}}]}]}"#;
        let mut expected = State::default();
        {
            let store = Sqlite::open(&path).expect("opens");
            let plan = expected.plan(&parse(body).expect("parses"), 1000);
            store
                .commit(
                    Some(Raw {
                        received_at: 1000,
                        body,
                        understood: true,
                    }),
                    &plan,
                )
                .expect("commits");
            expected.apply(&plan);
        }
        let store = Sqlite::open(&path).expect("reopens");
        assert_eq!(store.load().expect("loads"), expected);
        assert_eq!(store.raw_count().expect("counts"), 1);
        assert_eq!(
            store.prune(1001).expect("prunes"),
            Pruned {
                raw_events: 1,
                seen_keys: 2
            }
        );
        assert_eq!(store.raw_count().expect("counts"), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_older_event_never_overwrites_a_newer_row() {
        let store = Sqlite::temporary().expect("opens");
        let record = |time, active| AlertRecord {
            active,
            threshold: Some(0.9),
            time,
            detail: Detail::Availability { ratio: Some(0.5) },
        };
        let raw = Raw {
            received_at: 1,
            body: b"{}",
            understood: true,
        };
        for (time, active) in [(200, false), (100, true)] {
            let plan = Plan {
                alerts: vec![(
                    "f".into(),
                    AlertKind::EndpointAvailability,
                    record(time, active),
                )],
                ..Plan::default()
            };
            store.commit(Some(raw), &plan).expect("commits");
        }
        let state = store.load().expect("loads");
        assert_eq!(
            state.alerts[&("f".to_owned(), AlertKind::EndpointAvailability)],
            record(200, false)
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        drop(Sqlite::open(&path).expect("opens"));
        Connection::open(&path)
            .and_then(|c| c.execute_batch("PRAGMA user_version = 99"))
            .expect("sets");
        let e = Sqlite::open(&path).expect_err("refused");
        assert!(e.0.contains("newer flows-exporter"), "{e}");
    }
}
