//! Topology files: every shipped file is valid, and each kind of mistake gets its own
//! clear diagnostic with a place in the file and a hint.

use std::path::{Path, PathBuf};

use strata::components::catalog;
use strata_pipeline::topology::{self, graph, DiagnosticKind, Diagnostics, Role};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load(path: &str) -> Result<topology::Topology, Diagnostics> {
    topology::load_file(&repo(path), &catalog())
}

fn broken(name: &str) -> Diagnostics {
    load(&format!("tests/topologies/invalid/{name}.yaml")).expect_err("a broken file must not load")
}

#[test]
fn every_shipped_topology_is_valid() {
    let mut count = 0;
    for entry in std::fs::read_dir(repo("topologies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let t = topology::load_file(&path, &catalog()).unwrap_or_else(|d| panic!("{d}"));
            assert!(t.components.iter().any(|c| c.role == Role::Source));
            assert!(t.components.iter().any(|c| c.role == Role::Sink));
            count += 1;
        }
    }
    assert!(count >= 3, "quickstart, us-east and eu-west");
}

#[test]
fn region_flows_into_topics() {
    let east = load("topologies/us-east.yaml").unwrap();
    let west = load("topologies/eu-west.yaml").unwrap();
    assert_eq!(
        east.output_topic("tiering", Some("hot")),
        "us-east.tiering.hot"
    );
    assert_eq!(west.dead_letter_topic(), "eu-west.dead-letter");
    // Conflicts resolved and dead-letter notices share the region's audit topic.
    assert_eq!(west.audit_topic(), "eu-west.audit");
    assert_eq!(
        west.output_topic("conflicts", Some("audit")),
        "eu-west.audit"
    );
}

#[test]
fn graph_renders_mermaid_and_dot() {
    let t = load("topologies/quickstart.yaml").unwrap();
    let mermaid = graph::mermaid(&t);
    assert!(mermaid.starts_with("flowchart LR"));
    assert!(mermaid.contains("tiering -- hot --> hot"), "{mermaid}");
    let dot = graph::dot(&t);
    assert!(dot.contains("\"claims_db\" -> \"conflicts\";"), "{dot}");
    let east = load("topologies/us-east.yaml").unwrap();
    assert!(graph::mermaid(&east).contains("topic_eu_west_conflicts --> conflicts"));
}

fn assert_one(d: &Diagnostics, kind: DiagnosticKind, path: &str, needle: &str) {
    let found = d
        .items
        .iter()
        .find(|i| i.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in:\n{d}"));
    assert_eq!(found.path, path, "{d}");
    assert!(found.location.is_some(), "a line and column: {d}");
    assert!(
        found.message.contains(needle),
        "message mentions `{needle}`: {d}"
    );
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let d = broken("yaml_syntax");
    let item = &d.items[0];
    assert_eq!(item.kind, DiagnosticKind::YamlSyntax);
    assert!(item.location.unwrap().line >= 2, "{d}");
    assert!(item.hint.is_some());
}

#[test]
fn unknown_field_names_the_field() {
    let d = broken("unknown_field");
    assert_one(
        &d,
        DiagnosticKind::UnknownField,
        "sources.db.snapshot_chunk_size",
        "snapshot_chunk_size",
    );
}

#[test]
fn unknown_kind_suggests_the_near_one() {
    let d = broken("unknown_kind");
    assert_one(
        &d,
        DiagnosticKind::UnknownKind,
        "processors.analysis.kind",
        "claim_analysys",
    );
    assert!(d.items[0]
        .hint
        .as_deref()
        .unwrap()
        .contains("claim_analysis"));
}

#[test]
fn misspelled_input_suggests_the_component() {
    let d = broken("misspelled_input");
    assert_one(
        &d,
        DiagnosticKind::UnknownInput,
        "processors.analysis.inputs[0]",
        "dbb",
    );
    assert!(d.items[0].hint.as_deref().unwrap().contains("`db`"));
}

#[test]
fn missing_inputs_are_reported() {
    let d = broken("missing_input");
    assert_one(
        &d,
        DiagnosticKind::MissingField,
        "sinks.hot.inputs",
        "inputs",
    );
}

#[test]
fn cycle_is_shown_as_a_path() {
    let d = broken("cycle");
    let item = d
        .items
        .iter()
        .find(|i| i.kind == DiagnosticKind::Cycle)
        .expect("a cycle");
    assert!(
        item.message.contains("analysis") && item.message.contains("scoring"),
        "{d}"
    );
    assert!(item.message.contains('→'));
}

#[test]
fn bad_duration_explains_the_syntax() {
    let d = broken("bad_duration");
    assert_one(
        &d,
        DiagnosticKind::InvalidValue,
        "processors.analysis.duplicate_window",
        "30 fortnights",
    );
    assert!(
        d.items[0].message.contains("90d"),
        "the message shows valid examples: {d}"
    );
}

#[test]
fn bad_size_explains_the_syntax() {
    let d = broken("bad_size");
    assert_one(&d, DiagnosticKind::InvalidValue, "state.cache_size", "lots");
}

#[test]
fn a_missing_ca_file_is_refused_before_connecting() {
    let d = broken("missing_root_cert");
    assert_one(
        &d,
        DiagnosticKind::InvalidValue,
        "sources.db.connection.ssl_root_cert",
        "/nonexistent/strata-ca.pem",
    );
}

#[test]
fn unset_variable_without_default() {
    let d = broken("unset_variable");
    let item = &d.items[0];
    assert_eq!(item.kind, DiagnosticKind::UnsetVariable);
    assert!(item.message.contains("STRATA_TEST_SURELY_UNSET_BROKERS"));
    assert_eq!(item.location.unwrap().line, 3);
}

#[test]
fn duplicate_component_names() {
    let d = broken("duplicate_name");
    assert_one(
        &d,
        DiagnosticKind::DuplicateName,
        "sinks.analysis",
        "analysis",
    );
}

#[test]
fn many_problems_are_reported_together() {
    let text = std::fs::read_to_string(repo("tests/topologies/minimal.yaml"))
        .unwrap()
        .replace("kind: claim_analysis", "kind: nope")
        .replace("inputs: [analysis]", "inputs: [ghost]")
        .replace("slot: slot", "slot: Bad-Slot");
    let d = topology::load_str("inline.yaml", &text, &catalog(), &|_| None).unwrap_err();
    assert!(d.items.len() >= 3, "{d}");
    let rendered = d.to_string();
    assert!(rendered.contains("inline.yaml:"), "{rendered}");
}

#[test]
fn never_panics_on_odd_documents() {
    for text in [
        "",
        "[]",
        "42",
        "region: [1]",
        "sources: 5",
        "processors: {a: 1}",
        "sinks: {a: {kind: 3}}",
        "\t\t:",
    ] {
        let _ = topology::load_str("odd.yaml", text, &catalog(), &|_| None);
    }
}
