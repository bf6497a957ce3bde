//! Problems found in a topology file, each with where it is and what to do.

use std::fmt;

/// A position in the topology file, counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Line number.
    pub line: usize,
    /// Column number, in characters.
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `source`.
    pub fn of(source: &str, offset: usize) -> Location {
        let offset = offset.min(source.len());
        let before = source.get(..offset).unwrap_or(source);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One thing wrong with a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is; `None` for problems of the file as a whole (no datacenters at all).
    pub location: Option<Location>,
    /// The key it concerns, as a path: `cluster.hub`, `datacenter[2].peer`, `links."a/b"`.
    pub key: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

/// Every problem found in a topology file. A file is refused as a whole: a proxy
/// never starts on a topology that has any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file's name as given by the caller.
    pub file: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One problem is one line; several get a count first.
        let count = self.problems.len();
        if count != 1 {
            writeln!(f, "{}: {count} problems in the topology file", self.file)?;
        }
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match p.location {
                Some(at) => write!(f, "{}:{}:{}: ", self.file, at.line, at.column)?,
                None => write!(f, "{}: ", self.file)?,
            }
            if !p.key.is_empty() {
                write!(f, "{}: ", p.key)?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(text, 6), Location { line: 2, column: 1 });
        assert_eq!(Location::of(text, 10), Location { line: 2, column: 4 });
        assert_eq!(Location::of(text, 999), Location { line: 3, column: 1 });
    }
}
