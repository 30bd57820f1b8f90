//! `/metrics` in the Prometheus text format (0.0.4) or OpenMetrics 1.0, chosen by
//! the `Accept` header the way Prometheus negotiates; a plain request keeps the
//! seed's JSON array (see `admin`).

use std::fmt::Write;

use switchyard_shared::LATENCY_BUCKETS_S;

use super::metrics::{Kind, Reading, Sample, TABLE, Value};

/// Output format for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The seed's JSON array.
    Json,
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// What an `Accept` header asks for: OpenMetrics if listed, Prometheus text for
    /// `text/plain`, otherwise JSON.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Json;
        };
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else if accept.contains("text/plain") {
            Format::Prometheus
        } else {
            Format::Json
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A text exposition being written (also used for the TLS families, `tls::metrics`).
pub(crate) struct Out {
    pub(crate) buf: String,
    /// OpenMetrics (else Prometheus text).
    pub(crate) open: bool,
}

impl Out {
    /// Starts a family. For counters, `name` ends in `_total`; OpenMetrics names the
    /// family without it.
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let family = if self.open && kind == Kind::Counter {
            name.strip_suffix("_total").unwrap_or(name)
        } else {
            name
        };
        let _ = writeln!(self.buf, "# HELP {family} {help}");
        let _ = writeln!(self.buf, "# TYPE {family} {}", kind.as_str());
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                let _ = write!(self.buf, "{k}=\"{}\"", escape(v));
            }
            self.buf.push('}');
        }
        let _ = writeln!(self.buf, " {}", fmt_value(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], counts: &[u64], sum: f64) {
        let mut cumulative = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            let le = match LATENCY_BUCKETS_S.get(i) {
                Some(b) => fmt_value(*b),
                None => "+Inf".to_string(),
            };
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Renders every family of the table from `reading`.
pub fn render(reading: &Reading<'_>, format: Format) -> String {
    let mut o = Out {
        buf: String::with_capacity(8 * 1024),
        open: format == Format::OpenMetrics,
    };
    let mut samples: Vec<Sample> = Vec::new();
    for def in TABLE {
        samples.clear();
        (def.read)(reading, &mut samples);
        if samples.is_empty() && def.optional() {
            continue;
        }
        o.family(def.name, def.kind, def.help);
        for s in &samples {
            let labels: Vec<(&str, &str)> = def
                .labels
                .iter()
                .copied()
                .zip(s.labels.iter().map(String::as_str))
                .collect();
            match &s.value {
                Value::Int(v) => o.sample(def.name, &labels, *v as f64),
                Value::Histogram { counts, sum } => o.histogram(def.name, &labels, counts, *sum),
            }
        }
    }
    if o.open {
        o.buf.push_str("# EOF\n");
    }
    o.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_prometheus_accept_headers() {
        assert_eq!(Format::negotiate(None), Format::Json);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Json);
        assert_eq!(Format::negotiate(Some("application/json")), Format::Json);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
