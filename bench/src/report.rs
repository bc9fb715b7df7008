//! The numbers of a run, their medians over the runs, and the one
//! machine-readable line per scenario.

use crate::machine::load_average;

#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Count,
    Seconds,
    Rate,
    Ratio,
    Mib,
    Millis,
}

/// The numbers of one run, in print order.
#[derive(Debug, Default, Clone)]
pub struct Sample(Vec<(&'static str, Unit, f64)>);

impl Sample {
    pub fn push(&mut self, key: &'static str, unit: Unit, value: f64) {
        self.0.push((key, unit, value));
    }

    pub fn get(&self, key: &str) -> f64 {
        self.0
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(f64::NAN, |(_, _, v)| *v)
    }

    pub fn render(&self) -> String {
        self.0
            .iter()
            .map(|(key, unit, value)| format!("{key}={}", format_value(*unit, *value)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn format_value(unit: Unit, value: f64) -> String {
    if !value.is_finite() {
        return "none".to_owned();
    }
    match unit {
        Unit::Count | Unit::Rate => format!("{value:.0}"),
        Unit::Seconds | Unit::Ratio => format!("{value:.3}"),
        Unit::Mib | Unit::Millis => format!("{value:.1}"),
    }
}

/// One run's numbers on stderr, with the machine's load at the time.
pub fn log_run(label: &str, run: usize, runs: usize, sample: &Sample) {
    eprintln!(
        "{label} run {run}/{runs} ({}): {}",
        load_average(),
        sample.render()
    );
}

/// The median of every number over the runs (same keys in every run).
pub fn medians(runs: &[Sample]) -> Sample {
    let mut out = Sample::default();
    if let Some(first) = runs.first() {
        for (key, unit, _) in &first.0 {
            let mut values: Vec<f64> = runs.iter().map(|run| run.get(key)).collect();
            values.sort_by(f64::total_cmp);
            out.push(key, *unit, values[values.len() / 2]);
        }
    }
    out
}

/// `bench scenario=NAME key=value … target=… met=yes|no`.
pub fn line(
    scenario: &str,
    fixed: &[(&str, String)],
    median: &Sample,
    target: &str,
    met: bool,
) -> String {
    let mut text = format!("bench scenario={scenario}");
    for (key, value) in fixed {
        text.push_str(&format!(" {key}={value}"));
    }
    text.push(' ');
    text.push_str(&median.render());
    text.push_str(&format!(
        " target={target} met={}",
        if met { "yes" } else { "no" }
    ));
    text
}
