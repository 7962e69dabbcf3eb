//! Checks a parsed topology document: sections, components, inputs, cycles, topics and
//! stores. Every check runs, so one pass reports every problem.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use super::catalog::{parse_settings, Catalog, Role};
use super::diagnostics::{did_you_mean, Diagnostic, DiagnosticKind as K};
use super::model::*;
use super::path::join;

const TOP_LEVEL: &[&str] = &[
    "version",
    "region",
    "kafka",
    "schema_registry",
    "state",
    "topics",
    "observability",
    "shutdown",
    "sources",
    "processors",
    "sinks",
];

const ROLES: [Role; 3] = [Role::Source, Role::Processor, Role::Sink];

pub fn check(doc: &Value, catalog: &Catalog) -> Result<Topology, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let Some(map) = doc.as_mapping() else {
        return Err(vec![Diagnostic::new(
            K::InvalidValue,
            "",
            "a topology file must be a mapping with `region`, `kafka`, `schema_registry`, `state` and components",
        )
        .with_hint("start from topologies/quickstart.yaml")]);
    };
    for key in map.keys() {
        let key = key.as_str().unwrap_or("<non-string key>");
        if !TOP_LEVEL.contains(&key) {
            let mut d = Diagnostic::new(K::UnknownField, key, format!("unknown section `{key}`"));
            d = match did_you_mean(key, TOP_LEVEL.iter().copied()) {
                Some(m) => d.with_hint(format!("did you mean `{m}`?")),
                None => d.with_hint(format!("sections are: {}", TOP_LEVEL.join(", "))),
            };
            errors.push(d);
        }
    }
    if let Some(v) = map.get("version") {
        if v.as_u64() != Some(u64::from(FORMAT_VERSION)) {
            errors.push(
                Diagnostic::new(
                    K::InvalidValue,
                    "version",
                    format!("unsupported format version {v:?}"),
                )
                .with_hint(format!("this build reads version {FORMAT_VERSION}")),
            );
        }
    }
    let region = check_region(map.get("region"), &mut errors);
    let kafka = section::<KafkaSettings>(map, "kafka", true, &mut errors);
    let schema_registry = section::<RegistrySettings>(map, "schema_registry", true, &mut errors);
    let state = section::<StateSettings>(map, "state", true, &mut errors);
    let topics = section::<TopicSettings>(map, "topics", false, &mut errors);
    let observability = section::<ObservabilitySettings>(map, "observability", false, &mut errors);
    let shutdown = section::<ShutdownSettings>(map, "shutdown", false, &mut errors);
    if let Some(state) = &state {
        check_store(state, &mut errors);
    }
    if let Some(topics) = &topics {
        check_topic_settings(topics, &mut errors);
    }

    let (components, declared) = components(map, catalog, &mut errors);
    check_inputs(&components, &declared, &mut errors);
    check_cycles(&components, &mut errors);

    let (Some(region), Some(kafka), Some(schema_registry), Some(state)) =
        (region, kafka, schema_registry, state)
    else {
        return Err(errors);
    };
    let topology = Topology {
        region,
        kafka,
        schema_registry,
        state,
        topics: topics.unwrap_or_default(),
        observability: observability.unwrap_or_default(),
        shutdown: shutdown.unwrap_or_default(),
        components,
        replay: None,
    };
    check_topic_names(&topology, &mut errors);
    if errors.is_empty() {
        Ok(topology)
    } else {
        Err(errors)
    }
}

fn check_region(value: Option<&Value>, errors: &mut Vec<Diagnostic>) -> Option<String> {
    let hint = "a region is lower-case letters, digits and `-`, e.g. us-east; it is part of every topic name";
    match value.map(|v| v.as_str()) {
        None => {
            errors.push(
                Diagnostic::new(K::MissingField, "region", "missing `region`").with_hint(hint),
            );
            None
        }
        Some(Some(r))
            if !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
        {
            Some(r.to_string())
        }
        Some(_) => {
            errors.push(
                Diagnostic::new(K::InvalidValue, "region", "invalid `region`").with_hint(hint),
            );
            None
        }
    }
}

