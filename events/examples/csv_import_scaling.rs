//! How the time of `parse_import_csv` grows with the number of rows: a
//! linear parser takes about ten times as long for ten times the rows.
//!
//! ```text
//! cargo run --release -p palworker-events --example csv_import_scaling [ROWS…]
//! ```
//!
//! Without arguments it parses 20,000 and 200,000 rows. Every tenth record
//! has a quoted multi-line cell (trimmed away on import), so line numbers
//! cannot be derived from record numbers. A measurement, not a test: tests
//! never assert on time.

use std::fmt::Write as _;
use std::time::Instant;

use palworker_events::parse_import_csv;

/// A CSV inventory of `rows` distinct accounts.
fn inventory(rows: usize) -> String {
    let mut text = String::from("tenant_id,object_id,employee_id,credential,contract_id\n");
    for row in 0..rows {
        let tenant = row % 1000;
        // Cannot fail: writing to a String.
        let _ = if row % 10 == 0 {
            writeln!(
                text,
                "{tenant:08x}-0000-4000-8000-000000000000,{row:08x}-0000-4000-8000-000000000001,\"E-{row}\n\",automation,\"\nC-7, phase 2\n\""
            )
        } else {
            writeln!(
                text,
                "{tenant:08x}-0000-4000-8000-000000000000,{row:08x}-0000-4000-8000-000000000001,E-{row},automation,C-7"
            )
        };
    }
    text
}

fn main() {
    let arguments: Vec<usize> = std::env::args()
        .skip(1)
        .map(|argument| argument.parse().expect("ROWS must be a number"))
        .collect();
    let sizes = if arguments.is_empty() {
        vec![20_000, 200_000]
    } else {
        arguments
    };
    let mut previous: Option<(usize, f64)> = None;
    for rows in sizes {
        let text = inventory(rows);
        let started = Instant::now();
        let accounts = parse_import_csv(&text).expect("the generated inventory is valid");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(accounts.len(), rows);
        let growth = previous
            .map(|(before_rows, before_seconds)| {
                format!(
                    " ({:.1}x the time for {:.1}x the rows)",
                    seconds / before_seconds,
                    rows as f64 / before_rows as f64
                )
            })
            .unwrap_or_default();
        println!(
            "{rows} rows, {} bytes: {:.3} s{growth}",
            text.len(),
            seconds
        );
        previous = Some((rows, seconds));
    }
}
