//! Progress of a backfill: a one-line bar on stderr when stderr is a terminal,
//! plain log lines (at most every 10 % or 30 s) otherwise. On a terminal, log
//! lines are printed above the bar through [`LogWriter`], which the command
//! line installs as the log writer, so the two never garble each other.
//!
//! The bar's text is a pure function, [`bar_line`].

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::info;

/// The shortest time between two redraws of the bar.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// The longest time between two progress log lines when not on a terminal.
const LOG_EVERY: Duration = Duration::from_secs(30);
const BAR_WIDTH: usize = 30;

#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    total: u64,
    done: u64,
    samples: u64,
    started: Instant,
    last_draw: Option<Instant>,
    last_log: Instant,
    logged_tenth: u64,
    /// The bar is on screen (and must be erased before anything else is printed).
    shown: bool,
    finished: bool,
}

impl Progress {
    /// `terminal`: draw a bar on stderr rather than logging.
    pub fn new(terminal: bool) -> Arc<Progress> {
        Arc::new(Progress {
            terminal,
            state: Mutex::new(State {
                total: 0,
                done: 0,
                samples: 0,
                started: Instant::now(),
                last_draw: None,
                last_log: Instant::now(),
                logged_tenth: 0,
                shown: false,
                finished: false,
            }),
        })
    }

    /// A progress that shows nothing (tests, library use).
    pub fn hidden() -> Arc<Progress> {
        let p = Progress::new(false);
        p.lock().finished = true;
        p
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts counting towards `total` Graph calls.
    pub fn start(&self, total: u64) {
        let mut s = self.lock();
        s.total = total;
        s.started = Instant::now();
        s.last_log = Instant::now();
        drop(s);
        self.update(0, 0);
    }

    /// One more Graph call answered (or given up).
    pub fn call_done(&self) {
        self.update(1, 0);
    }

    /// More samples written.
    pub fn samples_written(&self, n: u64) {
        self.update(0, n);
    }

    fn update(&self, calls: u64, samples: u64) {
        let mut s = self.lock();
        s.done += calls;
        s.samples += samples;
        if s.finished {
            return;
        }
        let now = Instant::now();
        if self.terminal {
            let due = s.last_draw.is_none_or(|t| now - t >= REDRAW_EVERY) || s.done == s.total;
            if due {
                s.last_draw = Some(now);
                s.shown = true;
                let line = bar_line(s.done, s.total, s.samples, s.started.elapsed());
                let mut err = io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
        } else if let Some(tenth) = (s.done * 10).checked_div(s.total) {
            if tenth > s.logged_tenth || now - s.last_log >= LOG_EVERY {
                s.logged_tenth = tenth;
                s.last_log = now;
                let (done, total, samples) = (s.done, s.total, s.samples);
                drop(s);
                info!(
                    calls = done,
                    of = total,
                    percent = tenth * 10,
                    samples,
                    "backfill progress"
                );
            }
        }
    }

    /// Removes the bar; later updates draw nothing.
    pub fn finish(&self) {
        let mut s = self.lock();
        s.finished = true;
        if s.shown {
            s.shown = false;
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    /// Prints a log line above the bar.
    fn print_above(&self, text: &[u8]) {
        let s = self.lock();
        let mut err = io::stderr().lock();
        if s.shown && !s.finished {
            let _ = err.write_all(b"\r\x1b[2K");
            let _ = err.write_all(text);
            let line = bar_line(s.done, s.total, s.samples, s.started.elapsed());
            let _ = err.write_all(line.as_bytes());
        } else {
            let _ = err.write_all(text);
        }
        let _ = err.flush();
    }
}

/// The bar: `[=======>      ]  45%  450/1000 Graph calls  12345 samples  1m02s`.
pub fn bar_line(done: u64, total: u64, samples: u64, elapsed: Duration) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done.min(total) as f64) / (total as f64)
    };
    let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    let mut bar = "=".repeat(filled);
    if filled < BAR_WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(BAR_WIDTH - filled - 1));
    }
    let secs = elapsed.as_secs();
    format!(
        "[{bar}] {:>3}%  {done}/{total} Graph calls  {samples} samples  {}m{:02}s",
        (fraction * 100.0) as u64,
        secs / 60,
        secs % 60
    )
}

/// A log writer that prints each log line above the progress bar.
#[derive(Debug, Clone)]
pub struct LogWriter(pub Arc<Progress>);

/// One log event, printed when dropped.
#[derive(Debug)]
pub struct LogLine {
    progress: Arc<Progress>,
    buf: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.progress.print_above(&self.buf);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            progress: self.0.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_reads_well() {
        assert_eq!(
            bar_line(0, 200, 0, Duration::ZERO),
            format!(
                "[>{}]   0%  0/200 Graph calls  0 samples  0m00s",
                " ".repeat(29)
            )
        );
        assert_eq!(
            bar_line(100, 200, 12345, Duration::from_secs(62)),
            format!(
                "[{}>{}]  50%  100/200 Graph calls  12345 samples  1m02s",
                "=".repeat(15),
                " ".repeat(14)
            )
        );
        assert_eq!(
            bar_line(200, 200, 1, Duration::from_secs(3600)),
            format!(
                "[{}] 100%  200/200 Graph calls  1 samples  60m00s",
                "=".repeat(30)
            )
        );
        assert!(bar_line(0, 0, 0, Duration::ZERO).contains("100%"));
    }
}