fn section<T: DeserializeOwned>(
    map: &serde_yaml_ng::Mapping,
    name: &str,
    required: bool,
    errors: &mut Vec<Diagnostic>,
) -> Option<T> {
    let value = match map.get(name) {
        Some(v) => v.clone(),
        None if required => {
            errors.push(
                Diagnostic::new(K::MissingField, name, format!("missing section `{name}`"))
                    .with_hint("see topologies/quickstart.yaml for a complete file"),
            );
            return None;
        }
        None => Value::Mapping(Default::default()),
    };
    match parse_settings::<T>(&value) {
        Ok(v) => Some(v),
        Err(e) => {
            let mut d = Diagnostic::new(e.kind, join(name, &e.path), e.message);
            d.hint = e.hint;
            errors.push(d);
            None
        }
    }
}

fn check_store(state: &StateSettings, errors: &mut Vec<Diagnostic>) {
    if state.dir.as_os_str().is_empty() {
        errors.push(
            Diagnostic::new(K::InvalidStore, "state.dir", "the state directory is empty")
                .with_hint("give a directory, e.g. ./.strata/state/${region}"),
        );
    }
    for (path, size, what) in [
        ("state.cache_size", state.cache_size, "the block cache"),
        (
            "state.memtable_size",
            state.memtable_size,
            "the memtable budget",
        ),
    ] {
        if size.0 < (1 << 20) {
            errors.push(
                Diagnostic::new(
                    K::InvalidStore,
                    path,
                    format!("{what} must be at least 1MiB"),
                )
                .with_hint("64MiB suits most deployments"),
            );
        }
    }
    if state.changelog_replication_factor < 1 {
        errors.push(Diagnostic::new(
            K::InvalidStore,
            "state.changelog_replication_factor",
            "a changelog needs a replication factor of at least 1",
        ));
    }
}

fn check_topic_settings(topics: &TopicSettings, errors: &mut Vec<Diagnostic>) {
    if topics.partitions < 1 {
        errors.push(Diagnostic::new(
            K::InvalidTopic,
            "topics.partitions",
            "partitions must be at least 1",
        ));
    }
    if topics.replication_factor < 1 {
        errors.push(Diagnostic::new(
            K::InvalidTopic,
            "topics.replication_factor",
            "the replication factor must be at least 1",
        ));
    }
}

/// Checks every component; returns those that passed, and the role of every declared
/// name (also of components with errors, so their readers are not reported again).
fn components(
    map: &serde_yaml_ng::Mapping,
    catalog: &Catalog,
    errors: &mut Vec<Diagnostic>,
) -> (Vec<Component>, HashMap<String, Role>) {
    let mut out = Vec::new();
    let mut seen: HashMap<String, Role> = HashMap::new();
    for role in ROLES {
        let section = role.section();
        let Some(value) = map.get(section) else {
            continue;
        };
        let Some(entries) = value.as_mapping() else {
            errors.push(Diagnostic::new(
                K::InvalidValue,
                section,
                format!("`{section}` must be a mapping from component names to their settings"),
            ));
            continue;
        };
        for (name, body) in entries {
            let Some(name) = name.as_str() else {
                errors.push(Diagnostic::new(
                    K::InvalidValue,
                    section,
                    "component names must be strings",
                ));
                continue;
            };
            let path = join(section, name);
            if !valid_component_name(name) {
                errors.push(
                    Diagnostic::new(
                        K::InvalidValue,
                        path.as_str(),
                        format!("invalid component name `{name}`"),
                    )
                    .with_hint(
                        "use lower-case letters, digits and `_`; the name is part of topic names",
                    ),
                );
            }
            if let Some(other) = seen.insert(name.to_string(), role) {
                errors.push(
                    Diagnostic::new(
                        K::DuplicateName,
                        path.as_str(),
                        format!("two components are named `{name}` (in `{}` and `{section}`)", other.section()),
                    )
                    .with_hint("component names are unique across sources, processors and sinks; rename one"),
                );
                continue;
            }
            if let Some(c) = component(role, name, &path, body, catalog, errors) {
                out.push(c);
            }
        }
    }
    (out, seen)
}

