//! INCRBYFLOAT and HINCRBYFLOAT arithmetic, done as Redis on x86-64 does it: in
//! the x87 extended `long double` (a 64-bit significand), read by `strtold`'s
//! rules and written with `%.17Lf` less trailing zeros. Doing it in `f64` would
//! answer `1000.6` where Redis answers `1000.59999999999999998`, and clients and
//! tests compare against Redis.
//!
//! Values are exact big-integer fractions until rounded to the nearest extended
//! value (ties to even), the way `strtold`, the addition and `printf` round.

use num_bigint::{BigInt, BigUint, Sign};
use num_integer::Integer;
use num_traits::{One, Zero};

/// A finite extended value: `(-1)^neg × mant × 2^exp`, zero when `mant` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extended {
    neg: bool,
    mant: u64,
    exp: i64,
}

/// The exponent of the smallest extended values (denormals share it).
const MIN_EXP: i64 = -16445;
/// The largest exponent of a finite extended value (2^16384 overflows).
const MAX_EXP: i64 = 16320;
/// Redis refuses numbers this long or longer (`MAX_LONG_DOUBLE_CHARS`).
const MAX_CHARS: usize = 5 * 1024;

/// What a text reads as.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Finite(Extended),
    Infinite,
}

/// Why an addition has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FloatError {
    /// The stored value is not a number (`ERR value is not a valid float`).
    Value,
    /// The increment is not a number.
    Increment,
    /// The sum is infinite or not a number.
    NanOrInfinity,
}

/// `value + increment` as Redis's INCRBYFLOAT writes it; `None` is a missing value (0).
pub(super) fn add(value: Option<&[u8]>, increment: &[u8]) -> Result<String, FloatError> {
    let value = match value {
        Some(text) => parse(text).ok_or(FloatError::Value)?,
        None => Number::Finite(Extended::ZERO),
    };
    let increment = parse(increment).ok_or(FloatError::Increment)?;
    match (value, increment) {
        (Number::Finite(a), Number::Finite(b)) => {
            sum(a, b).map(human).ok_or(FloatError::NanOrInfinity)
        }
        _ => Err(FloatError::NanOrInfinity),
    }
}

/// Whether `text` reads as a finite number or an infinity (HINCRBYFLOAT refuses an
/// infinite increment before anything else).
pub(super) fn is_finite(text: &[u8]) -> Option<bool> {
    parse(text).map(|n| matches!(n, Number::Finite(_)))
}

impl Extended {
    const ZERO: Extended = Extended {
        neg: false,
        mant: 0,
        exp: 0,
    };
}

/// Reads `text` as Redis's `string2ld` does: all of it must be a number; no
/// leading space, no NaN, nothing out of range.
fn parse(text: &[u8]) -> Option<Number> {
    if text.is_empty() || text.len() >= MAX_CHARS || text[0].is_ascii_whitespace() {
        return None;
    }
    let (neg, rest) = match text[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest.eq_ignore_ascii_case(b"inf") || rest.eq_ignore_ascii_case(b"infinity") {
        return Some(Number::Infinite);
    }
    let (radix, body) = match rest {
        [b'0', b'x' | b'X', body @ ..] => (16, body),
        _ => (10, rest),
    };
    let (digits, point, exp) = split(body, radix)?;
    let mantissa = BigUint::parse_bytes(&digits, radix)?;
    // The exponent of a hex number is binary, of a decimal one decimal; digits
    // after the point scale it down.
    let (pow10, pow2) = if radix == 16 {
        (0, exp.checked_sub(4 * point as i64)?)
    } else {
        (exp.checked_sub(point as i64)?, 0)
    };
    exact(neg, mantissa, pow10, pow2).map(Number::Finite)
}

/// Splits a number's body into its digits (point removed), how many came after
/// the point, and its exponent; `None` when any of it is malformed.
fn split(body: &[u8], radix: u32) -> Option<(Vec<u8>, usize, i64)> {
    let marker: &[u8] = if radix == 16 { b"pP" } else { b"eE" };
    let (mantissa, exponent) = match body.iter().position(|b| marker.contains(b)) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let is_digit = |b: &u8| char::from(*b).is_digit(radix);
    let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &[][..]),
    };
    if int.len() + frac.len() == 0 || !int.iter().chain(frac).all(is_digit) {
        return None;
    }
    let exp = match exponent {
        None => 0,
        Some(e) => {
            let (sign, digits) = match e.first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // Past any meaningful size the exponent saturates: out of range either way.
            let magnitude = std::str::from_utf8(digits)
                .ok()?
                .parse::<i64>()
                .unwrap_or(i64::MAX / 4)
                .min(i64::MAX / 4);
            sign * magnitude
        }
    };
    Some(([int, frac].concat(), frac.len(), exp))
}

