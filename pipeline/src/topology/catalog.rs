//! The contract between the topology loader and the components it names.
//!
//! Each component kind (a source, processor or sink) describes itself with a
//! [`ComponentKind`]: its name in topology files, its role, and how to check its
//! settings. The binary builds one [`Catalog`] from every kind it ships; that list is
//! the single registration point that maps topology names to components.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use super::diagnostics::DiagnosticKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Source,
    Processor,
    Sink,
}

impl Role {
    /// The top-level section of the topology file holding components of this role.
    pub fn section(self) -> &'static str {
        match self {
            Role::Source => "sources",
            Role::Processor => "processors",
            Role::Sink => "sinks",
        }
    }
}

/// A problem in one component's settings; `path` is relative to the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub kind: DiagnosticKind,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// What a checked component exposes to the graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports {
    /// Named outputs besides the default one (`tiering.hot`, `tiering.moves`).
    pub named: Vec<String>,
}

pub trait ComponentKind: Send + Sync {
    /// The `kind:` value in topology files.
    fn name(&self) -> &'static str;
    fn role(&self) -> Role;
    /// One line for `strata validate --list-kinds` and error hints.
    fn summary(&self) -> &'static str;
    /// Checks the component's own settings (everything except `kind` and `inputs`).
    fn check(&self, settings: &serde_yaml_ng::Value) -> Result<Ports, Vec<SettingsError>>;
}

/// A [`ComponentKind`] whose settings are one serde struct with
/// `#[serde(deny_unknown_fields)]`; the usual way to declare a kind.
pub struct TypedKind<C> {
    pub name: &'static str,
    pub role: Role,
    pub summary: &'static str,
    pub ports: fn(&C) -> Ports,
    pub check: fn(&C) -> Vec<SettingsError>,
}

impl<C: DeserializeOwned + Send + Sync> ComponentKind for TypedKind<C> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn role(&self) -> Role {
        self.role
    }
    fn summary(&self) -> &'static str {
        self.summary
    }
    fn check(&self, settings: &serde_yaml_ng::Value) -> Result<Ports, Vec<SettingsError>> {
        let config: C = parse_settings(settings).map_err(|e| vec![e])?;
        let errors = (self.check)(&config);
        if errors.is_empty() {
            Ok((self.ports)(&config))
        } else {
            Err(errors)
        }
    }
}

/// Deserializes settings, keeping the path of the first field that failed.
pub fn parse_settings<C: DeserializeOwned>(
    settings: &serde_yaml_ng::Value,
) -> Result<C, SettingsError> {
    serde_path_to_error::deserialize(settings.clone()).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = err.inner().to_string();
        let kind = if message.starts_with("unknown field") {
            DiagnosticKind::UnknownField
        } else if message.starts_with("missing field") {
            DiagnosticKind::MissingField
        } else {
            DiagnosticKind::InvalidValue
        };
        let hint = match kind {
            DiagnosticKind::UnknownField => {
                Some("check the spelling; the message lists the fields this component takes".into())
            }
            DiagnosticKind::MissingField => Some("add the field; it has no default".into()),
            _ => None,
        };
        SettingsError {
            kind,
            path,
            message,
            hint,
        }
    })
}

/// Every component kind the binary knows, by name.
#[derive(Default)]
pub struct Catalog {
    kinds: BTreeMap<&'static str, Box<dyn ComponentKind>>,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind. Two kinds with one name is a programming error, caught by tests.
    pub fn with(mut self, kind: impl ComponentKind + 'static) -> Self {
        let previous = self.kinds.insert(kind.name(), Box::new(kind));
        assert!(previous.is_none(), "component kind registered twice");
        self
    }

    pub fn get(&self, name: &str) -> Option<&dyn ComponentKind> {
        self.kinds.get(name).map(|k| k.as_ref())
    }

    pub fn kinds(&self) -> impl Iterator<Item = &dyn ComponentKind> {
        self.kinds.values().map(|k| k.as_ref())
    }

    pub fn names_for(&self, role: Role) -> Vec<&'static str> {
        self.kinds
            .values()
            .filter(|k| k.role() == role)
            .map(|k| k.name())
            .collect()
    }
}