fn valid_component_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn component(
    role: Role,
    name: &str,
    path: &str,
    body: &Value,
    catalog: &Catalog,
    errors: &mut Vec<Diagnostic>,
) -> Option<Component> {
    let Some(body) = body.as_mapping() else {
        errors.push(Diagnostic::new(
            K::InvalidValue,
            path,
            "a component must be a mapping with `kind` and its settings",
        ));
        return None;
    };
    let mut settings = body.clone();
    let kind = match settings.remove("kind") {
        Some(Value::String(k)) => k,
        Some(_) => {
            errors.push(Diagnostic::new(
                K::InvalidValue,
                join(path, "kind"),
                "`kind` must be a string",
            ));
            return None;
        }
        None => {
            errors.push(
                Diagnostic::new(K::MissingField, join(path, "kind"), "missing `kind`").with_hint(
                    format!(
                        "kinds of {}: {}",
                        role.section(),
                        catalog.names_for(role).join(", ")
                    ),
                ),
            );
            return None;
        }
    };
    let inputs = component_inputs(role, path, settings.remove("inputs"), errors);
    let Some(kind_impl) = catalog.get(&kind).filter(|k| k.role() == role) else {
        let same_role = catalog.names_for(role);
        let mut d = Diagnostic::new(
            K::UnknownKind,
            join(path, "kind"),
            format!("unknown {} kind `{kind}`", role_word(role)),
        );
        d = match (
            catalog.get(&kind),
            did_you_mean(&kind, same_role.iter().copied()),
        ) {
            (Some(other), _) => d.with_hint(format!(
                "`{kind}` is a {} kind; move it under `{}`",
                role_word(other.role()),
                other.role().section()
            )),
            (None, Some(m)) => d.with_hint(format!("did you mean `{m}`?")),
            (None, None) => d.with_hint(format!("known kinds: {}", same_role.join(", "))),
        };
        errors.push(d);
        return None;
    };
    let settings = Value::Mapping(settings);
    match kind_impl.check(&settings) {
        Ok(ports) => Some(Component {
            name: name.to_string(),
            role,
            kind,
            inputs: inputs?,
            ports: ports.named,
            settings,
        }),
        Err(problems) => {
            for p in problems {
                let mut d = Diagnostic::new(p.kind, join(path, &p.path), p.message);
                d.hint = p.hint;
                errors.push(d);
            }
            None
        }
    }
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Source => "source",
        Role::Processor => "processor",
        Role::Sink => "sink",
    }
}

fn component_inputs(
    role: Role,
    path: &str,
    value: Option<Value>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Vec<Input>> {
    let input_path = join(path, "inputs");
    match (role, value) {
        (Role::Source, None) => Some(Vec::new()),
        (Role::Source, Some(_)) => {
            errors.push(
                Diagnostic::new(K::UnknownField, input_path, "a source has no `inputs`")
                    .with_hint("sources read from databases; remove `inputs`"),
            );
            None
        }
        (_, None) => {
            errors.push(
                Diagnostic::new(K::MissingField, input_path, "missing `inputs`")
                    .with_hint("list the components (or `topic:<name>`) this one reads"),
            );
            None
        }
        (_, Some(Value::Sequence(items))) if !items.is_empty() => {
            let mut inputs = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) => inputs.push(Input::parse(s)),
                    None => errors.push(Diagnostic::new(
                        K::InvalidValue,
                        format!("{input_path}[{i}]"),
                        "an input is a component name, `component.port` or `topic:<name>`",
                    )),
                }
            }
            Some(inputs)
        }
        (_, Some(_)) => {
            errors.push(
                Diagnostic::new(
                    K::InvalidValue,
                    input_path,
                    "`inputs` must be a non-empty list",
                )
                .with_hint("e.g. `inputs: [claims_db]`"),
            );
            None
        }
    }
}

