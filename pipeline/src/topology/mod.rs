//! Topology files: the YAML that says what one deployment runs.
//!
//! Loading is all-or-nothing: [`load_str`] either returns a [`Topology`] whose every
//! component, input, topic and store setting has been checked, or every problem found,
//! each with its path in the file, line and column, and a hint. Nothing starts from a
//! topology that did not load.

mod catalog;
mod diagnostics;
mod env;
pub mod graph;
mod model;
mod path;
mod spans;
pub mod units;
mod validate;

pub use catalog::{parse_settings, Catalog, ComponentKind, Ports, Role, SettingsError, TypedKind};
pub use diagnostics::{Diagnostic, DiagnosticKind, Diagnostics, Location};
pub use model::{
    Component, Input, KafkaSettings, ObservabilitySettings, RegistrySettings, ReplayScope,
    ShutdownSettings, StateSettings, TopicSettings, Topology, AUDIT_PORT, DEFAULT_BATCH_WAIT_MS,
    DEFAULT_COMMIT_INTERVAL_MS, FORMAT_VERSION,
};

use std::path::Path;

/// Reads and checks a topology file, substituting variables from the process environment.
pub fn load_file(path: &Path, catalog: &Catalog) -> Result<Topology, Diagnostics> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        file: file.clone(),
        items: vec![Diagnostic::new(
            DiagnosticKind::Io,
            "",
            format!("cannot read the topology file: {e}"),
        )
        .with_hint("check the path; topology files live in topologies/")],
    })?;
    load_str(&file, &text, catalog, &|name| std::env::var(name).ok())
}

/// Checks topology `text`; `file` names it in diagnostics and `lookup` resolves `${VAR}`.
pub fn load_str(
    file: &str,
    text: &str,
    catalog: &Catalog,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Topology, Diagnostics> {
    let fail = |items| Diagnostics {
        file: file.to_string(),
        items,
    };
    let text = env::substitute(text, lookup).map_err(fail)?;
    let spans = spans::Spans::index(&text);
    let document: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        let location = e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        });
        fail(vec![Diagnostic::new(
            DiagnosticKind::YamlSyntax,
            "",
            format!("the file is not valid YAML: {e}"),
        )
        .with_hint("check indentation (spaces, not tabs), colons after keys and closing quotes")
        .at(location)])
    })?;
    validate::check(&document, catalog).map_err(|items| {
        fail(
            items
                .into_iter()
                .map(|d: Diagnostic| {
                    let loc = spans.find(&d.path);
                    d.at(loc)
                })
                .collect(),
        )
    })
}
