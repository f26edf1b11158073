//! Quantities written in a pipeline: Kubernetes CPU and memory amounts, accelerator counts,
//! and protobuf-JSON durations. The engine parses the same spellings when a resource comes
//! from a pipeline input at run time, so they are not tied to reading the document.

/// Which kind of quantity a text is not; each variant holds the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a CPU amount like \"2\", \"0.5\" or \"500m\"")]
    Cpu(String),
    #[error("{0:?} is not a memory amount like \"512Mi\", \"4G\" or a number of bytes")]
    Memory(String),
    #[error("{0:?} is not an accelerator count (a whole number)")]
    AcceleratorCount(String),
    #[error("{0:?} is not a duration like \"60s\"")]
    Duration(String),
}

/// A Kubernetes CPU quantity (`"2"`, `"0.5"`, `"500m"`) in cores.
pub fn parse_cpu_quantity(s: &str) -> Result<f64, QuantityError> {
    let t = s.trim();
    let (number, scale) = match t.strip_suffix('m') {
        Some(n) => (n, 0.001),
        None => (t, 1.0),
    };
    decimal(number)
        .map(|v| v * scale)
        .filter(|v| v.is_finite() && *v < 1.0e9)
        .ok_or_else(|| QuantityError::Cpu(s.to_string()))
}

/// A Kubernetes memory quantity (`"4G"`, `"1536Mi"`, `"268435456"`) in bytes.
pub fn parse_memory_quantity(s: &str) -> Result<u64, QuantityError> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let t = s.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| t.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or((t, 1.0));
    decimal(number)
        .map(|v| (v * scale).ceil())
        .filter(|v| v.is_finite() && *v < u64::MAX as f64)
        .map(|v| v as u64)
        .ok_or_else(|| QuantityError::Memory(s.to_string()))
}

/// An accelerator count (`"1"`, `2`).
pub fn parse_accelerator_count(s: &str) -> Result<u32, QuantityError> {
    let t = s.trim();
    t.parse::<u32>()
        .ok()
        .or_else(|| {
            decimal(t)
                .filter(|f| f.fract() == 0.0 && *f <= u32::MAX as f64)
                .map(|f| f as u32)
        })
        .ok_or_else(|| QuantityError::AcceleratorCount(s.to_string()))
}

/// A non-negative decimal number without exponent or sign.
fn decimal(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.chars().filter(|c| *c == '.').count() <= 1
        && s != ".";
    if ok {
        s.parse::<f64>().ok()
    } else {
        None
    }
}

/// A protobuf JSON duration (`"0s"`, `"60s"`, `"1.5s"`) in milliseconds. Plain numbers of
/// seconds, and `ms` / `m` / `h` suffixes, are accepted too.
pub(crate) fn parse_proto_duration_ms(s: &str) -> Result<u64, QuantityError> {
    let t = s.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (t, 1000.0)
    };
    let ok = !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().filter(|c| *c == '.').count() <= 1;
    let value = number
        .parse::<f64>()
        .ok()
        .filter(|v| ok && v.is_finite() && *v * scale < 1.0e15);
    match value {
        Some(v) => Ok((v * scale).round() as u64),
        None => Err(QuantityError::Duration(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_cpu_quantity("2").unwrap(), 2.0);
        assert_eq!(parse_cpu_quantity("1.5").unwrap(), 1.5);
        assert!(parse_cpu_quantity("-1").is_err());
        assert_eq!(
            parse_cpu_quantity("two").unwrap_err().to_string(),
            r#""two" is not a CPU amount like "2", "0.5" or "500m""#
        );
        assert!(parse_cpu_quantity("NaN").is_err());
        assert_eq!(parse_memory_quantity("4G").unwrap(), 4_000_000_000);
        assert_eq!(parse_memory_quantity("1536Mi").unwrap(), 1_610_612_736);
        assert_eq!(parse_memory_quantity("256Mi").unwrap(), 268_435_456);
        assert_eq!(parse_memory_quantity("1.5Gi").unwrap(), 1_610_612_736);
        assert_eq!(parse_memory_quantity("1000").unwrap(), 1000);
        assert!(parse_memory_quantity("4X").is_err());
        assert!(parse_memory_quantity("99999999999E").is_err());
        assert_eq!(parse_accelerator_count("1").unwrap(), 1);
        assert_eq!(parse_accelerator_count("2.0").unwrap(), 2);
        assert!(parse_accelerator_count("1.5").is_err());
        assert!(parse_accelerator_count("-1").is_err());
        assert_eq!(parse_proto_duration_ms("0s").unwrap(), 0);
        assert_eq!(parse_proto_duration_ms("60s").unwrap(), 60_000);
        assert_eq!(parse_proto_duration_ms("1.5s").unwrap(), 1_500);
        assert_eq!(parse_proto_duration_ms("3600s").unwrap(), 3_600_000);
        assert_eq!(
            parse_proto_duration_ms("soon").unwrap_err(),
            QuantityError::Duration("soon".into())
        );
        assert!(parse_proto_duration_ms("-1s").is_err());
    }
}
