//! Reading a `/metrics` endpoint as Prometheus does: an HTTP GET, then the samples of the
//! text exposition format (`name{label="value",...} number`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

/// GETs `http://{addr}/metrics`, expecting 200 and the text format.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK, "GET /metrics");
    let body = response.text().await.expect("the /metrics body");
    parse(&body)
}

/// The samples of a text exposition; comments (`# HELP`, `# TYPE`) are skipped.
pub fn parse(body: &str) -> Scrape {
    let samples = body
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| parse_line(line).unwrap_or_else(|| panic!("not a sample line: {line}")))
        .collect();
    Scrape { samples }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(at) => line.split_at(at),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches(',');
            if let Some(after) = inner.strip_prefix('}') {
                break after;
            }
            let (key, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (at, '"') => break at,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            inner = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

impl Scrape {
    /// The value of the one sample named `name` whose labels include `labels`; `None` when
    /// there is none (a labelled series appears only once it has been set).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next()?;
        assert!(
            found.next().is_none(),
            "more than one sample {name} with {labels:?}"
        );
        Some(first.value)
    }

    /// [`Scrape::value`], 0 when absent (a counter series not yet incremented).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The names of every sample (a histogram `x` is `x_bucket`, `x_sum` and `x_count`, as
    /// PromQL reads it).
    pub fn names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| s.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_and_values() {
        let scrape = parse(
            "# HELP x_total things\n# TYPE x_total counter\n\
             x_total{code=\"OK\",method=\"/a.B/C\"} 3\n\
             y_bucket{le=\"+Inf\",m=\"q\\\"uote\"} 7\ny 1.5\n",
        );
        assert_eq!(scrape.value("x_total", &[("code", "OK")]), Some(3.0));
        assert_eq!(scrape.value("y_bucket", &[("m", "q\"uote")]), Some(7.0));
        assert_eq!(scrape.value("y", &[]), Some(1.5));
        assert_eq!(scrape.count("x_total", &[("code", "NOT_FOUND")]), 0.0);
    }
}
