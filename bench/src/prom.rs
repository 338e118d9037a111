//! Prometheus text exposition: a small parser and an HTTP/1.0 scraper for the syncer's
//! admin port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// GETs `path` from a plain-HTTP admin port (HTTP/1.0, so the body ends with the connection).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET http://{addr}{path}: malformed response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("GET http://{addr}{path}: {status}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
