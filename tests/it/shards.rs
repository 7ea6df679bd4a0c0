//! Sharding the polling by WABA over replicas: every WABA has one owner, the
//! union of what the replicas export is what one exporter exports (series
//! for series, value for value, none twice), and one more replica moves
//! about its share of the WABAs.

use std::collections::BTreeSet;
use std::sync::Arc;

use flows_exporter::config::{Config, Secret};
use flows_exporter::exporter::Exporter;
use flows_exporter::model::{Clock, Granularity};
use flows_exporter::sandbox::{Sandbox, SandboxFlow, Traffic};
use flows_exporter::shard::{Shard, shard_of};

use crate::support::*;

const WABAS: usize = 24;
/// A static flow of a WABA no one lists, sharded by its own id.
const LONE_STATIC: &str = "761204397754120";

fn sandbox() -> Sandbox {
    let sandbox = Sandbox::generated_wabas(120, WABAS, TOKEN, Clock::fixed(now()));
    sandbox.add_flow(SandboxFlow {
        id: LONE_STATIC.into(),
        name: "Partner referral".into(),
        waba_id: "109876543210987".into(),
        status: "PUBLISHED".into(),
        data_api_version: "3.0".into(),
        can_send_message: "AVAILABLE".into(),
        traffic: Traffic::Normal { base_per_hour: 45 },
    });
    sandbox
}

fn config(base_url: &str, cluster: &str) -> Config {
    let mut text = format!(
        "[graph]\nbase_url = \"{base_url}\"\nmax_concurrency = 8\nmax_retries = 0\n\
         [rate_limit]\nmin_call_interval = \"0s\"\nslow_down_at = 0.99\nstop_at = 1.0\n\
         [granularity.lifetime]\nenabled = false\n{cluster}\n"
    );
    for w in 0..WABAS {
        text.push_str(&format!(
            "[[wabas]]\nid = \"{}\"\n",
            Sandbox::generated_waba(w)
        ));
    }
    // One static flow named with its WABA, one without.
    text.push_str(&format!(
        "[[flows]]\nid = \"900000000000005\"\nname = \"Pinned\"\nwaba = \"{}\"\n[[flows]]\nid = \"{LONE_STATIC}\"\n",
        Sandbox::generated_waba(5)
    ));
    Config::parse(&text).expect("valid")
}

/// The per-flow part of `/metrics` after a discovery and a poll of each
/// granularity, as sample lines.
async fn exported(base_url: &str, cluster: &str) -> (Arc<Exporter>, BTreeSet<String>) {
    let config = config(base_url, cluster);
    let granularities: Vec<Granularity> =
        config.granularities.iter().map(|g| g.granularity).collect();
    let ex = Exporter::new(config, Secret::new(TOKEN), Clock::fixed(now())).expect("exporter");
    ex.discover().await;
    for g in &granularities {
        ex.poll(*g).await;
    }
    let text = flows_exporter::exposition::render(&ex.snapshot(), &granularities, 0);
    let lines = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    (ex, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_export_what_one_exports_and_nothing_twice() {
    let sb = start_sandbox(sandbox()).await;
    let (_, whole) = exported(&sb.base_url, "").await;
    assert!(whole.len() > 1000, "{} lines", whole.len());
    let mut union = BTreeSet::new();
    let mut sizes = Vec::new();
    for index in 0..3 {
        let (ex, part) = exported(
            &sb.base_url,
            &format!("[cluster]\nshard_index = {index}\nshard_total = 3\n"),
        )
        .await;
        assert!(!part.is_empty(), "shard {index} has work");
        let text = scrape(&ex);
        assert_eq!(
            value(&text, "whatsapp_flows_exporter_shard_ordinal"),
            Some(f64::from(index))
        );
        assert_eq!(
            value(&text, "whatsapp_flows_exporter_total_shards"),
            Some(3.0)
        );
        for line in &part {
            assert!(union.insert(line.clone()), "exported twice: {line}");
        }
        sizes.push(part.len());
    }
    assert_eq!(union, whole, "the union is the whole");
    // The static flows went where the rule says.
    let pinned_owner = shard_of(&Sandbox::generated_waba(5), 3);
    let lone_owner = shard_of(LONE_STATIC, 3);
    eprintln!(
        "lines per shard {sizes:?}; pinned flow on shard {pinned_owner}, lone static on shard {lone_owner}"
    );
}

#[test]
fn one_more_replica_moves_about_a_quarter_of_the_wabas() {
    let ids: Vec<String> = (0..1000).map(Sandbox::generated_waba).collect();
    let moved = ids
        .iter()
        .filter(|w| shard_of(w, 3) != shard_of(w, 4))
        .count();
    eprintln!("3 -> 4 replicas: {moved} of {} WABAs moved", ids.len());
    assert!((200..=300).contains(&moved), "{moved} moved");
    for w in &ids {
        let owners = (0..4)
            .filter(|i| Shard::new(*i, 4).expect("valid").owns(w))
            .count();
        assert_eq!(owners, 1);
    }
}
