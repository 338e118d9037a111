//! Prometheus text exposition: a small parser and a scraper (reqwest) for the syncer's admin
//! port.
//!
//! The parser keeps every sample line as it is (`_bucket`, `_sum` and `_count` apart), which is
//! what the scenarios sum and subtract; the `prometheus-parse` crate folds histograms and
//! summaries into one value per series and brings regex and chrono, so it does not fit here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        Self {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Sum of the samples named `name` whose labels include every `(key, value)` of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Sums of the samples named `name`, grouped by the values of the label `by`.
    pub fn sum_by(&self, name: &str, by: &[&str]) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            let key = by
                .iter()
                .map(|b| s.labels.get(*b).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ");
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let name = &line[..open];
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (name, labels, after)
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the closing brace.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'}' {
            return Some((labels, &s[i + 1..]));
        }
        let eq = s[i..].find('=')? + i;
        let key = s[i..eq].trim().to_string();
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let mut value = String::new();
        let mut chars = s[i..].char_indices();
        let mut end = None;
        while let Some((off, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i + off + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        i = end?;
        labels.insert(key, value);
    }
}

/// GETs `path` from a plain-HTTP admin port (10 s at most); the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let url = format!("http://{addr}{path}");
    let resp = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        bail!("GET {url}: {}", resp.status());
    }
    resp.text().await.with_context(|| format!("GET {url}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server answering one request per connection with `status` and body `metric 1`.
    async fn admin_port(status: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let body = "metric 1\n";
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(resp.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn scrapes_a_200_body_and_refuses_other_answers() {
        let ok = admin_port("200 OK").await;
        assert_eq!(http_get(ok, "/metrics").await.unwrap(), "metric 1\n");
        let busy = admin_port("503 Service Unavailable").await;
        let err = http_get(busy, "/readyz").await.unwrap_err().to_string();
        assert!(err.contains("503"), "{err}");
    }

    #[test]
    fn parses_labels_values_and_comments() {
        let text = r#"# HELP kvtenant_sync_api_calls API calls made.
# TYPE kvtenant_sync_api_calls counter
kvtenant_sync_api_calls_total{tenant="tenants/t1",cluster="host",verb="create"} 12
kvtenant_sync_api_calls_total{tenant="tenants/t2",cluster="host",verb="get"} 3
kvtenant_sync_api_calls_total{tenant="tenants/t1",cluster="tenant",verb="patch"} 5
kvtenant_sync_reconcile_seconds_bucket{le="+Inf",tenant="a \"q\", b"} 7
plain_metric 4.5
# EOF
"#;
        let s = Scrape::parse(text);
        assert_eq!(s.samples.len(), 5);
        assert_eq!(
            s.sum("kvtenant_sync_api_calls_total", &[("cluster", "host")]),
            15.0
        );
        assert_eq!(
            s.sum(
                "kvtenant_sync_api_calls_total",
                &[("cluster", "host"), ("tenant", "tenants/t1")]
            ),
            12.0
        );
        assert_eq!(s.samples[3].labels["tenant"], "a \"q\", b");
        assert_eq!(s.sum("plain_metric", &[]), 4.5);
        let by = s.sum_by("kvtenant_sync_api_calls_total", &["cluster"]);
        assert_eq!(by["tenant"], 5.0);
    }
}
