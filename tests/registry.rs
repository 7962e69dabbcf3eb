//! The schema registry speaks Confluent's REST API: status codes, error codes, bodies,
//! compatibility levels, deletes, and durability across restarts.

mod support;

use serde_json::{json, Value};
use support::start_registry as start;

const V1: &str = r#"{"type":"record","name":"Claim","fields":[{"name":"id","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"Claim","fields":[{"name":"id","type":"long"},{"name":"note","type":["null","string"],"default":null}]}"#;
const V_REQUIRED: &str = r#"{"type":"record","name":"Claim","fields":[{"name":"id","type":"long"},{"name":"amount","type":"double"}]}"#;

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, url)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json");
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.expect("registry answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn schema(s: &str) -> Option<Value> {
    Some(json!({ "schema": s }))
}

#[tokio::test]
async fn confluent_api_semantics() {
    use reqwest::Method as M;
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    let u = |p: &str| format!("{}{p}", r.url);

    let (s, b) = call(M::POST, u("/subjects/claims-value/versions"), schema(V1)).await;
    assert_eq!((s, &b["id"]), (200, &json!(1)));
    let (_, again) = call(M::POST, u("/subjects/claims-value/versions"), schema(V1)).await;
    assert_eq!(again["id"], 1, "identical schema, same id");
    let (_, other) = call(M::POST, u("/subjects/other-value/versions"), schema(V1)).await;
    assert_eq!(other["id"], 1, "ids are global");

    let (s, b) = call(M::POST, u("/subjects/claims-value/versions"), schema(V2)).await;
    assert_eq!((s, &b["id"]), (200, &json!(2)));
    let (s, b) = call(
        M::POST,
        u("/subjects/claims-value/versions"),
        schema(V_REQUIRED),
    )
    .await;
    assert_eq!((s, &b["error_code"]), (409, &json!(409)), "{b}");

    let (s, b) = call(
        M::POST,
        u("/subjects/claims-value/versions"),
        schema("{\"type\": \"recor"),
    )
    .await;
    assert_eq!((s, &b["error_code"]), (422, &json!(42201)), "{b}");
    let (s, b) = call(
        M::POST,
        u("/subjects/claims-value/versions"),
        schema(r#"{"type":"record","name":"x"}"#),
    )
    .await;
    assert_eq!((s, &b["error_code"]), (422, &json!(42201)), "{b}");

    let (_, subjects) = call(M::GET, u("/subjects"), None).await;
    assert_eq!(subjects, json!(["claims-value", "other-value"]));
    let (_, versions) = call(M::GET, u("/subjects/claims-value/versions"), None).await;
    assert_eq!(versions, json!([1, 2]));
    let (s, latest) = call(M::GET, u("/subjects/claims-value/versions/latest"), None).await;
    assert_eq!(
        (s, &latest["version"], &latest["id"], &latest["subject"]),
        (200, &json!(2), &json!(2), &json!("claims-value"))
    );
    let (s, b) = call(M::GET, u("/subjects/nope/versions/1"), None).await;
    assert_eq!((s, &b["error_code"]), (404, &json!(40401)));
    let (s, b) = call(M::GET, u("/subjects/claims-value/versions/9"), None).await;
    assert_eq!((s, &b["error_code"]), (404, &json!(40402)));
    let (s, b) = call(M::GET, u("/subjects/claims-value/versions/zero"), None).await;
    assert_eq!((s, &b["error_code"]), (422, &json!(42202)));

    let (s, by_id) = call(M::GET, u("/schemas/ids/2"), None).await;
    assert_eq!(s, 200);
    assert!(by_id["schema"].as_str().unwrap().contains("note"));
    let (s, b) = call(M::GET, u("/schemas/ids/77"), None).await;
    assert_eq!((s, &b["error_code"]), (404, &json!(40403)));

    let (s, found) = call(M::POST, u("/subjects/claims-value"), schema(V1)).await;
    assert_eq!(
        (s, &found["version"], &found["id"]),
        (200, &json!(1), &json!(1))
    );
    let (s, b) = call(M::POST, u("/subjects/claims-value"), schema(V_REQUIRED)).await;
    assert_eq!((s, &b["error_code"]), (404, &json!(40403)));

    let (_, c) = call(
        M::POST,
        u("/compatibility/subjects/claims-value/versions/latest"),
        schema(V_REQUIRED),
    )
    .await;
    assert_eq!(c["is_compatible"], false);
    let (_, c) = call(
        M::POST,
        u("/compatibility/subjects/claims-value/versions/1?verbose=true"),
        schema(V2),
    )
    .await;
    assert_eq!(c["is_compatible"], true, "{c}");

    let (_, g) = call(M::GET, u("/config"), None).await;
    assert_eq!(g["compatibilityLevel"], "BACKWARD");
    let (s, b) = call(
        M::PUT,
        u("/config"),
        Some(json!({"compatibility": "SIDEWAYS"})),
    )
    .await;
    assert_eq!((s, &b["error_code"]), (422, &json!(42203)));
    let (s, b) = call(M::GET, u("/config/claims-value"), None).await;
    assert_eq!((s, &b["error_code"]), (404, &json!(40408)));
    let (s, _) = call(
        M::PUT,
        u("/config/claims-value"),
        Some(json!({"compatibility": "FORWARD"})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, c) = call(
        M::POST,
        u("/compatibility/subjects/claims-value/versions/latest"),
        schema(V_REQUIRED),
    )
    .await;
    assert_eq!(
        c["is_compatible"], true,
        "adding a required field is FORWARD compatible"
    );
    for level in [
        "NONE",
        "FULL",
        "FULL_TRANSITIVE",
        "BACKWARD_TRANSITIVE",
        "FORWARD_TRANSITIVE",
    ] {
        let (s, b) = call(
            M::PUT,
            u("/config/claims-value"),
            Some(json!({"compatibility": level})),
        )
        .await;
        assert_eq!((s, &b["compatibility"]), (200, &json!(level)));
    }

    let (s, b) = call(M::DELETE, u("/subjects/other-value?permanent=true"), None).await;
    assert_eq!(
        (s, &b["error_code"]),
        (404, &json!(40405)),
        "soft delete comes first"
    );
    let (s, b) = call(M::DELETE, u("/subjects/other-value"), None).await;
    assert_eq!((s, b), (200, json!([1])));
    let (_, subjects) = call(M::GET, u("/subjects"), None).await;
    assert_eq!(subjects, json!(["claims-value"]));
    let (_, subjects) = call(M::GET, u("/subjects?deleted=true"), None).await;
    assert_eq!(subjects, json!(["claims-value", "other-value"]));
    let (s, _) = call(M::DELETE, u("/subjects/other-value?permanent=true"), None).await;
    assert_eq!(s, 200);
    let (s, b) = call(M::DELETE, u("/subjects/claims-value/versions/1"), None).await;
    assert_eq!((s, b), (200, json!(1)));
    let (_, versions) = call(M::GET, u("/subjects/claims-value/versions"), None).await;
    assert_eq!(versions, json!([2]));
    r.shutdown().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    use reqwest::Method as M;
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path()).await;
    call(
        M::POST,
        format!("{}/subjects/a-value/versions", r.url),
        schema(V1),
    )
    .await;
    let (_, b) = call(
        M::POST,
        format!("{}/subjects/a-value/versions", r.url),
        schema(V2),
    )
    .await;
    let v2_id = b["id"].clone();
    call(
        M::PUT,
        format!("{}/config/a-value", r.url),
        Some(json!({"compatibility": "FULL"})),
    )
    .await;
    r.shutdown().await;

    let r = start(dir.path()).await;
    let (_, latest) = call(
        M::GET,
        format!("{}/subjects/a-value/versions/latest", r.url),
        None,
    )
    .await;
    assert_eq!((&latest["version"], &latest["id"]), (&json!(2), &v2_id));
    let (_, c) = call(M::GET, format!("{}/config/a-value", r.url), None).await;
    assert_eq!(c["compatibilityLevel"], "FULL");
    let (_, b) = call(
        M::POST,
        format!("{}/subjects/b-value/versions", r.url),
        schema(r#"{"type":"string"}"#),
    )
    .await;
    assert_eq!(b["id"], 3, "ids continue after a restart");
    r.shutdown().await;
}

#[tokio::test]
async fn write_endpoints_can_require_credentials() {
    use reqwest::Method as M;
    let dir = tempfile::tempdir().unwrap();
    let auth = strata::registry::auth::WriteAuth {
        user: "admin".into(),
        password: strata_pipeline::secret::Secret::new("s3cret"),
    };
    let r = support::start_registry_with_auth(dir.path(), Some(auth)).await;
    let url = format!("{}/subjects/claims-value/versions", r.url);
    let client = reqwest::Client::new();
    let register = |user: Option<(&str, &str)>| {
        let mut req = client
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(json!({ "schema": V1 }).to_string());
        if let Some((u, p)) = user {
            req = req.basic_auth(u, Some(p));
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = register(None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (401, json!(40101)),
        "{body}"
    );
    assert_eq!(register(Some(("admin", "wrong"))).await.0, 401);
    let (status, body) = register(Some(("admin", "s3cret"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].is_number());
    // Reads and lookups stay open; deletes and settings are writes.
    let (status, subjects) = call(M::GET, format!("{}/subjects", r.url), None).await;
    assert_eq!((status, subjects), (200, json!(["claims-value"])));
    let (status, _) = call(
        M::POST,
        format!("{}/subjects/claims-value", r.url),
        schema(V1),
    )
    .await;
    assert_eq!(status, 200, "a lookup needs no credentials");
    let (status, _) = call(M::DELETE, format!("{}/subjects/claims-value", r.url), None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        M::PUT,
        format!("{}/config", r.url),
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(status, 401);
    // Strata's own client registers with the credentials from its topology.
    let codec = strata_pipeline::avro::Codec::new(&strata_pipeline::topology::RegistrySettings {
        url: r.url.clone(),
        username: Some("admin".into()),
        password: Some(strata_pipeline::secret::Secret::new("s3cret")),
        ca_file: None,
        allow_incompatible: false,
    })
    .unwrap();
    codec
        .register("claims-value", V2)
        .await
        .expect("registers with credentials");
    let anonymous = support::codec(&r.url);
    let err = anonymous.register("other-value", V2).await.unwrap_err();
    assert!(
        err.to_string().contains("401") || err.to_string().to_lowercase().contains("unauthorized"),
        "{err}"
    );
    r.shutdown().await;
}
