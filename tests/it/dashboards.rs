//! The Grafana dashboards in `dashboards/`: what every one of them must be to
//! import cleanly and read correctly (checked here without Prometheus), and the
//! extraction of their PromQL and template variables that the end-to-end test
//! (`prometheus_e2e`) runs against a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

/// Every dashboard file and the uid it must keep: links and bookmarks use the uid.
pub const DASHBOARDS: [(&str, &str); 4] = [
    ("flows-overview.json", "whatsapp-flows-overview"),
    ("flow-detail.json", "whatsapp-flows-flow-detail"),
    ("exporter-health.json", "whatsapp-flows-exporter-health"),
    ("messenger-calls.json", "whatsapp-flows-messenger-calls"),
];

/// Grafana's built-in variables, with the values the end-to-end test uses. The
/// test's Prometheus has only seconds of history, so windows stay short enough
/// to hold a few scrapes and long enough to hold two.
pub const BUILTINS: [(&str, &str); 6] = [
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__range_ms", "3600000"),
];

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

pub struct Dashboard {
    pub file: &'static str,
    pub json: Value,
}

pub fn load_all() -> Vec<Dashboard> {
    DASHBOARDS
        .iter()
        .map(|(file, _)| {
            let text = std::fs::read_to_string(dir().join(file))
                .unwrap_or_else(|e| panic!("read {file}: {e}"));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
            Dashboard { file, json }
        })
        .collect()
}

/// One PromQL expression of a panel.
pub struct Target<'a> {
    pub panel: &'a Value,
    pub target: &'a Value,
    pub expr: &'a str,
}

impl Target<'_> {
    pub fn describe(&self) -> String {
        format!(
            "panel \"{}\" target {}",
            self.panel["title"].as_str().unwrap_or("?"),
            self.target["refId"].as_str().unwrap_or("?")
        )
    }
}

/// A template variable as the test resolves it.
#[derive(Debug, Clone)]
pub enum Variable {
    /// The data source picker: never part of a query.
    Datasource { name: String },
    /// Fixed options (`hour,day,lifetime`).
    Custom { name: String, options: Vec<String> },
    /// `label_values(...)` or `query_result(...)`, resolved through Prometheus.
    Query {
        name: String,
        query: String,
        /// `allValue`, when "All" can be chosen (the dashboards save "All" as
        /// the current value of such variables).
        all_value: Option<String>,
        regex: String,
    },
}

impl Dashboard {
    /// Every panel, including those inside rows (collapsed rows keep theirs).
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    pub fn targets(&self) -> Vec<Target<'_>> {
        let mut out = Vec::new();
        for panel in self.panels() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| {
                    panic!(
                        "{}: panel {} has a target without expr",
                        self.file, panel["title"]
                    )
                });
                out.push(Target {
                    panel,
                    target,
                    expr,
                });
            }
        }
        out
    }

    pub fn variables(&self) -> Vec<Variable> {
        let list = self.json["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no templating.list", self.file));
        list.iter()
            .map(|v| {
                let name = v["name"].as_str().expect("variable name").to_owned();
                match v["type"].as_str() {
                    Some("datasource") => Variable::Datasource { name },
                    Some("custom") => Variable::Custom {
                        name,
                        options: v["query"]
                            .as_str()
                            .expect("custom query")
                            .split(',')
                            .map(|s| s.trim().to_owned())
                            .collect(),
                    },
                    Some("query") => Variable::Query {
                        name,
                        // Grafana writes the query as a string or, in newer
                        // versions, as {"query": ..., "refId": ...}.
                        query: v["query"]["query"]
                            .as_str()
                            .or(v["query"].as_str())
                            .expect("variable query")
                            .to_owned(),
                        all_value: (v["includeAll"] == true)
                            .then(|| v["allValue"].as_str().unwrap_or(".*").to_owned()),
                        regex: v["regex"].as_str().unwrap_or("").to_owned(),
                    },
                    other => panic!(
                        "{}: variable {name} of unexpected type {other:?}",
                        self.file
                    ),
                }
            })
            .collect()
    }
}

