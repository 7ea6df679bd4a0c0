//! Log lines in logfmt (`--log.format logfmt`, the default), as Prometheus
//! and its exporters write them:
//!
//! ```text
//! ts=2026-12-06T01:33:45.554Z level=info target=flows_exporter::exporter msg="poll finished" granularity=hour calls=35
//! ```
//!
//! Every value that is empty or holds a space, `=`, `"` or a control
//! character is quoted, with `"`, `\` and control characters escaped, so a
//! line is always one line and splits back into the same pairs.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The logfmt event formatter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = String::with_capacity(160);
        let _ = write!(
            line,
            "ts={} level={} target={}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            meta.level().as_str().to_ascii_lowercase(),
            meta.target()
        );
        let mut fields = Fields {
            msg: None,
            rest: String::new(),
        };
        event.record(&mut fields);
        if let Some(msg) = fields.msg {
            line.push_str(" msg=");
            push_value(&mut line, &msg);
        }
        line.push_str(&fields.rest);
        writeln!(writer, "{line}")
    }
}

/// An event's fields: the message apart, the others as ` key=value` pairs.
struct Fields {
    msg: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.msg = Some(value);
            return;
        }
        self.rest.push(' ');
        self.rest.push_str(field.name());
        self.rest.push('=');
        push_value(&mut self.rest, &value);
    }
}

/// Appends `value`, quoted and escaped when it needs to be.
fn push_value(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || c.is_control());
    if plain {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_they_must_be() {
        let cases = [
            ("hour", "hour"),
            ("", "\"\""),
            ("poll finished", "\"poll finished\""),
            ("a=b", "\"a=b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("two\nlines", "\"two\\nlines\""),
            ("back\\slash", "\"back\\\\slash\""),
            ("Some(\"A1\")", "\"Some(\\\"A1\\\")\""),
        ];
        for (value, written) in cases {
            let mut out = String::new();
            push_value(&mut out, value);
            assert_eq!(out, written, "{value:?}");
        }
    }

    #[test]
    fn an_event_is_one_line_of_pairs() {
        use std::sync::{Arc, Mutex};
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(Logfmt)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(flow_id = %"123", calls = 5, why = "a b", "poll\nfailed");
        });
        let text = String::from_utf8(buf.lock().expect("buffer").clone()).expect("UTF-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        let line = text.trim_end();
        assert!(
            line.starts_with("ts=") && line.contains(" level=warn "),
            "{line}"
        );
        assert!(
            line.ends_with(" msg=\"poll\\nfailed\" flow_id=123 calls=5 why=\"a b\""),
            "{line}"
        );
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
