//! Pure decisions of a poll, with no I/O and no clock of their own: which window
//! to ask Graph for, which period of an answer to show, and how one answer turns
//! a cell of the snapshot into its next state.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::config::GranularityConfig;
use crate::error::{ErrorClass, GraphError};
use crate::model::{DataPoint, Granularity};
use crate::snapshot::{Cell, CellStatus};

/// The `since` date to send: the UTC date `lookback` before now, so the answer
/// holds whole periods back to there. `until` is never sent: Graph then uses the
/// current date, which is the newest data there is.
pub fn query_since(cfg: &GranularityConfig, now: DateTime<Utc>) -> Option<NaiveDate> {
    let lookback = chrono::Duration::from_std(cfg.lookback?).ok()?;
    Some((now - lookback).date_naive())
}

/// The data point a live series shows: the newest period that has ended at least
/// `trust_after` ago. A period still in progress, or too fresh to have settled,
/// is never shown. LIFETIME has one point, shown as it is.
pub fn select_period(
    points: &[DataPoint],
    granularity: Granularity,
    trust_after: Duration,
    now: DateTime<Utc>,
) -> Option<&DataPoint> {
    let Some(period) = granularity.period() else {
        return points.iter().max_by_key(|p| p.start);
    };
    let trust = chrono::Duration::from_std(trust_after).unwrap_or(chrono::Duration::MAX);
    points
        .iter()
        .filter(|p| {
            p.start
                .checked_add_signed(period)
                .and_then(|end| end.checked_add_signed(trust))
                .is_some_and(|trusted_at| trusted_at <= now)
        })
        .max_by_key(|p| p.start)
}

/// The next state of one (flow, metric) cell after a poll answered `answer`.
///
/// - A settled period replaces whatever was shown.
/// - An answer without a settled period shows nothing (the API said so).
/// - 139006 shows nothing: no numbers are invented for a flow under the threshold.
/// - Any other error keeps the last good value, marked stale, so one bad poll
///   does not blank a dashboard; the error class is recorded.
pub fn next_cell(
    previous: Option<&Cell>,
    answer: Result<Option<DataPoint>, &GraphError>,
    now: DateTime<Utc>,
) -> Cell {
    match answer {
        Ok(Some(point)) => Cell {
            shown: Some(point),
            status: CellStatus::Fresh,
            last_success: Some(now),
        },
        Ok(None) => Cell {
            shown: None,
            status: CellStatus::NoSettledPeriod,
            last_success: Some(now),
        },
        Err(e) if e.class == ErrorClass::InsufficientData => Cell {
            shown: None,
            status: CellStatus::InsufficientData,
            last_success: Some(now),
        },
        Err(e) => Cell {
            shown: previous.and_then(|c| c.shown.clone()),
            status: CellStatus::Failed(e.class),
            last_success: previous.and_then(|c| c.last_success),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, d, h, 0, 0).unwrap()
    }

    fn point(start: DateTime<Utc>, v: f64) -> DataPoint {
        DataPoint {
            start,
            values: vec![("value".into(), v)],
        }
    }

    #[test]
    fn hour_shows_newest_settled_period() {
        let points: Vec<_> = (0..12).map(|h| point(at(30, h), h as f64)).collect();
        // now 12:00, trust 3h: 08:00-09:00 ended at 09:00, trusted at 12:00.
        let p = select_period(
            &points,
            Granularity::Hour,
            Duration::from_secs(3 * 3600),
            at(30, 12),
        );
        assert_eq!(p.map(|p| p.start), Some(at(30, 8)));
        // trust 0: 11:00 is still in progress, 10:00 ended at 11:00.
        let p = select_period(&points, Granularity::Hour, Duration::ZERO, at(30, 11));
        assert_eq!(p.map(|p| p.start), Some(at(30, 10)));
    }

    #[test]
    fn day_in_progress_is_never_shown() {
        let points = vec![
            point(at(28, 8), 1.0),
            point(at(29, 8), 2.0),
            point(at(30, 8), 3.0),
        ];
        // 2024-01-30 12:00: the day that began 01-29 08:00 ended 01-30 08:00;
        // with 6h trust it is trusted at 14:00, so 01-28 is shown.
        let p = select_period(
            &points,
            Granularity::Day,
            Duration::from_secs(6 * 3600),
            at(30, 12),
        );
        assert_eq!(p.map(|p| p.start), Some(at(28, 8)));
        let p = select_period(
            &points,
            Granularity::Day,
            Duration::from_secs(6 * 3600),
            at(30, 14),
        );
        assert_eq!(p.map(|p| p.start), Some(at(29, 8)));
        let none = select_period(&points[2..], Granularity::Day, Duration::ZERO, at(30, 12));
        assert_eq!(none, None);
    }

    #[test]
    fn lifetime_is_the_single_point() {
        let points = vec![point(at(1, 8), 9.0)];
        let p = select_period(
            &points,
            Granularity::Lifetime,
            Duration::from_secs(99999),
            at(1, 9),
        );
        assert_eq!(p.map(|p| p.values[0].1), Some(9.0));
    }

    #[test]
    fn since_is_lookback_before_now() {
        let cfg = crate::config::Config::default_granularity(Granularity::Day);
        assert_eq!(
            query_since(&cfg, at(30, 1)),
            NaiveDate::from_ymd_opt(2024, 1, 26)
        );
        let life = crate::config::Config::default_granularity(Granularity::Lifetime);
        assert_eq!(query_since(&life, at(30, 1)), None);
    }

    #[test]
    fn cell_transitions() {
        let good = next_cell(None, Ok(Some(point(at(30, 1), 5.0))), at(30, 5));
        assert_eq!(good.status, CellStatus::Fresh);

        let throttled = GraphError::new(ErrorClass::Throttled, "slow down");
        let stale = next_cell(Some(&good), Err(&throttled), at(30, 6));
        assert_eq!(stale.status, CellStatus::Failed(ErrorClass::Throttled));
        assert_eq!(stale.shown, good.shown, "last good value is kept");
        assert_eq!(stale.last_success, Some(at(30, 5)));

        let few = GraphError::new(ErrorClass::InsufficientData, "not enough data");
        let insufficient = next_cell(Some(&good), Err(&few), at(30, 7));
        assert_eq!(insufficient.status, CellStatus::InsufficientData);
        assert_eq!(
            insufficient.shown, None,
            "no numbers invented under the threshold"
        );
        assert_eq!(insufficient.last_success, Some(at(30, 7)));

        let empty = next_cell(Some(&good), Ok(None), at(30, 8));
        assert_eq!(empty.shown, None);
    }
}