/// Replaces Grafana variables (`$name`, `${name}`, `${name:format}`,
/// `[[name]]`) in `text`. An unknown variable is an error: a query must not
/// reach Prometheus with a `$` left in it.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let lookup = |name: &str| {
        let base = name.split(':').next().unwrap_or(name);
        values
            .get(base)
            .cloned()
            .ok_or_else(|| format!("unknown variable `{name}` in {text}"))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(inner) = tail.strip_prefix("${") {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text}"))?;
            out.push_str(&lookup(&inner[..end])?);
            rest = &inner[end + 1..];
        } else if let Some(inner) = tail.strip_prefix("[[") {
            let end = inner
                .find("]]")
                .ok_or_else(|| format!("unclosed [[ in {text}"))?;
            out.push_str(&lookup(&inner[..end])?);
            rest = &inner[end + 2..];
        } else if tail.starts_with('$') && tail[1..].starts_with(is_name) {
            let len = tail[1..].find(|c| !is_name(c)).unwrap_or(tail.len() - 1);
            out.push_str(&lookup(&tail[1..=len])?);
            rest = &tail[1 + len..];
        } else {
            // A `$` that starts no name (a regex anchor) or a lone `[` (a range).
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `label_values(selector, label)` → `(selector, label)`; `label_values(label)`
/// → `("", label)`.
pub fn parse_label_values(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    // The label is after the last comma outside braces and quotes.
    let (mut depth, mut quoted, mut split) = (0i32, false, None);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' | '(' if !quoted => depth += 1,
            '}' | ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => split = Some(i),
            _ => {}
        }
    }
    Some(match split {
        Some(i) => (
            inner[..i].trim().to_owned(),
            inner[i + 1..].trim().to_owned(),
        ),
        None => (String::new(), inner.trim().to_owned()),
    })
}

/// `query_result(expr)` → `expr`.
pub fn parse_query_result(query: &str) -> Option<String> {
    Some(
        query
            .trim()
            .strip_prefix("query_result(")?
            .strip_suffix(')')?
            .to_owned(),
    )
}

/// The label a `query_result` variable takes its value from: the one its regex
/// captures as `(?<value>...)`, as in `/flow_id="(?<value>[^"]+)".../`.
pub fn value_label_of_regex(regex: &str) -> Option<String> {
    let at = regex.find("=\"(?<value>")?;
    let before = &regex[..at];
    let start = before
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    Some(before[start..].to_owned())
}

