//! Which flows are found and polled: paging (with an empty page), statuses,
//! static flows, and flows that vanish.

use flows_exporter::error::{Endpoint, ErrorClass, Outcome};
use flows_exporter::model::Granularity;

use crate::support::*;

fn info_lines(text: &str) -> Vec<String> {
    samples(text, "whatsapp_flows_flow_info{")
}

#[tokio::test]
async fn paging_with_an_empty_page_finds_every_flow() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.discover().await;
    let text = scrape(&ex);
    let infos = info_lines(&text);
    let sandbox_flows = sb.sandbox.flows();
    assert_eq!(infos.len(), sandbox_flows.len(), "{infos:#?}");
    for f in &sandbox_flows {
        assert!(
            infos
                .iter()
                .any(|l| l.contains(&format!("flow_id=\"{}\"", f.id))),
            "flow {} missing",
            f.id
        );
    }
    // Paging was followed: more listing calls than WABAs.
    let calls = ex
        .telemetry()
        .graph_requests(Endpoint::Flows, Outcome::Success);
    assert!(calls > 2, "listing took {calls} calls; paging not followed");
}

#[tokio::test]
async fn paging_next_is_followed_against_the_configured_base() {
    // The sandbox's paging.next names graph.facebook.com; had the exporter
    // followed it, the call would fail (no network) and flows would be missing.
    let sb = realistic().await;
    sb.sandbox.set_page_size(1);
    let ex = exporter(&sb.base_url);
    ex.discover().await;
    assert_eq!(ex.snapshot().flows.len(), sb.sandbox.flows().len());
    assert_eq!(
        ex.telemetry()
            .graph_requests(Endpoint::Flows, Outcome::Failed(ErrorClass::Network)),
        0
    );
}

#[tokio::test]
async fn draft_and_deprecated_flows_are_never_polled() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let skipped: Vec<String> = sb
        .sandbox
        .flows()
        .into_iter()
        .filter(|f| matches!(f.status.as_str(), "DRAFT" | "DEPRECATED"))
        .map(|f| f.id)
        .collect();
    assert_eq!(
        skipped.len(),
        2,
        "realistic data has one DRAFT and one DEPRECATED flow"
    );
    let calls = sb.sandbox.metric_requests();
    assert!(!calls.is_empty());
    for (flow, _, _) in &calls {
        assert!(!skipped.contains(flow), "{flow} was polled");
    }
    // One call per polled flow x metric x granularity, no more.
    let polled = ex.snapshot().polled_flows().len();
    assert_eq!(calls.len(), polled * 5 * 3);
    let text = scrape(&ex);
    for id in &skipped {
        assert_eq!(
            samples(&text, "whatsapp_flows_")
                .iter()
                .filter(|l| l.contains(id.as_str()))
                .count(),
            1,
            "only flow_info for unpolled flow {id}"
        );
    }
}

#[tokio::test]
async fn vanished_flows_disappear_and_new_ones_appear() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let gone = sb
        .sandbox
        .flows()
        .into_iter()
        .find(|f| f.status == "PUBLISHED")
        .expect("a published flow");
    let before = scrape(&ex);
    assert!(before.contains(&format!("flow_id=\"{}\"", gone.id)));

    sb.sandbox.remove_flow(&gone.id);
    let mut newcomer = gone.clone();
    newcomer.id = "999000111222333".into();
    newcomer.name = "Brand new".into();
    sb.sandbox.add_flow(newcomer);
    ex.discover().await;
    let after = scrape(&ex);
    assert!(
        !after.contains(&format!("flow_id=\"{}\"", gone.id)),
        "series of a deleted flow linger"
    );
    assert!(after.contains("flow_id=\"999000111222333\""));
    ex.poll(Granularity::Hour).await;
    let polled = scrape(&ex);
    assert!(polled.contains(
        "whatsapp_flows_endpoint_requests{flow_id=\"999000111222333\",granularity=\"hour\"}"
    ));
}

#[tokio::test]
async fn static_flows_are_polled_without_discovery() {
    let sb = realistic().await;
    let some = sb
        .sandbox
        .flows()
        .into_iter()
        .find(|f| f.status == "PUBLISHED" && f.waba_id == WABA_1)
        .expect("a published flow");
    let text = format!(
        r#"
[graph]
base_url = "{}"
retry_backoff = "10ms"
[[flows]]
id = "{}"
name = "Configured name"
[granularity.day]
enabled = false
[granularity.lifetime]
enabled = false
"#,
        sb.base_url, some.id
    );
    let ex = exporter_with(&text, TOKEN);
    ex.startup().await;
    let out = scrape(&ex);
    assert_eq!(
        info_lines(&out),
        vec![format!(
            "whatsapp_flows_flow_info{{flow_id=\"{}\",flow_name=\"Configured name\",waba_id=\"\",status=\"UNKNOWN\",can_send_message=\"\",data_api_version=\"\",source=\"static\"}} 1",
            some.id
        )]
    );
    assert!(out.contains(&format!(
        "whatsapp_flows_endpoint_requests{{flow_id=\"{}\",granularity=\"hour\"}}",
        some.id
    )));
    assert_eq!(
        sb.sandbox.metric_requests().len(),
        5,
        "5 metrics x hour only"
    );
}
