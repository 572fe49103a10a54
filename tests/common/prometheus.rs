//! Reading a Prometheus text exposition (the sidecar's `/metrics`, Envoy's
//! `/stats/prometheus`) in tests.

use std::collections::BTreeMap;

/// One exposition line: name, labels, value.
pub type Series = (String, BTreeMap<String, String>, f64);

/// The series of a Prometheus text exposition (label values without escapes, as here).
pub fn parse(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (head, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap())
        })
        .collect()
}

/// The values of `name`'s series whose labels include all of `want`.
pub fn values(all: &[Series], name: &str, want: &[(&str, &str)]) -> Vec<f64> {
    all.iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect()
}

/// The one series of `name` with the labels `want`.
pub fn one(all: &[Series], name: &str, want: &[(&str, &str)]) -> f64 {
    let v = values(all, name, want);
    assert_eq!(v.len(), 1, "{name} {want:?}: {v:?}");
    v[0]
}

/// Envoy's `/stats/prometheus` on its admin port.
pub fn envoy_stats(admin_port: u16) -> super::Resp {
    super::send(
        &super::agent(),
        "GET",
        &format!("http://127.0.0.1:{admin_port}/stats/prometheus"),
        &[],
        None,
    )
}
