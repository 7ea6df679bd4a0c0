//! The backfill window of one granularity: the dates asked for, clamped to what
//! Graph serves and to periods that have settled, and cut into chunks that each
//! become one Graph call per flow and metric. Pure: `now` is passed in.
//!
//! A period belongs to the window when the UTC date of its start is from `since`
//! to `until`, both inclusive. A chunk asks Graph for `since(first date)` and
//! `until(last date + 1)`, then keeps only the periods dated inside the chunk:
//! whether Graph's `until` is inclusive is undocumented, and asking one day more
//! and filtering is right under both readings, without overlaps between chunks.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};

use crate::model::Granularity;

/// How many days back Graph serves a granularity ("90 days back for DAY, 30 days
/// back for HOUR"); `None` for LIFETIME, which has no history.
pub fn history_days(g: Granularity) -> Option<u64> {
    match g {
        Granularity::Hour => Some(30),
        Granularity::Day => Some(90),
        Granularity::Lifetime => None,
    }
}

/// One Graph call's worth of dates, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub since: NaiveDate,
    pub until: NaiveDate,
}

impl Chunk {
    /// The `until(...)` sent: a day after the chunk's last date (see the module doc).
    pub fn query_until(&self) -> NaiveDate {
        self.until + Days::new(1)
    }

    /// Whether a period starting at `start` is dated inside this chunk.
    pub fn contains(&self, start: DateTime<Utc>) -> bool {
        let date = start.date_naive();
        self.since <= date && date <= self.until
    }
}

/// A change to the asked window, reported as a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clamp {
    /// `since` is older than Graph serves for this granularity.
    Since {
        asked: NaiveDate,
        oldest: NaiveDate,
        days: u64,
    },
    /// `until` is after today (UTC).
    Until { asked: NaiveDate, today: NaiveDate },
    /// Periods at the end of the window have not ended and settled yet
    /// (`trust_after`); they are left out, as the live exporter leaves them out.
    Unsettled { newest_start: DateTime<Utc> },
}

impl fmt::Display for Clamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Clamp::Since {
                asked,
                oldest,
                days,
            } => write!(
                f,
                "--since {asked} is older than Graph serves ({days} days back): starting at {oldest}"
            ),
            Clamp::Until { asked, today } => {
                write!(f, "--until {asked} is in the future: ending at {today}")
            }
            Clamp::Unsettled { newest_start } => write!(
                f,
                "periods starting after {} have not ended and settled yet: left out",
                newest_start.format("%Y-%m-%dT%H:%MZ")
            ),
        }
    }
}

/// What to fetch for one granularity.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub granularity: Granularity,
    /// The dates after clamping, both inclusive; `None` when nothing is left.
    pub window: Option<(NaiveDate, NaiveDate)>,
    pub clamps: Vec<Clamp>,
    /// The newest period start that has ended and settled (`trust_after`).
    pub newest_start: DateTime<Utc>,
    pub chunks: Vec<Chunk>,
}

impl Plan {
    /// Whether a period of `chunk`'s answer is kept: dated inside the chunk and
    /// settled.
    pub fn keeps(&self, chunk: &Chunk, start: DateTime<Utc>) -> bool {
        chunk.contains(start) && start <= self.newest_start
    }
}

