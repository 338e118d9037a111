//! Kubernetes quantities (`"2"`, `"500m"`, `"1Gi"`), as whole numbers of their unit.

use serde_json::Value;

/// A quantity (`"2"`, `"500m"`, `"1Gi"`, `"1.5G"`, `"1e3"`) as a whole number of its unit,
/// rounded up (`"500m"` CPUs is 1). `None` when it is not a quantity, is negative or overflows.
pub fn parse_quantity(s: &str) -> Option<u128> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || number.len() > 38 {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits.parse().ok()?;
    // value = mantissa * num / 10^den
    let mut den = u32::try_from(frac.len()).ok()?;
    let pow10 = |e: u32| 10u128.checked_pow(e);
    let num: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "n" => {
            den += 9;
            1
        }
        "u" => {
            den += 6;
            1
        }
        "m" => {
            den += 3;
            1
        }
        "k" => 1_000,
        "M" => pow10(6)?,
        "G" => pow10(9)?,
        "T" => pow10(12)?,
        "P" => pow10(15)?,
        "E" => pow10(18)?,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            if exp >= 0 {
                pow10(u32::try_from(exp).ok()?)?
            } else {
                den += exp.unsigned_abs();
                1
            }
        }
        _ => return None,
    };
    let scaled = mantissa.checked_mul(num)?;
    let divisor = pow10(den)?;
    Some(scaled.div_ceil(divisor))
}

/// Bytes in the largest binary unit that divides them (`"256Mi"`), else plain bytes.
pub fn format_bytes(bytes: u128) -> String {
    for (shift, unit) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        let size = 1u128 << shift;
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// The quantity at a JSON value: a string quantity or a plain number (rounded up).
pub fn quantity_at(v: Option<&Value>) -> Option<u128> {
    match v? {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n
            .as_u64()
            .map(u128::from)
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u128)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_round_up_to_whole_units() {
        assert_eq!(parse_quantity("2"), Some(2));
        assert_eq!(parse_quantity("500m"), Some(1));
        assert_eq!(parse_quantity("1500m"), Some(2));
        assert_eq!(parse_quantity("128Mi"), Some(128 << 20));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1e3"), Some(1000));
        assert_eq!(parse_quantity("1E"), Some(10u128.pow(18)));
        assert_eq!(parse_quantity("+4k"), Some(4000));
        for bad in ["", "-1", "1.2.3", "Gi", "1Qi", "1e", "."] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
        assert_eq!(format_bytes(256 << 20), "256Mi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
