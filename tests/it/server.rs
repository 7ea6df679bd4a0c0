//! The HTTP surface: /metrics (plain and gzip), /, /-/healthy, /-/ready.

use std::io::Read;

use crate::support::*;

#[tokio::test]
async fn metrics_plain_and_gzip_are_the_same_text() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let srv = start_server(ex.clone()).await;
    let client = http();

    let plain = client
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .expect("scrape");
    assert_eq!(plain.status(), 200);
    assert_eq!(
        plain.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.text().await.expect("body");
    assert!(plain.contains("whatsapp_flows_flow_info{"));
    assert!(plain.contains("whatsapp_flows_exporter_build_info{"));

    let gz = client
        .get(format!("{}/metrics", srv.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("scrape");
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let bytes = gz.bytes().await.expect("body");
    assert!(bytes.len() * 3 < plain.len(), "gzip should shrink the body");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("one valid gzip member");
    // The live part (process metrics, durations) may differ between two
    // scrapes; the per-flow part must not.
    let flow_part = |t: &str| {
        samples(t, "whatsapp_flows_")
            .into_iter()
            .filter(|l| !l.starts_with("whatsapp_flows_exporter_"))
            .collect::<Vec<_>>()
    };
    assert_eq!(flow_part(&text), flow_part(&plain));

    let refused = client
        .get(format!("{}/metrics", srv.base))
        .header("accept-encoding", "gzip;q=0")
        .send()
        .await
        .expect("scrape");
    assert!(refused.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn ready_only_after_the_first_poll() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    let srv = start_server(ex.clone()).await;
    let client = http();
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("{}{path}", srv.base);
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/-/healthy").await, 200);
    assert_eq!(get("/-/ready").await, 503);
    assert_eq!(
        get("/metrics").await,
        200,
        "/metrics answers before the first poll"
    );
    ex.startup().await;
    assert_eq!(get("/-/ready").await, 200);
    assert_eq!(get("/nope").await, 404);
    let post = client
        .post(format!("{}/metrics", srv.base))
        .send()
        .await
        .expect("request");
    assert_eq!(post.status(), 405);
    let head = client
        .head(format!("{}/metrics", srv.base))
        .send()
        .await
        .expect("request");
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn landing_page_lists_flows_with_names_escaped() {
    let sb = realistic().await;
    let mut hostile = sb.sandbox.flows()[0].clone();
    hostile.id = "555000111222333".into();
    hostile.name = "<script>alert(1)</script>".into();
    sb.sandbox.add_flow(hostile);
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let srv = start_server(ex.clone()).await;
    let page = http()
        .get(format!("{}/", srv.base))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    for f in sb.sandbox.flows() {
        assert!(page.contains(&f.id), "landing page lacks {}", f.id);
    }
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script>"));
    assert!(page.contains("href=\"/metrics\""));
    assert!(
        page.contains("2024-01-30 12:00:00 UTC"),
        "last poll time per flow"
    );
}

/// Sends raw bytes and returns the status line of the answer (or what came back).
async fn raw_exchange(base: &str, request: &[u8]) -> String {
    let answer = raw(base.trim_start_matches("http://"), request).await;
    answer.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn junk_gets_a_4xx_and_the_server_keeps_serving() {
    let sb = realistic().await;
    let ex = exporter(&sb.base_url);
    ex.startup().await;
    let srv = start_server(ex.clone()).await;

    let junk = raw_exchange(
        &srv.base,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(
        junk.starts_with("HTTP/1.1 400"),
        "junk answered with {junk:?}"
    );
    let huge_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let big = raw_exchange(&srv.base, huge_header.as_bytes()).await;
    assert!(
        big.starts_with("HTTP/1.1 431") || big.starts_with("HTTP/1.1 400"),
        "an oversized head answered with {big:?}"
    );
    let status = http()
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .expect("scrape after junk")
        .status();
    assert_eq!(status, 200);
}