/// Plans one granularity. `chunk_periods` is the most periods one call asks for
/// (at least a day's worth). Errors for LIFETIME (a single point, no history)
/// and for `since` after `until`.
pub fn plan(
    granularity: Granularity,
    since: NaiveDate,
    until: NaiveDate,
    now: DateTime<Utc>,
    trust_after: Duration,
    chunk_periods: u32,
) -> Result<Plan, String> {
    let (Some(days), Some(period)) = (history_days(granularity), granularity.period()) else {
        return Err(format!(
            "{granularity} has a single data point and no history to backfill"
        ));
    };
    if since > until {
        return Err(format!("--since {since} is after --until {until}"));
    }
    let trust = TimeDelta::from_std(trust_after).unwrap_or(TimeDelta::MAX);
    let today = now.date_naive();
    let oldest = today - Days::new(days);
    // The newest period that ended `trust` ago: start + period + trust <= now.
    let newest_start = now
        .checked_sub_signed(trust)
        .and_then(|t| t.checked_sub_signed(period))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);

    let mut clamps = Vec::new();
    let mut first = since;
    if since < oldest {
        clamps.push(Clamp::Since {
            asked: since,
            oldest,
            days,
        });
        first = oldest;
    }
    let mut last = until;
    if until > today {
        clamps.push(Clamp::Until {
            asked: until,
            today,
        });
        last = today;
    }
    // Dates after the newest settled start hold no period to keep.
    let settled_date = newest_start.date_naive();
    if last >= settled_date {
        clamps.push(Clamp::Unsettled { newest_start });
        last = last.min(settled_date);
    }

    let per_day = (TimeDelta::days(1).num_seconds() / period.num_seconds()).max(1) as u64;
    let chunk_days = (u64::from(chunk_periods) / per_day).max(1);
    let mut chunks = Vec::new();
    let mut start = first;
    while start <= last {
        let end = (start + Days::new(chunk_days - 1)).min(last);
        chunks.push(Chunk {
            since: start,
            until: end,
        });
        start = end + Days::new(1);
    }
    Ok(Plan {
        granularity,
        window: (first <= last).then_some((first, last)),
        clamps,
        newest_start,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("valid instant")
    }

    const HOURS_3: Duration = Duration::from_secs(3 * 3600);
    const HOURS_6: Duration = Duration::from_secs(6 * 3600);

    #[test]
    fn hour_window_is_clamped_to_30_days_and_cut_into_weeks() {
        let now = at(2024, 3, 31, 12);
        let p = plan(
            Granularity::Hour,
            date(2024, 1, 1),
            date(2024, 3, 31),
            now,
            HOURS_3,
            168,
        )
        .expect("plan");
        assert_eq!(
            p.clamps[0],
            Clamp::Since {
                asked: date(2024, 1, 1),
                oldest: date(2024, 3, 1),
                days: 30
            }
        );
        // 12:00 now, 3 h trust: the 08:00 hour ended at 09:00 and settled at 12:00.
        assert_eq!(p.newest_start, at(2024, 3, 31, 8));
        assert_eq!(
            p.clamps[1],
            Clamp::Unsettled {
                newest_start: at(2024, 3, 31, 8)
            }
        );
        assert_eq!(p.window, Some((date(2024, 3, 1), date(2024, 3, 31))));
        let spans: Vec<(NaiveDate, NaiveDate)> =
            p.chunks.iter().map(|c| (c.since, c.until)).collect();
        assert_eq!(
            spans,
            vec![
                (date(2024, 3, 1), date(2024, 3, 7)),
                (date(2024, 3, 8), date(2024, 3, 14)),
                (date(2024, 3, 15), date(2024, 3, 21)),
                (date(2024, 3, 22), date(2024, 3, 28)),
                (date(2024, 3, 29), date(2024, 3, 31)),
            ]
        );
        assert_eq!(p.chunks[0].query_until(), date(2024, 3, 8));
    }

    #[test]
    fn chunks_tile_the_window_without_gaps_or_overlaps() {
        let now = at(2024, 6, 1, 0);
        for periods in [1, 23, 24, 100, 168, 1000, 5000] {
            for g in [Granularity::Hour, Granularity::Day] {
                let p = plan(
                    g,
                    date(2024, 1, 1),
                    date(2024, 5, 20),
                    now,
                    HOURS_6,
                    periods,
                )
                .expect("plan");
                let (first, last) = p.window.expect("a window");
                assert_eq!(p.chunks.first().map(|c| c.since), Some(first));
                assert_eq!(p.chunks.last().map(|c| c.until), Some(last));
                for pair in p.chunks.windows(2) {
                    assert_eq!(pair[0].until + Days::new(1), pair[1].since);
                }
            }
        }
    }

    #[test]
    fn day_window_is_clamped_to_90_days_and_fits_one_chunk() {
        let now = at(2024, 3, 31, 12);
        let p = plan(
            Granularity::Day,
            date(2023, 1, 1),
            date(2024, 3, 31),
            now,
            HOURS_6,
            168,
        )
        .expect("plan");
        assert_eq!(p.window, Some((date(2024, 1, 1), date(2024, 3, 30))));
        assert_eq!(p.chunks.len(), 1, "90 days are 90 periods");
        // The day that began 03-30 08:00 ended 03-31 08:00 and settled at 14:00:
        // not yet. 03-29 08:00 is the newest settled start.
        assert_eq!(p.newest_start, at(2024, 3, 30, 6));
        let chunk = p.chunks[0];
        assert!(p.keeps(&chunk, at(2024, 3, 29, 8)));
        assert!(!p.keeps(&chunk, at(2024, 3, 30, 8)), "not settled");
        assert!(!p.keeps(&chunk, at(2023, 12, 31, 8)), "outside the chunk");
    }

    #[test]
    fn a_window_inside_the_limits_is_not_clamped() {
        let now = at(2024, 3, 31, 12);
        let p = plan(
            Granularity::Hour,
            date(2024, 3, 10),
            date(2024, 3, 12),
            now,
            HOURS_3,
            24,
        )
        .expect("plan");
        assert_eq!(p.clamps, vec![]);
        assert_eq!(p.chunks.len(), 3, "one day per chunk");
        assert!(p.keeps(&p.chunks[2], at(2024, 3, 12, 23)));
        assert!(!p.keeps(&p.chunks[2], at(2024, 3, 13, 0)));
    }

    #[test]
    fn future_until_and_empty_windows() {
        let now = at(2024, 3, 31, 12);
        let p = plan(
            Granularity::Day,
            date(2024, 3, 1),
            date(2024, 4, 30),
            now,
            HOURS_6,
            168,
        )
        .expect("plan");
        assert!(p.clamps.contains(&Clamp::Until {
            asked: date(2024, 4, 30),
            today: date(2024, 3, 31)
        }));
        assert_eq!(p.window.map(|w| w.1), Some(date(2024, 3, 30)));

        let old = plan(
            Granularity::Hour,
            date(2023, 1, 1),
            date(2023, 1, 31),
            now,
            HOURS_3,
            168,
        )
        .expect("plan");
        assert_eq!(old.window, None, "nothing of it is served any more");
        assert!(old.chunks.is_empty());

        assert!(
            plan(
                Granularity::Lifetime,
                date(2024, 3, 1),
                date(2024, 3, 2),
                now,
                HOURS_3,
                168
            )
            .is_err()
        );
        assert!(
            plan(
                Granularity::Day,
                date(2024, 3, 2),
                date(2024, 3, 1),
                now,
                HOURS_3,
                168
            )
            .is_err()
        );
    }

    #[test]
    fn clamps_read_well() {
        let c = Clamp::Since {
            asked: date(2024, 1, 1),
            oldest: date(2024, 3, 1),
            days: 30,
        };
        assert_eq!(
            c.to_string(),
            "--since 2024-01-01 is older than Graph serves (30 days back): starting at 2024-03-01"
        );
    }
}
