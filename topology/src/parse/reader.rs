//! Reading a spanned TOML tree while collecting problems instead of stopping at the
//! first one. Each getter checks one key, reports what is wrong with it, and returns
//! `None` for a key that is absent or bad, so the caller carries on.

use std::ops::{Range, RangeInclusive};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Location, Problem};

/// The problems found so far, and the text they point into.
pub(crate) struct Report<'s> {
    source: &'s str,
    pub(crate) problems: Vec<Problem>,
}

impl<'s> Report<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        Report {
            source,
            problems: Vec::new(),
        }
    }

    /// A problem with `key` at byte `span` of the file.
    pub(crate) fn at(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            location: Some(Location::of(self.source, span.start)),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// A problem of the file as a whole.
    pub(crate) fn whole(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            location: None,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The line of byte `span`, for messages that point at another place.
    pub(crate) fn line_of(&self, span: &Range<usize>) -> usize {
        Location::of(self.source, span.start).line
    }
}

/// A value with where it was written.
pub(crate) type At<T> = (T, Range<usize>);

/// One TOML table being read: its keys, the keys it may have, and its name for messages.
pub(crate) struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    path: String,
    allowed: &'static [&'static str],
}

impl<'t, 'i> Table<'t, 'i> {
    /// Reads `table`, known in messages as `path`, which may hold only `allowed` keys;
    /// every other key is reported now, with a suggestion when one is close.
    pub(crate) fn new(
        report: &mut Report<'_>,
        table: &'t DeTable<'i>,
        span: Range<usize>,
        path: String,
        allowed: &'static [&'static str],
    ) -> Self {
        for (key, _) in table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                let name = key.get_ref().as_ref();
                let message = match suggest(name, allowed.iter().copied()) {
                    Some(close) => format!("unknown key {name:?}; did you mean {close:?}?"),
                    None => format!(
                        "unknown key {name:?}; known keys are {}",
                        allowed.join(", ")
                    ),
                };
                report.at(&key.span(), &path, message);
            }
        }
        Table {
            table,
            span,
            path,
            allowed,
        }
    }

    /// The name of `key` in messages: `cluster.hub`.
    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        debug_assert!(self.allowed.contains(&key), "{key} is not an allowed key");
        self.table.get(key)
    }

    /// Reports that `key` must be set.
    pub(crate) fn missing(&self, report: &mut Report<'_>, key: &str, hint: &str) {
        let message = format!("missing required key {key:?}{hint}");
        report.at(&self.span, &self.path_or_root(), message);
    }

    fn path_or_root(&self) -> String {
        if self.path.is_empty() {
            "(top level)".into()
        } else {
            self.path.clone()
        }
    }

    /// Reports a value of the wrong type.
    fn wrong_type(&self, report: &mut Report<'_>, key: &str, v: &Spanned<DeValue<'_>>, want: &str) {
        let got = v.get_ref().type_str();
        report.at(
            &v.span(),
            &self.key_path(key),
            format!("expected {want}, found {got}"),
        );
    }

    pub(crate) fn string(&self, report: &mut Report<'_>, key: &str) -> Option<At<&'t str>> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some((s, v.span())),
            None => {
                self.wrong_type(report, key, v, "a string");
                None
            }
        }
    }

    pub(crate) fn required_string(
        &self,
        report: &mut Report<'_>,
        key: &str,
        hint: &str,
    ) -> Option<At<&'t str>> {
        if self.get(key).is_none() {
            self.missing(report, key, hint);
        }
        self.string(report, key)
    }

    /// An integer within `range`; `unit` names it in messages ("ms").
    pub(crate) fn integer(
        &self,
        report: &mut Report<'_>,
        key: &str,
        range: RangeInclusive<i64>,
        unit: &str,
    ) -> Option<At<i64>> {
        let v = self.get(key)?;
        let Some(int) = v.get_ref().as_integer() else {
            self.wrong_type(report, key, v, "an integer");
            return None;
        };
        let value = i64::from_str_radix(int.as_str(), int.radix()).ok();
        match value {
            Some(n) if range.contains(&n) => Some((n, v.span())),
            _ => {
                let (lo, hi) = (range.start(), range.end());
                let shown = value.map_or_else(|| int.as_str().to_owned(), |n| n.to_string());
                let message =
                    format!("{shown}{unit} is out of range: must be from {lo}{unit} to {hi}{unit}");
                report.at(&v.span(), &self.key_path(key), message);
                None
            }
        }
    }

    /// A number (integer or float) within `range`.
    pub(crate) fn number(
        &self,
        report: &mut Report<'_>,
        key: &str,
        range: RangeInclusive<f64>,
        unit: &str,
    ) -> Option<At<f64>> {
        let v = self.get(key)?;
        let value = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.wrong_type(report, key, v, "a number");
                return None;
            }
        };
        match value {
            Some(n) if range.contains(&n) => Some((n, v.span())),
            _ => {
                let (lo, hi) = (range.start(), range.end());
                let shown = value.map_or_else(|| "this".to_owned(), |n| n.to_string());
                let message =
                    format!("{shown}{unit} is out of range: must be from {lo}{unit} to {hi}{unit}");
                report.at(&v.span(), &self.key_path(key), message);
                None
            }
        }
    }

    /// One of the strings in `options`, returned as its paired value.
    pub(crate) fn choice<T: Copy>(
        &self,
        report: &mut Report<'_>,
        key: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let (text, span) = self.string(report, key)?;
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        let mut message = format!("{text:?} is not one of {}", quoted.join(", "));
        if let Some(close) = suggest(text, names.iter().copied()) {
            message.push_str(&format!("; did you mean {close:?}?"));
        }
        report.at(&span, &self.key_path(key), message);
        None
    }

    /// A sub-table (a `[section]` or an inline `{ ... }` table).
    pub(crate) fn table(&self, report: &mut Report<'_>, key: &str) -> Option<At<&'t DeTable<'i>>> {
        let v = self.get(key)?;
        match v.get_ref().as_table() {
            Some(t) => Some((t, v.span())),
            None => {
                self.wrong_type(report, key, v, "a table");
                None
            }
        }
    }

    /// An array of values.
    pub(crate) fn array(
        &self,
        report: &mut Report<'_>,
        key: &str,
    ) -> Option<At<&'t [Spanned<DeValue<'i>>]>> {
        let v = self.get(key)?;
        match v.get_ref().as_array() {
            Some(a) => Some((a.as_ref(), v.span())),
            None => {
                self.wrong_type(report, key, v, "an array");
                None
            }
        }
    }

    /// An array of strings; bad elements are reported and left out.
    pub(crate) fn strings(
        &self,
        report: &mut Report<'_>,
        key: &str,
    ) -> Option<At<Vec<At<&'t str>>>> {
        let (items, span) = self.array(report, key)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s, item.span())),
                None => {
                    let got = item.get_ref().type_str();
                    let message = format!("expected a string, found {got}");
                    report.at(
                        &item.span(),
                        &format!("{}[{i}]", self.key_path(key)),
                        message,
                    );
                }
            }
        }
        Some((out, span))
    }
}

/// The candidate closest to `word`, if one is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
