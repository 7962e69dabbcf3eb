//! The Confluent Schema Registry REST API: paths, status codes, error codes and JSON
//! bodies as Confluent's clients expect them.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::compat::Level;
use super::params::Flags;
use super::store::{parse_schema, RegisterError, Store, StoreError};

pub type Shared = Arc<Mutex<Store>>;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A Confluent error body: `{"error_code": 40401, "message": "…"}`.
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }
    fn version_not_found(version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }
    fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }
    fn invalid_schema(message: String) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, message)
    }
    fn invalid_version(version: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""),
        )
    }
    fn invalid_level(level: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive (got '{level}')"
            ),
        )
    }
    fn bad_body(e: serde_json::Error) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            422,
            format!("Unprocessable entity: {e}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "registry store failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            json!({"error_code": self.code, "message": self.message}),
        )
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, body))
}

/// Runs `f` on the store off the async threads (writes fsync).
async fn with_store<T: Send + 'static>(
    store: &Shared,
    f: impl FnOnce(&mut Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("internal error: {e}"),
        )
    })?
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn schema_body(body: &Bytes) -> Result<SchemaBody, ApiError> {
    let body: SchemaBody = serde_json::from_slice(body).map_err(ApiError::bad_body)?;
    if let Some(t) = &body.schema_type {
        if !t.eq_ignore_ascii_case("AVRO") {
            return Err(ApiError::invalid_schema(format!(
                "Invalid schema: schema type {t} is not supported by this registry; it serves AVRO"
            )));
        }
    }
    if !body.references.is_empty() {
        return Err(ApiError::invalid_schema(
            "Invalid schema: schema references are not supported by this registry".into(),
        ));
    }
    Ok(body)
}

/// `latest`, `-1` or a positive number.
fn parse_version(text: &str) -> Result<Option<u32>, ApiError> {
    match text {
        "latest" | "-1" => Ok(None),
        _ => match text.parse::<u32>() {
            Ok(v) if v >= 1 && v <= i32::MAX as u32 => Ok(Some(v)),
            _ => Err(ApiError::invalid_version(text)),
        },
    }
}

pub fn router(store: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { reply(StatusCode::OK, json!({})) }))
        .route(
            "/schemas/types",
            get(|| async { reply(StatusCode::OK, json!(["AVRO"])) }),
        )
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_by_id))
        .route("/schemas/ids/{id}/schema", get(get_raw_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_compatibility_all),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/mode",
            get(|| async { reply(StatusCode::OK, json!({"mode": "READWRITE"})) }),
        )
        .with_state(store)
}

async fn list_subjects(
    State(store): State<Shared>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    let subjects = with_store(&store, move |s| {
        Ok(s.subjects
            .iter()
            .filter(|(_, sub)| !sub.versions.is_empty() && (flags.deleted || sub.is_live()))
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>())
    })
    .await?;
    ok(json!(subjects))
}

async fn register(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = schema_body(&body)?;
    let id = with_store(&store, move |s| match s.register(&subject, &body.schema) {
        Ok(id) => Ok(id),
        Err(RegisterError::Invalid(m)) => Err(ApiError::invalid_schema(m)),
        Err(RegisterError::Incompatible(problems)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: {problems:?}"
            ),
        )),
        Err(RegisterError::Store(e)) => Err(e.into()),
    })
    .await?;
    ok(json!({ "id": id }))
}

async fn lookup(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = schema_body(&body)?;
    with_store(&store, move |s| {
        let (normalized, _) = parse_schema(&body.schema).map_err(ApiError::invalid_schema)?;
        if !s.subjects.get(&subject).is_some_and(|sub| sub.is_live()) {
            return Err(ApiError::subject_not_found(&subject));
        }
        let entry = s.lookup(&subject, &normalized).ok_or_else(ApiError::schema_not_found)?;
        ok(json!({"subject": subject, "id": entry.id, "version": entry.version, "schema": normalized}))
    })
    .await
}

