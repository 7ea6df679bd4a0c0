//! The landing page (`/`): readiness and why not, each WABA's last listing,
//! and every flow with when Graph last answered it. Every text from Graph or
//! the config is escaped.

use std::fmt::Write as _;

use crate::exporter::{self, Exporter, Readiness};

/// Escapes text for HTML; flow names come from Graph and are not trusted.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for `exporter` as it is now; `metrics_path` is where /metrics is served.
pub fn page(exporter: &Exporter, metrics_path: &str) -> String {
    let granularities: Vec<_> = exporter
        .config()
        .granularities
        .iter()
        .map(|g| g.granularity)
        .collect();
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>flows-exporter</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>\
         <h1>flows-exporter</h1><p>Prometheus exporter for the WhatsApp Flows Metrics API. ",
    );
    let metrics = esc(metrics_path);
    let _ = write!(
        page,
        "<a href=\"{metrics}\">{metrics}</a> · <a href=\"/-/healthy\">/-/healthy</a> · \
         <a href=\"/-/ready\">/-/ready</a></p>"
    );
    let ready = match exporter.readiness() {
        Readiness::Ready => "yes".to_owned(),
        Readiness::NotReady(why) => format!("no: {}", esc(&why)),
    };
    let _ = write!(
        page,
        "<p>Version {}. Ready: {ready}. Graph API {} at {}.</p>",
        env!("CARGO_PKG_VERSION"),
        esc(&exporter.config().graph.api_version),
        esc(&exporter.config().graph.base_url),
    );
    if let Some(summary) = exporter.webhook_summary() {
        let when = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default()
        };
        let _ = write!(
            page,
            "<h2>Webhooks</h2><p>{} alert(s) active.</p>",
            summary.active.len()
        );
        if !summary.active.is_empty() {
            page.push_str("<table><tr><th>flow id</th><th>alert</th><th>activated</th></tr>");
            for (flow, alert, since) in &summary.active {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{alert}</td><td>{}</td></tr>",
                    esc(flow),
                    when(*since)
                );
            }
            page.push_str("</table>");
        }
        if !summary.last_received.is_empty() {
            page.push_str("<table><tr><th>WABA</th><th>last webhook</th></tr>");
            for (waba, at) in &summary.last_received {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    esc(waba),
                    when(*at)
                );
            }
            page.push_str("</table>");
        }
    }
    let wabas = exporter.waba_rows();
    if !wabas.is_empty() {
        page.push_str("<h2>Discovery</h2><table><tr><th>WABA</th><th>last listed</th><th>last listing</th></tr>");
        for (waba, state) in wabas {
            let last = match state.last_success {
                Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                None => "never".into(),
            };
            let status = match (state.last_error, state.truncated) {
                (Some(class), _) => format!("failing: {}", class.label()),
                (None, Some(t)) => format!("cut short: {}", esc(&t.describe())),
                (None, None) if state.last_success.is_some() => "ok".to_owned(),
                (None, None) => "not listed yet".to_owned(),
            };
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{last}</td><td>{status}</td></tr>",
                esc(&waba)
            );
        }
        page.push_str("</table><h2>Flows</h2>");
    }
    page.push_str("<table><tr><th>flow id</th><th>name</th><th>WABA</th><th>status</th><th>can_send_message</th><th>polled</th>");
    for g in &granularities {
        let _ = write!(page, "<th>last answer ({})</th>", g.label());
    }
    page.push_str("</tr>");
    for exporter::FlowRow { flow, last_answer } in exporter.flow_rows() {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            esc(&flow.id),
            esc(&flow.name),
            esc(&flow.waba_id),
            esc(flow.status.as_str()),
            esc(&flow.can_send_message),
            if flow.is_polled() { "yes" } else { "no" },
        );
        for g in &granularities {
            let cell = match last_answer.get(g).copied().flatten() {
                Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                None => "–".into(),
            };
            let _ = write!(page, "<td>{cell}</td>");
        }
        page.push_str("</tr>");
    }
    page.push_str("</table></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escapes_html() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
