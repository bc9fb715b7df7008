//! The overview's two charts, drawn by the worker as inline SVG (no script,
//! no chart library): actions finished per hour, and time to revocation
//! per hour, over the last 24 hours. Colours are CSS classes of
//! `console.css`; each chart has a text title and description, every bar a
//! tooltip, and the numbers follow in a table for screen readers and
//! copying.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};

use super::layout::seconds_text;
use super::tally::{Hour, WINDOW_HOURS, hour_of};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 40.0;

/// The hours shown: the last [`WINDOW_HOURS`], the current one last.
fn hours_shown(now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let last = hour_of(now);
    (0..WINDOW_HOURS)
        .rev()
        .map(|back| last - Duration::hours(back))
        .collect()
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

/// The x of the left edge of hour `index`'s slot, and the slot's width.
fn slot(index: usize) -> (f64, f64) {
    let width = plot_width() / WINDOW_HOURS as f64;
    (LEFT + width * index as f64, width)
}

/// The hour labels under the plot, every third hour.
fn hour_axis(hours: &[DateTime<Utc>]) -> Markup {
    html! {
        line class="axis" x1=(LEFT) y1=(TOP + plot_height()) x2=(WIDTH - RIGHT) y2=(TOP + plot_height()) {}
        @for (index, hour) in hours.iter().enumerate() {
            @if index % 3 == 0 {
                @let (x, width) = slot(index);
                text class="tick" x=(x + width / 2.0) y=(TOP + plot_height() + 16.0) text-anchor="middle" {
                    (hour.format("%H:00"))
                }
            }
        }
        text class="tick" x=(WIDTH - RIGHT) y=(HEIGHT - 4.0) text-anchor="end" { "hour (UTC)" }
    }
}

/// A round number at or above `max` for the top of a count axis.
fn nice_ceiling(max: u64) -> u64 {
    let max = max.max(1);
    let magnitude = 10u64.pow(max.ilog10());
    for step in [1, 2, 5, 10] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10 * magnitude
}

/// A count axis's label: whole numbers as such, halves with one decimal.
fn tick_text(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Actions finished per hour, stacked: succeeded, failed, other.
pub fn actions_per_hour(hours: &BTreeMap<DateTime<Utc>, Hour>, now: DateTime<Utc>) -> Markup {
    let shown = hours_shown(now);
    let empty = Hour::default();
    let rows: Vec<(&DateTime<Utc>, &Hour)> = shown
        .iter()
        .map(|hour| (hour, hours.get(hour).unwrap_or(&empty)))
        .collect();
    let total: u64 = rows.iter().map(|(_, hour)| hour.finished()).sum();
    let top = nice_ceiling(
        rows.iter()
            .map(|(_, hour)| hour.finished())
            .max()
            .unwrap_or(0),
    );
    let scale = |count: u64| count as f64 / top as f64 * plot_height();
    let description = format!(
        "{total} actions finished in the last {WINDOW_HOURS} hours; the busiest hour had {}.",
        rows.iter()
            .map(|(_, hour)| hour.finished())
            .max()
            .unwrap_or(0)
    );
    html! {
        figure class="chart" {
            figcaption { "Actions finished per hour" }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby="chart-actions-title chart-actions-desc" {
                title id="chart-actions-title" { "Actions finished per hour, last 24 hours" }
                desc id="chart-actions-desc" { (description) }
                @for fraction in [0.0, 0.5, 1.0] {
                    @let y = TOP + plot_height() * (1.0 - fraction);
                    line class="grid" x1=(LEFT) y1=(y) x2=(WIDTH - RIGHT) y2=(y) {}
                    text class="tick" x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (tick_text(top as f64 * fraction)) }
                }
                @for (index, (hour, counts)) in rows.iter().enumerate() {
                    @let (x, width) = slot(index);
                    @let bar_x = x + width * 0.15;
                    @let bar_width = width * 0.7;
                    @let base = TOP + plot_height();
                    @let succeeded = scale(counts.succeeded);
                    @let failed = scale(counts.failed);
                    @let other = scale(counts.other);
                    @let label = format!("{}–{}: {} succeeded, {} failed, {} other", hour.format("%H:00"), (**hour + Duration::hours(1)).format("%H:00"), counts.succeeded, counts.failed, counts.other);
                    g {
                        title { (label) }
                        rect class="bar-ok" x=(bar_x) y=(base - succeeded) width=(bar_width) height=(succeeded) {}
                        rect class="bar-failed" x=(bar_x) y=(base - succeeded - failed) width=(bar_width) height=(failed) {}
                        rect class="bar-other" x=(bar_x) y=(base - succeeded - failed - other) width=(bar_width) height=(other) {}
                    }
                }
                (hour_axis(&shown))
            }
            p class="legend" {
                span class="key key-ok" {} "succeeded (done, unchanged) "
                span class="key key-failed" {} "failed "
                span class="key key-other" {} "other (cancelled, manual, skipped, orphaned)"
            }
            details {
                summary { "The numbers" }
                div class="table-wrap" {
                    table {
                        thead { tr { th scope="col" { "Hour (UTC)" } th scope="col" { "Succeeded" } th scope="col" { "Failed" } th scope="col" { "Other" } } }
                        tbody {
                            @for (hour, counts) in &rows {
                                tr { td { (hour.format("%Y-%m-%d %H:00")) } td { (counts.succeeded) } td { (counts.failed) } td { (counts.other) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Ticks of the time-to-revocation axis (log scale).
const TIME_TICKS: [(f64, &str); 5] = [
    (1.0, "1 s"),
    (60.0, "1 min"),
    (3600.0, "1 h"),
    (86400.0, "1 d"),
    (2_592_000.0, "30 d"),
];

/// The y of `seconds` on the log-scale axis from 1 s to 30 days.
fn time_y(seconds: f64) -> f64 {
    let top = 2_592_000f64.log10();
    let fraction = (seconds.max(1.0).log10() / top).clamp(0.0, 1.0);
    TOP + plot_height() * (1.0 - fraction)
}

/// Time to revocation per hour: the median as a bar, the longest as a
/// mark above it.
pub fn time_to_revocation(hours: &BTreeMap<DateTime<Utc>, Hour>, now: DateTime<Utc>) -> Markup {
    let shown = hours_shown(now);
    let empty = Hour::default();
    let rows: Vec<(&DateTime<Utc>, &Hour)> = shown
        .iter()
        .map(|hour| (hour, hours.get(hour).unwrap_or(&empty)))
        .collect();
    let removed: u64 = rows.iter().map(|(_, hour)| hour.revoked()).sum();
    let longest = rows
        .iter()
        .map(|(_, hour)| hour.revocation_max)
        .fold(0.0, f64::max);
    let description = if removed == 0 {
        format!("No link was verified removed in the last {WINDOW_HOURS} hours.")
    } else {
        format!(
            "{removed} links verified removed in the last {WINDOW_HOURS} hours; the longest took {}.",
            seconds_text(longest)
        )
    };
    html! {
        figure class="chart" {
            figcaption { "Time to revocation per hour" }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby="chart-revocation-title chart-revocation-desc" {
                title id="chart-revocation-title" { "Time to revocation per hour, last 24 hours" }
                desc id="chart-revocation-desc" { (description) }
                @for (seconds, label) in TIME_TICKS {
                    @let y = time_y(seconds);
                    line class="grid" x1=(LEFT) y1=(y) x2=(WIDTH - RIGHT) y2=(y) {}
                    text class="tick" x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (label) }
                }
                @for (index, (hour, counts)) in rows.iter().enumerate() {
                    @if let Some(median) = counts.revocation_median() {
                        @let (x, width) = slot(index);
                        @let bar_x = x + width * 0.2;
                        @let bar_width = width * 0.6;
                        @let base = TOP + plot_height();
                        @let y = time_y(median);
                        @let max_y = time_y(counts.revocation_max);
                        g {
                            title { (format!("{}–{}: {} removed, median {}, longest {}", hour.format("%H:00"), (**hour + Duration::hours(1)).format("%H:00"), counts.revoked(), seconds_text(median), seconds_text(counts.revocation_max))) }
                            rect class="bar-revocation" x=(bar_x) y=(y) width=(bar_width) height=((base - y).max(1.0)) {}
                            line class="mark-max" x1=(bar_x) y1=(max_y) x2=(bar_x + bar_width) y2=(max_y) {}
                        }
                    }
                }
                (hour_axis(&shown))
                @if removed == 0 {
                    text class="empty" x=(LEFT + plot_width() / 2.0) y=(TOP + plot_height() / 2.0) text-anchor="middle" { "no link removed in the last 24 hours" }
                }
            }
            p class="legend" {
                span class="key key-revocation" {} "median "
                span class="key key-max" {} "longest — from the event's effective time (else its acceptance) to the verified removal"
            }
            details {
                summary { "The numbers" }
                div class="table-wrap" {
                    table {
                        thead { tr { th scope="col" { "Hour (UTC)" } th scope="col" { "Links removed" } th scope="col" { "Median" } th scope="col" { "Longest" } } }
                        tbody {
                            @for (hour, counts) in &rows {
                                @if counts.revoked() > 0 {
                                    tr {
                                        td { (hour.format("%Y-%m-%d %H:00")) }
                                        td { (counts.revoked()) }
                                        td { (counts.revocation_median().map(seconds_text).unwrap_or_default()) }
                                        td { (seconds_text(counts.revocation_max)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_axes_end_on_a_round_number_at_or_above_the_largest() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(100), 100);
        assert_eq!(nice_ceiling(730), 1000);
    }

    #[test]
    fn a_chart_has_a_bar_group_per_busy_hour_and_a_text_alternative() {
        let now = Utc::now();
        let mut hours = BTreeMap::new();
        hours.insert(
            hour_of(now),
            Hour {
                succeeded: 3,
                failed: 1,
                ..Hour::default()
            },
        );
        let svg = actions_per_hour(&hours, now).into_string();
        assert!(
            svg.contains("4 actions finished in the last 24 hours"),
            "{svg}"
        );
        assert!(svg.contains("3 succeeded, 1 failed, 0 other"));
        let svg = time_to_revocation(&hours, now).into_string();
        assert!(svg.contains("no link removed"));
    }
}