/// `± mantissa × 10^pow10 × 2^pow2`, rounded to the nearest extended value;
/// `None` when it overflows or underflows to zero (`strtold`'s ERANGE).
fn exact(neg: bool, mantissa: BigUint, pow10: i64, pow2: i64) -> Option<Extended> {
    if mantissa.is_zero() {
        return Some(Extended::ZERO);
    }
    // log2 of the value, roughly; far out of range is decided before any big power.
    let log2 = mantissa.bits() as f64 + pow10 as f64 * std::f64::consts::LOG2_10 + pow2 as f64;
    if log2 > (MAX_EXP + 70) as f64 {
        return None;
    }
    if log2 < (MIN_EXP - 70) as f64 {
        return None;
    }
    let ten = BigUint::from(10u32);
    let (mut num, mut den) = (mantissa, BigUint::one());
    if pow10 >= 0 {
        num *= ten.pow(pow10 as u32);
    } else {
        den *= ten.pow(pow10.unsigned_abs() as u32);
    }
    if pow2 >= 0 {
        num <<= pow2 as u64;
    } else {
        den <<= pow2.unsigned_abs();
    }
    // Enough quotient bits to round from, the rest kept as a sticky bit.
    let shift = 66 - (num.bits() as i64 - den.bits() as i64);
    if shift >= 0 {
        num <<= shift as u64;
    } else {
        den <<= shift.unsigned_abs();
    }
    let (q, r) = num.div_rem(&den);
    let rounded = round(neg, q, -shift, !r.is_zero())?;
    (rounded.mant != 0).then_some(rounded)
}

/// `± q × 2^exp` (plus a little more when `sticky`) rounded to 64 bits, ties to
/// even; `None` on overflow.
fn round(neg: bool, q: BigUint, exp: i64, sticky: bool) -> Option<Extended> {
    let bits = q.bits() as i64;
    let drop = (bits - 64).max(MIN_EXP - exp).max(0);
    let (mut mant, mut exp) = if drop == 0 {
        (q, exp)
    } else {
        let kept = &q >> drop as u64;
        let rest = q - (&kept << drop as u64);
        let half = BigUint::one() << (drop - 1) as u64;
        let up = rest > half || (rest == half && (sticky || kept.bit(0)));
        (if up { kept + 1u32 } else { kept }, exp + drop)
    };
    if mant.bits() > 64 {
        mant >>= 1u32;
        exp += 1;
    }
    if exp > MAX_EXP {
        return None;
    }
    let mant = u64::try_from(mant).ok()?;
    Some(Extended { neg, mant, exp })
}