async fn list_versions(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    with_store(&store, move |s| {
        let sub = s
            .subjects
            .get(&subject)
            .filter(|sub| flags.deleted || sub.is_live());
        let sub = sub.ok_or_else(|| ApiError::subject_not_found(&subject))?;
        let versions: Vec<u32> = sub
            .versions
            .iter()
            .filter(|v| flags.deleted || !v.deleted)
            .map(|v| v.version)
            .collect();
        ok(json!(versions))
    })
    .await
}

/// Resolves `version` of `subject` to (version, id).
fn find_version(
    s: &Store,
    subject: &str,
    version: &str,
    include_deleted: bool,
) -> Result<(u32, u32), ApiError> {
    let wanted = parse_version(version)?;
    let sub = s
        .subjects
        .get(subject)
        .filter(|sub| include_deleted || sub.is_live())
        .ok_or_else(|| ApiError::subject_not_found(subject))?;
    let mut candidates = sub
        .versions
        .iter()
        .filter(|v| include_deleted || !v.deleted);
    let entry = match wanted {
        None => candidates.next_back(),
        Some(w) => candidates.find(|v| v.version == w),
    };
    entry
        .map(|v| (v.version, v.id))
        .ok_or_else(|| ApiError::version_not_found(version))
}

async fn get_version(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    with_store(&store, move |s| {
        let (version, id) = find_version(s, &subject, &version, flags.deleted)?;
        let schema = &s.schemas[&id].text;
        ok(json!({"subject": subject, "version": version, "id": id, "schema": schema}))
    })
    .await
}

async fn get_version_schema(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    with_store(&store, move |s| {
        let (_, id) = find_version(s, &subject, &version, false)?;
        Ok(reply(
            StatusCode::OK,
            serde_json::from_str(&s.schemas[&id].text).unwrap_or(Value::Null),
        ))
    })
    .await
}

async fn delete_version(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    with_store(&store, move |s| {
        let (number, _) = find_version(s, &subject, &version, flags.permanent)?;
        let deleted = s.subjects[&subject].versions.iter().any(|v| v.version == number && v.deleted);
        if flags.permanent && !deleted {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40407,
                format!("Subject '{subject}' Version {number} was not deleted first before being permanently deleted"),
            ));
        }
        s.delete_version(&subject, number, flags.permanent)?;
        ok(json!(number))
    })
    .await
}

async fn delete_subject(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    with_store(&store, move |s| {
        let sub = s
            .subjects
            .get(&subject)
            .filter(|sub| !sub.versions.is_empty());
        let sub = sub.ok_or_else(|| ApiError::subject_not_found(&subject))?;
        if flags.permanent && sub.is_live() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40405,
                format!(
                    "Subject '{subject}' was not deleted first before being permanently deleted"
                ),
            ));
        }
        if !flags.permanent && !sub.is_live() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40404,
                format!(
                    "Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
                ),
            ));
        }
        let versions: Vec<u32> = if flags.permanent {
            sub.versions.iter().map(|v| v.version).collect()
        } else {
            sub.live().map(|v| v.version).collect()
        };
        for v in &versions {
            s.delete_version(&subject, *v, flags.permanent)?;
        }
        ok(json!(versions))
    })
    .await
}

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse().map_err(|_| ApiError::schema_not_found())
}

async fn get_by_id(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    with_store(&store, move |s| {
        let schema = s.schemas.get(&id).ok_or_else(ApiError::schema_not_found)?;
        ok(json!({"schema": schema.text}))
    })
    .await
}

async fn get_raw_by_id(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    with_store(&store, move |s| {
        let schema = s.schemas.get(&id).ok_or_else(ApiError::schema_not_found)?;
        Ok(reply(
            StatusCode::OK,
            serde_json::from_str(&schema.text).unwrap_or(Value::Null),
        ))
    })
    .await
}

fn uses_of(s: &Store, id: u32) -> Result<Vec<(String, u32)>, ApiError> {
    if !s.schemas.contains_key(&id) {
        return Err(ApiError::schema_not_found());
    }
    Ok(s.subjects
        .iter()
        .flat_map(|(name, sub)| {
            sub.live()
                .filter(|v| v.id == id)
                .map(move |v| (name.clone(), v.version))
        })
        .collect())
}

