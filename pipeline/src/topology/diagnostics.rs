//! Diagnostics: every problem found in a topology file, with where it is and how to fix it.
//!
//! Loading never stops at the first problem it can recover from: it collects every
//! [`Diagnostic`] and reports them together, so a user fixes a file in one pass.

use std::fmt;

/// A position in the topology file, 1-based as editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// What kind of problem a diagnostic reports; tests and tools match on this, not on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticKind {
    Io,
    YamlSyntax,
    UnsetVariable,
    UnknownField,
    MissingField,
    InvalidValue,
    UnknownKind,
    UnknownInput,
    Cycle,
    DuplicateName,
    InvalidTopic,
    InvalidStore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub kind: DiagnosticKind,
    /// Dotted path in the file, e.g. `processors.analysis.inputs[0]`; empty for the whole file.
    pub path: String,
    pub location: Option<Location>,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(kind: DiagnosticKind, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            path: path.into(),
            location: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        if self.location.is_none() {
            self.location = location;
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.location, self.path.is_empty()) {
            (Some(loc), false) => write!(f, "{}:{} at `{}`: ", loc.line, loc.column, self.path)?,
            (Some(loc), true) => write!(f, "{}:{}: ", loc.line, loc.column)?,
            (None, false) => write!(f, "at `{}`: ", self.path)?,
            (None, true) => {}
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

/// All diagnostics of one file, printed with the file name in front of each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics {
    pub file: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn has(&self, kind: DiagnosticKind) -> bool {
        self.items.iter().any(|d| d.kind == kind)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} problem(s) found", self.file, self.items.len())?;
        for d in &self.items {
            writeln!(f, "  {}:{d}", self.file)?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `wrong`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(wrong, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
