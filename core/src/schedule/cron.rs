//! KFP's cron dialect (robfig/cron v1.2.0's `cron.Parse`, which KFP 2.16 uses): 5 or 6 fields,
//! **seconds first** — `sec min hour day-of-month month [day-of-week]` — with `*`, `?`, `a`,
//! `a-b`, `*/n`, `a-b/n`, `a/n`, lists, month and weekday names, and the descriptors
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. Times are
//! UTC. `@every <duration>` is a periodic schedule and is read by the caller.
//!
//! A Unix 5-field line such as `0 * * * *` is therefore "second 0 of every minute", as KFP
//! reads it; [`Cron::describe`] says what was understood so the user sees it.

use std::fmt::Write as _;

/// One parsed field: a bit per allowed value, and whether it was `*`/`?` (which matters for
/// how day-of-month and day-of-week combine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    star: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    second: Field,
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Longest cron text read.
const MAX_CRON_BYTES: usize = 256;

struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// What the first name stands for (1 for months, 0 for days).
    names_from: u32,
}

const SECOND: Bounds = Bounds {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const MINUTE: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const HOUR: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_from: 0,
};
const DOM: Bounds = Bounds {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    names_from: 0,
};
const MONTH: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    names_from: 1,
};
const DOW: Bounds = Bounds {
    name: "day of week",
    min: 0,
    max: 6,
    names: &DAYS,
    names_from: 0,
};

fn value(text: &str, b: &Bounds) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + b.names_from);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("{}: {text:?} is not a number", b.name))?;
    if v < b.min || v > b.max {
        return Err(format!("{}: {v} is outside {}-{}", b.name, b.min, b.max));
    }
    Ok(v)
}

fn field(text: &str, b: &Bounds) -> Result<Field, String> {
    let mut out = Field {
        bits: 0,
        star: false,
    };
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("{}: step {s:?} is not a number", b.name))?;
                if step == 0 || step > b.max.max(1) {
                    return Err(format!("{}: step {step} is out of range", b.name));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi, star) = if range == "*" || range == "?" {
            (b.min, b.max, true)
        } else if let Some((a, z)) = range.split_once('-') {
            let (a, z) = (value(a, b)?, value(z, b)?);
            if a > z {
                return Err(format!("{}: range {range} runs backwards", b.name));
            }
            (a, z, false)
        } else {
            let a = value(range, b)?;
            // `N/step` means from N to the end, stepping.
            (a, if step.is_some() { b.max } else { a }, false)
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            out.bits |= 1 << v;
            v += step;
        }
        out.star |= star && step == 1;
    }
    Ok(out)
}

impl Cron {
    /// Reads a cron line in KFP's dialect; the error names the field.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let text = text.trim();
        if text.len() > MAX_CRON_BYTES {
            return Err(format!("a cron line is at most {MAX_CRON_BYTES} bytes"));
        }
        let line = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_string(),
            "@monthly" => "0 0 0 1 * *".to_string(),
            "@weekly" => "0 0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_string(),
            "@hourly" => "0 0 * * * *".to_string(),
            d if d.starts_with('@') => {
                return Err(format!(
                    "unknown descriptor {text:?} (@yearly, @monthly, @weekly, @daily, @hourly, or @every DURATION)"
                ))
            }
            _ => text.to_string(),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let dow = match fields.len() {
            5 => "*",
            6 => fields[5],
            n => {
                return Err(format!(
                    "{n} fields: KFP's cron has 5 or 6, seconds first \
                     (sec min hour day-of-month month [day-of-week])"
                ))
            }
        };
        Ok(Cron {
            second: field(fields[0], &SECOND)?,
            minute: field(fields[1], &MINUTE)?,
            hour: field(fields[2], &HOUR)?,
            dom: field(fields[3], &DOM)?,
            month: field(fields[4], &MONTH)?,
            dow: field(dow, &DOW)?,
        })
    }

    fn day_matches(&self, dom: u32, dow: u32) -> bool {
        let d = self.dom.bits & (1 << dom) != 0;
        let w = self.dow.bits & (1 << dow) != 0;
        if self.dom.star || self.dow.star {
            d && w
        } else {
            d || w
        }
    }

    /// The first time strictly after `after` (Unix seconds, UTC) that matches; `None` if none
    /// within five years (robfig's limit too).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let from = after.checked_add(1)?;
        let first_day = from.div_euclid(86_400);
        let first_tod = from.rem_euclid(86_400) as u32;
        for day in first_day..first_day + 5 * 366 {
            let (_, month, dom) = civil_from_days(day);
            let dow = (day + 4).rem_euclid(7) as u32;
            if self.month.bits & (1 << month) == 0 || !self.day_matches(dom, dow) {
                continue;
            }
            let start = if day == first_day { first_tod } else { 0 };
            if let Some(tod) = self.first_time_of_day(start) {
                return Some(day * 86_400 + tod as i64);
            }
        }
        None
    }

    /// The first matching second of a day at or after `start` seconds into it.
    fn first_time_of_day(&self, start: u32) -> Option<u32> {
        let (h0, m0, s0) = (start / 3600, start / 60 % 60, start % 60);
        for h in h0..24 {
            if self.hour.bits & (1 << h) == 0 {
                continue;
            }
            let m_from = if h == h0 { m0 } else { 0 };
            for m in m_from..60 {
                if self.minute.bits & (1 << m) == 0 {
                    continue;
                }
                let s_from = if h == h0 && m == m0 { s0 } else { 0 };
                if let Some(s) = (s_from..60).find(|s| self.second.bits & (1 << s) != 0) {
                    return Some(h * 3600 + m * 60 + s);
                }
            }
        }
        None
    }

    /// What the line was read as, in words a user can check (for a 5-field Unix line that is
    /// not what they meant).
    pub fn describe(&self) -> String {
        let list = |f: &Field, b: &Bounds| -> String {
            if f.star {
                return "every".into();
            }
            let vals: Vec<String> = (b.min..=b.max)
                .filter(|v| f.bits & (1 << v) != 0)
                .map(|v| match b.names.get((v - b.names_from) as usize) {
                    Some(n) if !b.names.is_empty() => n.to_string(),
                    _ => v.to_string(),
                })
                .collect();
            vals.join(",")
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "second {}, minute {}, hour {}, day of month {}, month {}, day of week {} (UTC)",
            list(&self.second, &SECOND),
            list(&self.minute, &MINUTE),
            list(&self.hour, &HOUR),
            list(&self.dom, &DOM),
            list(&self.month, &MONTH),
            list(&self.dow, &DOW),
        );
        out
    }
}