/// `a + b`, rounded; `None` when it overflows.
fn sum(a: Extended, b: Extended) -> Option<Extended> {
    if a.mant == 0 {
        return Some(b);
    }
    if b.mant == 0 {
        return Some(a);
    }
    // Far below the other's last bit, a term cannot move the rounded sum.
    if a.exp - b.exp > 200 {
        return Some(a);
    }
    if b.exp - a.exp > 200 {
        return Some(b);
    }
    let low = a.exp.min(b.exp);
    let signed = |x: Extended| {
        let magnitude = BigInt::from(x.mant) << (x.exp - low) as u64;
        if x.neg { -magnitude } else { magnitude }
    };
    let total = signed(a) + signed(b);
    if total.is_zero() {
        return Some(Extended::ZERO);
    }
    let neg = total.sign() == Sign::Minus;
    round(neg, total.magnitude().clone(), low, false)
}

/// `%.17Lf`, then trailing zeros and a trailing point removed, and `-0` as `0`.
fn human(x: Extended) -> String {
    let scaled = BigUint::from(x.mant) * BigUint::from(10u32).pow(17);
    let fixed = if x.exp >= 0 {
        scaled << x.exp as u64
    } else {
        let shift = x.exp.unsigned_abs();
        let kept = &scaled >> shift;
        let rest = scaled - (&kept << shift);
        let half = BigUint::one() << (shift - 1);
        let up = rest > half || (rest == half && kept.bit(0));
        if up { kept + 1u32 } else { kept }
    };
    let digits = format!("{fixed:0>18}");
    let (int, frac) = digits.split_at(digits.len() - 17);
    let frac = frac.trim_end_matches('0');
    let text = if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    };
    if x.neg && text != "0" {
        format!("-{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each answer is what redis-server 7.0 on x86-64 gives for the same INCRBYFLOAT.
    #[test]
    fn sums_read_as_redis_writes_them() {
        let cases: &[(Option<&str>, &str, &str)] = &[
            (None, "1000.6", "1000.59999999999999998"),
            (None, "0.1", "0.1"),
            (None, "123456.789", "123456.78900000000000148"),
            (None, "1e20", "100000000000000000000"),
            (None, "3.0e3", "3000"),
            (None, "1.5e-5", "0.000015"),
            (None, "-0", "0"),
            (Some("10.5"), "0.1", "10.6"),
            (Some("10.6"), "1000000.1", "1000010.70000000000004547"),
            (
                Some("1000010.70000000000004547"),
                "0x10",
                "1000026.70000000000004547",
            ),
            (Some("5."), "1e-20", "5"),
            (Some(".5"), "1", "1.5"),
            (Some("+1.5"), "1", "2.5"),
            (None, "0.000003814697265625", "0.00000381469726562"),
            (
                Some("0.00000381469726562"),
                "0.000003814697265625",
                "0.00000762939453125",
            ),
        ];
        for &(value, incr, want) in cases {
            let got = add(value.map(str::as_bytes), incr.as_bytes());
            assert_eq!(got.as_deref(), Ok(want), "{value:?} + {incr}");
        }
    }

    #[test]
    fn refuses_what_redis_refuses() {
        for bad in [
            "", " 1", "1.5 ", "abc", "1e", "1e+", "nan", "0x", ".", "1e4933", "1e-4960",
        ] {
            assert_eq!(
                add(Some(bad.as_bytes()), b"1"),
                Err(FloatError::Value),
                "{bad:?}"
            );
        }
        assert_eq!(add(None, b"inf"), Err(FloatError::NanOrInfinity));
        assert_eq!(
            add(Some(b"1e4932"), b"1e4932"),
            Err(FloatError::NanOrInfinity)
        );
        assert_eq!(add(None, b"x"), Err(FloatError::Increment));
        let max = "1.7976931348623157e308";
        let redis = "179769313486231569995921046774104434048386446944329178485314420765176628523124396354701868608387085564428793419425520689308708363451136055357897278026477617073498977686288394835618163294045594434929537447290627480669417384648879122776218333598953852832103282504751611691208117720159985926376802466863339536384";
        assert_eq!(add(None, max.as_bytes()).as_deref(), Ok(redis));
        assert_eq!(is_finite(b"-inf"), Some(false));
    }
}
