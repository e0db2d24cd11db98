//! The original backend's workflow checksum:
//! `md5(json.dumps(workflow, sort_keys=True).encode()).hexdigest()`.
//!
//! [`python_json`] reproduces Python's `json.dumps` defaults byte for byte: separators `", "` and
//! `": "`, keys sorted by code point at every level, `ensure_ascii=True` (everything outside
//! `' '..='~'` escaped as `\uXXXX`, astral characters as surrogate pairs, short escapes for
//! `\" \\ \n \r \t \b \f`), and floats in Python's `repr` (`0.7`, `1e-05`, `1e+20`, `100.0`).
//! Integers print as integers. Called by the Postgres store when a row has no `md5`, by the
//! files store and by the import command.
//!
//! Known limit: an integer beyond the `i64`/`u64` range has already become an `f64` in
//! `serde_json::Value` (Python keeps it exact), so its checksum differs from the original's.

use std::fmt::Write as _;

use md5::{Digest, Md5};
use serde_json::Value;

/// The original's `md5` of a workflow: lower-case hex of the MD5 of [`python_json`].
pub fn md5_of(workflow: &Value) -> String {
    let text = python_json(workflow);
    hex::encode(Md5::digest(text.as_bytes()))
}

/// `json.dumps(value, sort_keys=True)` of Python 3.
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(f) = n.as_f64() {
                out.push_str(&python_float_repr(f));
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Rust's `str` order is byte order of UTF-8, which is code point order (Python's).
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, key);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional notation when the
/// decimal exponent is in `-4..16`, else `d.ddde±XX`; integral values keep a `.0`.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // `{:e}` gives the shortest round-tripping digits as `d[.ddd]e<exp>`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let (digits, exp) = break_tie_to_even(f.abs(), digits, exp);
    // Position of the decimal point relative to the first digit (Python's `decpt`).
    let decpt = exp + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{esign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
    } else {
        let point = decpt as usize;
        if point >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point - digits.len()))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    format!("{sign}{body}")
}

/// Rust's shortest digits break an exact tie between two equally short, equally close digit
/// strings upwards; Python's `dtoa` (mode 0) picks the one with an even last digit. A tie means
/// the exact binary value has one digit more than the shortest form, and that digit is `5`.
fn break_tie_to_even(f: f64, digits: String, exp: i32) -> (String, i32) {
    // An f64's exact decimal expansion has at most 767 significant digits.
    let exact = format!("{f:.767e}");
    let Some((mantissa, exact_exp)) = exact.split_once('e') else {
        return (digits, exp);
    };
    let Ok(exact_exp) = exact_exp.parse::<i32>() else {
        return (digits, exp);
    };
    let exact_digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exact_digits = exact_digits.trim_end_matches('0');
    if exact_digits.len() != digits.len() + 1 || !exact_digits.ends_with('5') {
        return (digits, exp);
    }
    let lower = &exact_digits[..digits.len()];
    let even = lower
        .bytes()
        .last()
        .is_some_and(|d| (d - b'0').is_multiple_of(2));
    if !even || lower == digits {
        return (digits, exp);
    }
    // Use the lower candidate only if it still reads back as the same double.
    let candidate = format!("{}.{}e{exact_exp}", &lower[..1], &lower[1..]);
    if candidate.parse::<f64>() == Ok(f) {
        (lower.to_owned(), exact_exp)
    } else {
        (digits, exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        // python3 -c 'print([repr(x) for x in [0.7,1e-05,1e+20,100.0,0.0001,1e16,1e15,-0.0,
        //   123456.789,1.5e300,2.5e-7,0.1+0.2]])'
        let cases = [
            (0.7, "0.7"),
            (1e-05, "1e-05"),
            (1e20, "1e+20"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (-0.0, "-0.0"),
            (123456.789, "123456.789"),
            (1.5e300, "1.5e+300"),
            (2.5e-7, "2.5e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "repr of {value:?}");
        }
    }

    #[test]
    fn exact_ties_round_to_the_even_digit_like_python() {
        // Exactly halfway between two shortest forms: Python picks the even last digit.
        // python3 -c 'import struct; print([repr(struct.unpack("<d", bytes.fromhex(h)[::-1])[0])
        //   for h in ["4316dd14fdc9bd19", "4300d10664995332", "43107f2fa815d1d1"]])'
        let cases = [
            (0x4316dd14fdc9bd19_u64, "1608882928643910.2"),
            (0x4300d10664995332, "591678126893670.2"),
            (0x43107f2fa815d1d1, "1160860571890804.2"),
        ];
        for (bits, expected) in cases {
            assert_eq!(python_float_repr(f64::from_bits(bits)), expected);
        }
    }

    #[test]
    fn strings_escape_like_ensure_ascii() {
        // python3 -c 'import json; print(json.dumps("a\"b\\c\n\t\x01\x7f é 😀"))'
        let value = Value::String("a\"b\\c\n\t\u{1}\u{7f} é 😀".to_owned());
        assert_eq!(
            python_json(&value),
            r#""a\"b\\c\n\t\u0001\u007f \u00e9 \ud83d\ude00""#
        );
    }
}
