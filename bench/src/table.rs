//! Result tables (comfy-table, Markdown style, so a result pastes into a document as it is)
//! and the percentiles they show.

use comfy_table::presets::ASCII_MARKDOWN;
use comfy_table::{CellAlignment, Table};

/// A table with these columns: the first (a label) left-aligned, the others (figures) right.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(ASCII_MARKDOWN)
        .set_header(header.iter().copied());
    for col in t.column_iter_mut().skip(1) {
        col.set_cell_alignment(CellAlignment::Right);
    }
    t
}

/// The `p` quantile (0.0 to 1.0) of `v`, nearest rank; 0 when empty. Sorts `v`.
pub fn pct(v: &mut [i64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_right_aligned_under_their_header() {
        let mut t = table(&["pipeline", "steps"]);
        t.add_row(vec!["chain".to_string(), "200".to_string()]);
        t.add_row(vec!["loop".to_string(), "1000".to_string()]);
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("pipeline") && lines[0].contains("steps"),
            "{text}"
        );
        let col = |line: &str, s: &str| line.find(s).map(|i| i + s.len());
        // Right-aligned: the numbers end in the same column.
        assert_eq!(col(lines[2], "200"), col(lines[3], "1000"), "{text}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(pct(&mut v, 0.5), 3.0);
        assert_eq!(pct(&mut v, 1.0), 5.0);
        assert_eq!(pct(&mut v, 0.0), 1.0);
        assert_eq!(pct(&mut [], 0.5), 0.0);
    }
}