async fn versions_of_id(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    with_store(&store, move |s| {
        let uses = uses_of(s, id)?;
        ok(json!(uses
            .into_iter()
            .map(|(subject, version)| json!({"subject": subject, "version": version}))
            .collect::<Vec<_>>()))
    })
    .await
}

async fn subjects_of_id(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    with_store(&store, move |s| {
        let mut subjects: Vec<String> = uses_of(s, id)?.into_iter().map(|(s, _)| s).collect();
        subjects.dedup();
        ok(json!(subjects))
    })
    .await
}

fn compatibility_reply(problems: Vec<String>, verbose: bool) -> Result<Response, ApiError> {
    if verbose {
        ok(json!({"is_compatible": problems.is_empty(), "messages": problems}))
    } else {
        ok(json!({"is_compatible": problems.is_empty()}))
    }
}

async fn check_compatibility(
    State(store): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = schema_body(&body)?;
    with_store(&store, move |s| {
        let (_, parsed) = parse_schema(&body.schema).map_err(ApiError::invalid_schema)?;
        let wanted = parse_version(&version)?;
        let live = s.subjects.get(&subject).is_some_and(|sub| sub.is_live());
        if !live && wanted.is_none() {
            // Nothing registered yet: anything is compatible, as Confluent answers for `latest`.
            return compatibility_reply(Vec::new(), flags.verbose);
        }
        let (_, id) = find_version(s, &subject, &version, false)?;
        // A named version is checked on its own, whatever the transitivity of the level.
        let level = s.level_of(&subject).non_transitive();
        let problems = super::compat::check(level, &parsed, &[&s.schemas[&id].parsed]);
        compatibility_reply(problems, flags.verbose)
    })
    .await
}

async fn check_compatibility_all(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = schema_body(&body)?;
    with_store(&store, move |s| {
        let (_, parsed) = parse_schema(&body.schema).map_err(ApiError::invalid_schema)?;
        compatibility_reply(
            s.compatibility_problems(&subject, &parsed, None),
            flags.verbose,
        )
    })
    .await
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn level_body(body: &Bytes) -> Result<Level, ApiError> {
    let body: ConfigBody = serde_json::from_slice(body).map_err(ApiError::bad_body)?;
    body.compatibility
        .parse()
        .map_err(|_| ApiError::invalid_level(&body.compatibility))
}

async fn get_global_config(State(store): State<Shared>) -> Result<Response, ApiError> {
    let level = with_store(&store, |s| Ok(s.global_level)).await?;
    ok(json!({"compatibilityLevel": level.name()}))
}

async fn put_global_config(State(store): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let level = level_body(&body)?;
    with_store(&store, move |s| Ok(s.set_level(None, Some(level))?)).await?;
    ok(json!({"compatibility": level.name()}))
}

async fn get_subject_config(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    with_store(&store, move |s| {
        match (
            s.subjects.get(&subject).and_then(|sub| sub.level),
            flags.default_to_global,
        ) {
            (Some(level), _) => ok(json!({"compatibilityLevel": level.name()})),
            (None, true) => ok(json!({"compatibilityLevel": s.global_level.name()})),
            (None, false) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40408,
                format!("Subject '{subject}' does not have subject-level compatibility configured"),
            )),
        }
    })
    .await
}

async fn put_subject_config(
    State(store): State<Shared>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let level = level_body(&body)?;
    with_store(&store, move |s| {
        Ok(s.set_level(Some(&subject), Some(level))?)
    })
    .await?;
    ok(json!({"compatibility": level.name()}))
}

async fn delete_subject_config(
    State(store): State<Shared>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    with_store(&store, move |s| {
        let previous = s.subjects.get(&subject).and_then(|sub| sub.level);
        let previous = previous.ok_or_else(|| ApiError::subject_not_found(&subject))?;
        s.set_level(Some(&subject), None)?;
        ok(json!({"compatibilityLevel": previous.name()}))
    })
    .await
}
