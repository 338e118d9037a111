//! Latency summaries (nearest-rank percentiles).

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=100).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[Duration]) -> Summary {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Summary::default();
    }
    let total: Duration = s.iter().sum();
    Summary {
        count: s.len(),
        min_ms: ms(s[0]),
        p50_ms: ms(percentile(&s, 50.0)),
        p95_ms: ms(percentile(&s, 95.0)),
        p99_ms: ms(percentile(&s, 99.0)),
        max_ms: ms(s[s.len() - 1]),
        mean_ms: ms(total / s.len() as u32),
    }
}

/// Median of values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Spread of repeated measurements: min, max and (max - min) / median in percent.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub spread_pct: f64,
}

pub fn spread(values: &[f64]) -> Spread {
    let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let med = median(&finite);
    Spread {
        runs: finite.len(),
        min,
        median: med,
        max,
        spread_pct: if med > 0.0 {
            (max - min) / med * 100.0
        } else {
            f64::NAN
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = summarize(&samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p95_ms, 95.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.min_ms, 1.0);
        let one = summarize(&[Duration::from_millis(7)]);
        assert_eq!(one.p99_ms, 7.0);
        assert_eq!(summarize(&[]).count, 0);
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s = spread(&[10.0, 12.0]);
        assert_eq!(s.runs, 2);
        assert!((s.spread_pct - 2.0 / 11.0 * 100.0).abs() < 1e-9);
    }
}