/// (year, month 1-12, day 1-31) of a day number (days since 1970-01-01), Howard Hinnant's
/// algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T00:00:00Z, a Wednesday.
    const MAY_1: i64 = 1_714_521_600;

    fn next(line: &str, after: i64) -> i64 {
        Cron::parse(line).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn days_are_civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(MAY_1 / 86_400), (2024, 5, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn seconds_come_first_and_five_fields_have_any_weekday() {
        // KFP's docstring example: 09:00:00 on weekdays 2-6 (Tuesday to Saturday).
        let c = "0 0 9 ? * 2-6";
        assert_eq!(next(c, MAY_1), MAY_1 + 9 * 3600);
        // Saturday 4th, then Tuesday 7th (Sunday 5th and Monday 6th are not 2-6).
        assert_eq!(
            next(c, MAY_1 + 3 * 86_400 + 9 * 3600),
            MAY_1 + 6 * 86_400 + 9 * 3600
        );
        // A Unix-looking line is second 0 of every minute, as KFP reads it.
        assert_eq!(next("0 * * * *", MAY_1), MAY_1 + 60);
        assert_eq!(next("*/2 * * * * *", MAY_1), MAY_1 + 2);
        assert_eq!(
            next("30 15 10 * * *", MAY_1 + 11 * 3600),
            MAY_1 + 86_400 + 10 * 3600 + 15 * 60 + 30
        );
    }

    #[test]
    fn descriptors_names_lists_and_steps() {
        assert_eq!(next("@daily", MAY_1), MAY_1 + 86_400);
        assert_eq!(next("@hourly", MAY_1 + 1), MAY_1 + 3600);
        // Sunday 5th at midnight.
        assert_eq!(next("@weekly", MAY_1), MAY_1 + 4 * 86_400);
        assert_eq!(next("0 0 0 1 jun *", MAY_1), 1_717_200_000);
        assert_eq!(next("0 0 6,18 * * *", MAY_1 + 7 * 3600), MAY_1 + 18 * 3600);
        assert_eq!(next("0 5/20 * * * *", MAY_1), MAY_1 + 5 * 60);
        assert_eq!(next("0 0 0 31 * *", MAY_1), MAY_1 + 30 * 86_400);
    }

    #[test]
    fn day_of_month_and_day_of_week_are_either_when_both_are_set() {
        // The 10th, or any Monday: Monday 6th comes first.
        assert_eq!(next("0 0 0 10 * mon", MAY_1), MAY_1 + 5 * 86_400);
        // With `*` in day of week, only the 10th.
        assert_eq!(next("0 0 0 10 * *", MAY_1), MAY_1 + 9 * 86_400);
    }

    #[test]
    fn bad_lines_name_the_field() {
        let err = |l: &str| Cron::parse(l).unwrap_err();
        assert!(err("0 0 25 * * *").contains("hour"));
        assert!(err("0 0 * * *  * *").contains("7 fields"));
        assert!(err("0 0 0 * foo *").contains("month"));
        assert!(err("*/0 * * * * *").contains("step"));
        assert!(err("0 0 5-2 * * *").contains("backwards"));
        assert!(err("@fortnightly").contains("descriptor"));
        assert!(Cron::parse("0 0 0 30 feb *")
            .unwrap()
            .next_after(MAY_1)
            .is_none());
    }

    #[test]
    fn the_description_says_what_was_understood() {
        let d = Cron::parse("0 * * * *").unwrap().describe();
        assert!(d.starts_with("second 0, minute every"), "{d}");
    }
}