fn check_inputs(
    components: &[Component],
    declared: &HashMap<String, Role>,
    errors: &mut Vec<Diagnostic>,
) {
    let by_name: BTreeMap<&str, &Component> =
        components.iter().map(|c| (c.name.as_str(), c)).collect();
    for c in components {
        for (i, input) in c.inputs.iter().enumerate() {
            let path = format!("{}.{}.inputs[{i}]", c.role.section(), c.name);
            match input {
                Input::Topic(topic) => {
                    if let Err(why) = valid_topic(topic) {
                        errors.push(Diagnostic::new(
                            K::InvalidTopic,
                            path,
                            format!("input topic `{topic}`: {why}"),
                        ));
                    }
                }
                Input::Component { name, port } => match by_name.get(name.as_str()) {
                    // Declared but with errors of its own, already reported.
                    None if declared
                        .get(name.as_str())
                        .is_some_and(|r| *r != Role::Sink) => {}
                    None => {
                        let mut d = Diagnostic::new(
                            K::UnknownInput,
                            path,
                            format!(
                                "`{}` reads `{input}`, but no component is named `{name}`",
                                c.name
                            ),
                        );
                        d = match did_you_mean(name, declared.keys().map(String::as_str)) {
                            Some(m) => d.with_hint(format!("did you mean `{m}`?")),
                            None => d.with_hint("name a source or processor of this file, or `topic:<name>` for an external topic"),
                        };
                        errors.push(d);
                    }
                    Some(target) if target.role == Role::Sink => errors.push(
                        Diagnostic::new(
                            K::UnknownInput,
                            path,
                            format!("`{name}` is a sink and has no output to read"),
                        )
                        .with_hint("read the source or processor that feeds it instead"),
                    ),
                    Some(target) if name == &c.name => errors.push(Diagnostic::new(
                        K::Cycle,
                        path,
                        format!("`{}` reads its own output", target.name),
                    )),
                    Some(target) => {
                        if let Some(port) = port {
                            if !target.ports.contains(port) {
                                let ports = if target.ports.is_empty() {
                                    "it has only its default output".to_string()
                                } else {
                                    format!("its outputs are: {}", target.ports.join(", "))
                                };
                                errors.push(
                                    Diagnostic::new(
                                        K::UnknownInput,
                                        path,
                                        format!("`{name}` has no output named `{port}`"),
                                    )
                                    .with_hint(ports),
                                );
                            }
                        }
                    }
                },
            }
        }
    }
}

/// Finds cycles among components with a depth-first search; each cycle is reported once.
fn check_cycles(components: &[Component], errors: &mut Vec<Diagnostic>) {
    let index: HashMap<&str, usize> = components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let edges: Vec<Vec<usize>> = components
        .iter()
        .map(|c| {
            c.inputs
                .iter()
                .filter_map(|i| match i {
                    Input::Component { name, .. } if name != &c.name => {
                        index.get(name.as_str()).copied()
                    }
                    _ => None,
                })
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks = vec![Mark::New; components.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        n: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        components: &[Component],
        errors: &mut Vec<Diagnostic>,
    ) {
        marks[n] = Mark::Active;
        stack.push(n);
        for &m in &edges[n] {
            match marks[m] {
                Mark::New => visit(m, edges, marks, stack, components, errors),
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == m).unwrap_or(0);
                    let mut names: Vec<&str> = stack[start..]
                        .iter()
                        .map(|&s| components[s].name.as_str())
                        .collect();
                    names.reverse();
                    names.push(names[0]);
                    let c = &components[m];
                    errors.push(
                        Diagnostic::new(
                            K::Cycle,
                            format!("{}.{}.inputs", c.role.section(), c.name),
                            format!("the inputs form a cycle: {}", names.join(" → ")),
                        )
                        .with_hint("data must flow one way from sources to sinks; remove one of these inputs"),
                    );
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
    }
    for n in 0..components.len() {
        if marks[n] == Mark::New {
            visit(n, &edges, &mut marks, &mut stack, components, errors);
        }
    }
}

/// Kafka's rules for topic names.
pub fn valid_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err("a topic name cannot be empty, `.` or `..`".into());
    }
    if topic.len() > 249 {
        return Err(format!(
            "a topic name has at most 249 characters, this one has {}",
            topic.len()
        ));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{bad}` is not allowed; use letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

fn check_topic_names(topology: &Topology, errors: &mut Vec<Diagnostic>) {
    if let Err(why) = valid_topic(&topology.dead_letter_topic()) {
        errors.push(Diagnostic::new(K::InvalidTopic, "topics.dead_letter", why));
    }
    if let Err(why) = valid_topic(&topology.audit_topic()) {
        errors.push(Diagnostic::new(K::InvalidTopic, "topics.audit", why));
    }
    for c in topology
        .components
        .iter()
        .filter(|c| c.role == Role::Processor)
    {
        let ports = std::iter::once(None).chain(c.ports.iter().map(|p| Some(p.as_str())));
        for port in ports {
            let topic = topology.output_topic(&c.name, port);
            if let Err(why) = valid_topic(&topic) {
                errors.push(Diagnostic::new(
                    K::InvalidTopic,
                    format!("processors.{}", c.name),
                    format!("output topic `{topic}`: {why}"),
                ));
            }
        }
    }
}
