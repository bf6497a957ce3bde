//! Glob patterns as Redis matches them (KEYS, SCAN MATCH): `*`, `?`, `[abc]`,
//! `[^a]`, `[a-z]` and `\` escapes, on bytes.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            // Runs of stars are one star.
            let rest = rest
                .iter()
                .position(|&b| b != b'*')
                .map_or(&[][..], |i| &rest[i..]);
            rest.is_empty() || (0..=text.len()).any(|i| matches(rest, &text[i..]))
        }
        Some((b'?', rest)) => !text.is_empty() && matches(rest, &text[1..]),
        Some((b'[', rest)) => match text.split_first() {
            Some((&c, tail)) => {
                let (hit, after) = class(rest, c);
                hit && matches(after, tail)
            }
            None => false,
        },
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == Some(&rest[0]) && matches(&rest[1..], &text[1..])
        }
        Some((&p, rest)) => text.first() == Some(&p) && matches(rest, &text[1..]),
    }
}

/// Whether `c` is in the class that `pattern` opens (just after the `[`), and the
/// pattern after the class's `]` (or its end, when unclosed, as Redis reads it).
fn class(pattern: &[u8], c: u8) -> (bool, &[u8]) {
    let (negate, mut p) = match pattern.split_first() {
        Some((b'^', rest)) => (true, rest),
        _ => (false, pattern),
    };
    let mut hit = false;
    loop {
        match p {
            [] => break,
            [b']', rest @ ..] => {
                p = rest;
                break;
            }
            [b'\\', e, rest @ ..] => {
                hit |= *e == c;
                p = rest;
            }
            [a, b'-', b, rest @ ..] if *b != b']' => {
                let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                hit |= (lo..=hi).contains(&c);
                p = rest;
            }
            [a, rest @ ..] => {
                hit |= *a == c;
                p = rest;
            }
        }
    }
    (hit != negate, p)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn matches_as_redis_does() {
        for (pattern, text, want) in [
            ("*", "anything", true),
            ("*", "", true),
            ("user:*", "user:42", true),
            ("user:*", "users", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("a**b", "axxb", true),
            ("{u}:*", "{u}:a", true),
        ] {
            assert_eq!(
                matches(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern} {text}"
            );
        }
    }
}
