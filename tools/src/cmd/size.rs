//! Sizes on the command line: `2G`, `512M`, `64K`, `1T` (binary units) or bytes.

use anyhow::{bail, Result};

pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    if digits.is_empty() {
        bail!("size {text:?} does not start with a number");
    }
    let shift = match unit
        .trim_end_matches(['i', 'B', 'b'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => bail!("size {text:?}: unknown unit {unit:?} (use K, M, G or T)"),
    };
    let Ok(number) = digits.parse::<u64>() else {
        bail!("size {text:?} is too large");
    };
    match number.checked_mul(1u64 << shift) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => bail!("size {text:?} is zero or too large"),
    }
}

/// `2147483648` -> `2.0 GiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("3X").is_err());
        assert!(parse_size("99999999999T").is_err());
        let overflow = parse_size("99999999999999999999").unwrap_err().to_string();
        assert!(overflow.contains("too large"), "{overflow}");
        let negative = parse_size("-1").unwrap_err().to_string();
        assert!(
            negative.contains("does not start with a number"),
            "{negative}"
        );
        assert_eq!(human(2 << 30), "2.0 GiB");
    }
}
