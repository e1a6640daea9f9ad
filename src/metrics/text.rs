//! Series rendered at scrape time, beside the recorder's: figures read from live state (the
//! queue census, destinations) whose label sets come and go with that state, so a label
//! nobody uses any more disappears instead of staying forever at its last value.

use std::fmt::Write;

/// One metric family in the Prometheus text format: HELP, TYPE, then its series.
pub struct Gauge<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Gauge<'a> {
    pub fn new(out: &'a mut String, name: &'static str, help: &str) -> Gauge<'a> {
        Self::of_type(out, name, help, "gauge")
    }

    /// A counter read from elsewhere (the kernel's CPU time), written as it stands.
    pub fn counter(out: &'a mut String, name: &'static str, help: &str) -> Gauge<'a> {
        Self::of_type(out, name, help, "counter")
    }

    fn of_type(out: &'a mut String, name: &'static str, help: &str, kind: &str) -> Gauge<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Gauge { out, name }
    }

    pub fn value(&mut self, value: f64) {
        let _ = writeln!(self.out, "{} {value}", self.name);
    }

    pub fn labelled(&mut self, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(self.name);
        self.out.push('{');
        for (i, (key, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{key}=\"");
            escape(self.out, v);
            self.out.push('"');
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

/// Label values escape backslash, double quote and line feed (the exposition format's rule).
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_label_value_stays_inside_its_quotes() {
        let mut out = String::new();
        let mut g = Gauge::new(&mut out, "sluice_x", "help");
        g.labelled(&[("destination", "a\"} 1\nsluice_y 2 \\")], 3.0);
        g.value(1.5);
        assert_eq!(
            out,
            "# HELP sluice_x help\n# TYPE sluice_x gauge\nsluice_x{destination=\"a\\\"} 1\\nsluice_y 2 \\\\\"} 3\nsluice_x 1.5\n"
        );
    }
}