/// Names of the metrics a function applies to directly: `rate(foo{...}[5m])` → foo.
fn metrics_under(expr: &str, function: &str) -> Vec<String> {
    let needle = format!("{function}(");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find(&needle) {
        let at = from + i;
        from = at + needle.len();
        // `irate(` also contains `rate(`: only whole function names count.
        if expr[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = expr[from..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.push(name);
    }
    out
}

#[test]
fn dashboards_are_import_ready() {
    for d in load_all() {
        let f = d.file;
        let j = &d.json;
        let expected_uid = DASHBOARDS
            .iter()
            .find(|(file, _)| *file == f)
            .expect("listed")
            .1;
        assert_eq!(j["uid"], expected_uid, "{f}: the uid is stable");
        assert!(
            j["id"].is_null(),
            "{f}: id must be null so Grafana assigns one"
        );
        assert!(
            j["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("WhatsApp Flows / ")),
            "{f}"
        );
        assert!(j["schemaVersion"].as_u64().is_some(), "{f}: schemaVersion");
        assert!(
            j.get("__inputs").is_none(),
            "{f}: the datasource is a variable, not an import input"
        );

        let vars = d.variables();
        assert!(
            matches!(vars.first(), Some(Variable::Datasource { name }) if name == "datasource"),
            "{f}: the first variable is `datasource`"
        );
        let ds = &j["templating"]["list"][0];
        assert_eq!(
            ds["query"], "prometheus",
            "{f}: datasource variable of type prometheus"
        );

        // Every datasource reference is the variable; no uid of someone's Grafana.
        fn check_datasources(v: &Value, f: &str) {
            match v {
                Value::Object(map) => {
                    if let Some(ds) = map.get("datasource") {
                        match ds["type"].as_str() {
                            Some("grafana") => {}
                            _ => assert_eq!(
                                ds,
                                &serde_json::json!({"type": "prometheus", "uid": "${datasource}"}),
                                "{f}: hard-coded datasource"
                            ),
                        }
                    }
                    map.values().for_each(|v| check_datasources(v, f));
                }
                Value::Array(a) => a.iter().for_each(|v| check_datasources(v, f)),
                _ => {}
            }
        }
        check_datasources(j, f);

        let mut ids = BTreeSet::new();
        for p in d.panels() {
            let title = p["title"].as_str().unwrap_or("");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{f}: duplicate id in \"{title}\""
            );
            assert!(
                p["gridPos"]["w"].as_u64().is_some(),
                "{f}: \"{title}\" has a gridPos"
            );
            if p["type"] == "row" {
                continue;
            }
            let desc = p["description"].as_str().unwrap_or("");
            assert!(
                desc.len() > 30,
                "{f}: \"{title}\" needs a description saying what it shows"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"].as_str().is_some(),
                "{f}: \"{title}\" needs a unit"
            );
            let targets = p["targets"].as_array().map_or(0, Vec::len);
            assert!(targets > 0, "{f}: \"{title}\" has no query");
        }
    }
}

#[test]
fn panels_do_not_overlap() {
    fn rect(p: &Value) -> (u64, u64, u64, u64) {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_u64().expect("gridPos field");
        (n("x"), n("y"), n("w"), n("h"))
    }
    fn check(f: &str, panels: &[&Value]) {
        for (i, a) in panels.iter().enumerate() {
            let (ax, ay, aw, ah) = rect(a);
            assert!(ax + aw <= 24, "{f}: {} is wider than the grid", a["title"]);
            for b in &panels[i + 1..] {
                let (bx, by, bw, bh) = rect(b);
                let apart = ax + aw <= bx || bx + bw <= ax || ay + ah <= by || by + bh <= ay;
                assert!(apart, "{f}: {} overlaps {}", a["title"], b["title"]);
            }
        }
    }
    for d in load_all() {
        let top: Vec<&Value> = d.json["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .collect();
        check(d.file, &top);
        // A collapsed row keeps its panels inside; they open below the row.
        for row in top.iter().filter(|p| p["collapsed"] == true) {
            let inner: Vec<&Value> = row["panels"]
                .as_array()
                .expect("row panels")
                .iter()
                .collect();
            assert!(!inner.is_empty(), "{}: empty collapsed row", d.file);
            for p in &inner {
                assert!(
                    rect(p).1 > rect(row).1,
                    "{}: {} sits above its row",
                    d.file,
                    p["title"]
                );
            }
            check(d.file, &inner);
        }
    }
}

#[test]
fn per_period_values_are_never_rated_and_panels_say_they_are_past() {
    for d in load_all() {
        for t in d.targets() {
            let at = format!("{}: {}", d.file, t.describe());
            for function in ["rate", "irate", "increase", "delta", "deriv", "idelta"] {
                for metric in metrics_under(t.expr, function) {
                    // Histograms the exporter counts live (its own, and the
                    // Messenger calls') are counters; the per-period flow
                    // latency buckets are not.
                    let counter = metric.ends_with("_total")
                        || ((metric.starts_with("whatsapp_flows_exporter_")
                            || metric.starts_with("messenger_"))
                            && metric.ends_with("_bucket"));
                    assert!(
                        counter,
                        "{at}: {function}() of {metric}, which is not a counter"
                    );
                }
            }
            let desc = t.panel["description"].as_str().unwrap_or("");
            if t.expr.contains("whatsapp_flows_endpoint_") {
                assert!(
                    desc.contains("period"),
                    "{at}: the description must say the values describe a past period"
                );
            }
            let legend = t.target["legendFormat"].as_str().unwrap_or("");
            assert!(
                !legend.contains("flow_id"),
                "{at}: legends show flow names, not ids"
            );
            if t.expr.contains("group_left (flow_name)") {
                assert!(
                    legend.contains("{{flow_name}}"),
                    "{at}: the legend shows the flow name"
                );
            }
            if t.expr.contains("histogram_quantile") && t.expr.contains("endpoint_request_latency")
            {
                assert!(
                    !t.expr.contains("rate("),
                    "{at}: the latency buckets are a per-period snapshot"
                );
            }
        }
    }
}

#[test]
fn every_variable_the_queries_use_is_defined() {
    for d in load_all() {
        let mut values: BTreeMap<String, String> = BUILTINS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for v in d.variables() {
            let name = match v {
                Variable::Datasource { name }
                | Variable::Custom { name, .. }
                | Variable::Query { name, .. } => name,
            };
            values.insert(name, "x".to_owned());
        }
        for t in d.targets() {
            substitute(t.expr, &values)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", d.file, t.describe()));
        }
    }
}

#[test]
fn substitution_and_variable_queries_parse() {
    let values: BTreeMap<String, String> =
        [("flow", "42"), ("granularity", "day"), ("__range", "1h")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    assert_eq!(
        substitute(
            r#"x{flow_id="$flow",g="${granularity}",t="${flow:text}",o="[[flow]]"}[$__range]"#,
            &values
        ),
        Ok(r#"x{flow_id="42",g="day",t="42",o="42"}[1h]"#.to_owned())
    );
    assert_eq!(
        substitute(r#"x{a=~"b$"}[5m]"#, &values),
        Ok(r#"x{a=~"b$"}[5m]"#.to_owned())
    );
    assert!(substitute("x{a=\"$nope\"}", &values).is_err());

    assert_eq!(
        parse_label_values(r#"label_values(m{job="$job", a=~"x,y"}, instance)"#),
        Some((
            r#"m{job="$job", a=~"x,y"}"#.to_owned(),
            "instance".to_owned()
        ))
    );
    assert_eq!(
        parse_label_values("label_values(job)"),
        Some((String::new(), "job".to_owned()))
    );
    assert_eq!(
        parse_query_result("query_result(max(x))"),
        Some("max(x)".to_owned())
    );
    assert_eq!(
        value_label_of_regex(r#"/flow_id="(?<value>[^"]+)".*flow_name="(?<text>[^"]*)"/"#),
        Some("flow_id".to_owned())
    );
    assert_eq!(
        metrics_under("sum(irate(a_total[1m])) + rate( b[1m])", "rate"),
        vec!["b"]
    );
}
