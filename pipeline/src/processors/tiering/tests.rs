//! Tiering on the in-memory harness: age at event time picks the tier, timers move rows
//! on when the watermark passes a boundary, reference rows go everywhere without PII.

use apache_avro::types::Value;

use super::{Tiering, TieringConfig};
use crate::processors::testing::envelope;
use crate::runtime::harness::Harness;
use crate::runtime::processor::record_field;
use crate::runtime::{Event, Output};

const DAY_MS: i64 = 86_400_000;
const NOW: i64 = 20_000 * DAY_MS; // day 20000 = 2024-10-04

fn feed(h: &mut Harness<Tiering>, key: i64, value: &Value, offset: i64) -> Vec<Output> {
    let key = Value::Record(vec![("claim_id".into(), Value::Long(key))]);
    h.feed(&Event {
        topic: "conflicts",
        partition: 0,
        offset,
        timestamp_ms: 0,
        key: Some(&key),
        key_schema_id: Some(1),
        value: Some(value),
        value_schema_id: Some(2),
    })
    .expect("processed")
}

fn claim(id: i64, position: u64, ts_ms: i64, service_day: i32) -> Value {
    envelope(
        "claims",
        position,
        ts_ms,
        vec![
            ("claim_id", Value::Long(id)),
            (
                "service_date_from",
                Value::Union(1, Box::new(Value::Date(service_day))),
            ),
            (
                "diagnosis_codes",
                Value::Union(
                    1,
                    Box::new(Value::Array(vec![Value::String("E11.9".into())])),
                ),
            ),
        ],
    )
}

fn ports(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| o.port.clone().unwrap_or_default())
        .collect()
}

fn harness() -> Harness<Tiering> {
    Harness::new(Tiering::new(serde_yaml_ng::from_str::<TieringConfig>("{}").unwrap()).unwrap())
}

#[test]
fn age_at_event_time_picks_the_tier_and_drops_pii_on_the_way_to_the_cloud() {
    let mut h = harness();
    assert_eq!(
        ports(&feed(&mut h, 1, &claim(1, 1, NOW, 20_000 - 30), 1)),
        ["hot"]
    );
    assert_eq!(
        ports(&feed(&mut h, 2, &claim(2, 2, NOW, 20_000 - 200), 2)),
        ["warm"]
    );
    assert_eq!(
        ports(&feed(&mut h, 3, &claim(3, 3, NOW, 20_000 - 800), 3)),
        ["cold"]
    );
    let out = feed(&mut h, 1, &claim(1, 4, NOW, 20_000 - 30), 4);
    let after = record_field(out[0].value.as_ref().unwrap(), "after").unwrap();
    assert_eq!(
        record_field(after, "diagnosis_codes"),
        Some(&Value::Union(0, Box::new(Value::Null))),
        "sensitive column removed before the hot tier"
    );
    let member = envelope(
        "members",
        5,
        NOW,
        vec![
            ("member_id", Value::Long(9)),
            (
                "ssn",
                Value::Union(1, Box::new(Value::String("123-45-6789".into()))),
            ),
        ],
    );
    let out = feed(&mut h, 9, &member, 5);
    assert_eq!(
        ports(&out),
        ["hot", "warm", "cold"],
        "reference rows go to every tier"
    );
    let ssn = |o: &Output| {
        record_field(
            record_field(o.value.as_ref().unwrap(), "after").unwrap(),
            "ssn",
        )
        .cloned()
    };
    assert_eq!(ssn(&out[0]), Some(Value::Union(0, Box::new(Value::Null))));
    assert_eq!(
        ssn(&out[2]),
        Some(Value::Union(
            1,
            Box::new(Value::String("123-45-6789".into()))
        )),
        "cold keeps PII"
    );
}

#[test]
fn a_claim_moves_on_when_the_watermark_passes_its_boundary() {
    let mut h = harness();
    // 80 days old: hot, with a timer at 90 days.
    assert_eq!(
        ports(&feed(&mut h, 1, &claim(1, 1, NOW, 20_000 - 80), 1)),
        ["hot"]
    );
    // Another claim's event 5 days later: no boundary passed yet.
    assert_eq!(
        ports(&feed(&mut h, 2, &claim(2, 2, NOW + 5 * DAY_MS, 20_005), 2)),
        ["hot"]
    );
    // 11 days later: claim 1 is 91 days old; it moves to warm (the row, then the move record).
    let out = feed(&mut h, 3, &claim(3, 3, NOW + 11 * DAY_MS, 20_011), 3);
    assert_eq!(ports(&out), ["hot", "warm", "moves"]);
    let moved = out[2].value.as_ref().unwrap();
    assert_eq!(
        record_field(moved, "to_tier"),
        Some(&Value::Enum(1, "WARM".into()))
    );
    assert_eq!(
        record_field(moved, "reason"),
        Some(&Value::Enum(0, "AGED".into()))
    );
    // A replayed run fires the same move at the same point.
    let mut again = harness();
    feed(&mut again, 1, &claim(1, 1, NOW, 20_000 - 80), 1);
    feed(&mut again, 2, &claim(2, 2, NOW + 5 * DAY_MS, 20_005), 2);
    assert_eq!(
        feed(&mut again, 3, &claim(3, 3, NOW + 11 * DAY_MS, 20_011), 3),
        out
    );
}

/// A member row through tiering with `mode`; returns (hot output's after, cold's after).
fn member_through(mode: &str, key_file: &std::path::Path, position: u64) -> (Value, Value) {
    member_with(
        &format!(
            "{{mode: {mode}, key_id: k1, key_file: '{}'}}",
            key_file.display()
        ),
        position,
    )
}

fn pii_config(pii: &str) -> TieringConfig {
    let config: TieringConfig = serde_yaml_ng::from_str(&format!("{{pii: {pii}}}")).unwrap();
    assert!(config.check().is_empty(), "{:?}", config.check());
    config
}

/// A member's hot and cold images through tiering with the `pii` policy (YAML).
fn member_with(pii: &str, position: u64) -> (Value, Value) {
    let config = pii_config(pii);
    let mut h = Harness::new(Tiering::new(config).expect("the key reads"));
    let member = envelope(
        "members",
        position,
        NOW,
        vec![
            ("member_id", Value::Long(9)),
            (
                "ssn",
                Value::Union(1, Box::new(Value::String("123-45-6789".into()))),
            ),
            (
                "date_of_birth",
                Value::Union(1, Box::new(Value::Date(3000))),
            ),
        ],
    );
    let out = feed(&mut h, 9, &member, position as i64);
    let after = |o: &Output| {
        record_field(o.value.as_ref().unwrap(), "after")
            .unwrap()
            .clone()
    };
    (after(&out[0]), after(&out[2]))
}

fn text_of(row: &Value, column: &str) -> Option<String> {
    match record_field(row, column) {
        Some(Value::Union(_, inner)) => match &**inner {
            Value::String(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn pii_is_encrypted_or_tokenised_for_the_cloud_and_kept_on_premise() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("pii.key");
    let key = [7u8; 32];
    std::fs::write(&key_file, hex::encode(key)).unwrap();

    let (hot, cold) = member_through("encrypt", &key_file, 5);
    let sealed = text_of(&hot, "ssn").expect("a text");
    assert!(sealed.starts_with("enc:k1:"), "{sealed}");
    assert!(!sealed.contains("123-45-6789"));
    assert_eq!(
        super::pii::decrypt(&sealed, &key).as_deref(),
        Some("123-45-6789"),
        "the key decrypts it"
    );
    assert_eq!(
        super::pii::decrypt(&sealed, &[8u8; 32]),
        None,
        "another key does not"
    );
    assert_eq!(
        record_field(&hot, "date_of_birth"),
        Some(&Value::Union(0, Box::new(Value::Null))),
        "a date cannot carry ciphertext: dropped"
    );
    assert_eq!(text_of(&cold, "ssn").as_deref(), Some("123-45-6789"));
    let (again, _) = member_through("encrypt", &key_file, 5);
    assert_eq!(
        text_of(&again, "ssn"),
        Some(sealed),
        "a replay writes the same bytes"
    );

    let (first, _) = member_through("tokenize", &key_file, 6);
    let (second, _) = member_through("tokenize", &key_file, 7);
    let token = text_of(&first, "ssn").expect("a token");
    assert!(
        token.starts_with("tok:") && !token.contains("6789"),
        "{token}"
    );
    assert_eq!(
        text_of(&second, "ssn"),
        Some(token),
        "equal values, equal tokens"
    );
}

#[test]
fn a_missing_or_short_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"too short").unwrap();
    let config = |path: &std::path::Path| -> TieringConfig {
        serde_yaml_ng::from_str(&format!(
            "{{pii: {{mode: encrypt, key_id: k1, key_file: '{}'}}}}",
            path.display()
        ))
        .unwrap()
    };
    let err = Tiering::new(config(&short))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("32-byte key"), "{err}");
    let err = Tiering::new(config(&dir.path().join("absent")))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("absent") && err.contains("32 random bytes"),
        "{err}"
    );
}

#[test]
fn rotated_keys_still_decrypt_what_they_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("k1.key");
    std::fs::write(&old_file, hex::encode([7u8; 32])).unwrap();
    // The new key comes from the environment.
    std::env::set_var("STRATA_TEST_PII_K2", hex::encode([9u8; 32]));
    let before = format!(
        "{{mode: encrypt, key_id: k1, key_file: '{}'}}",
        old_file.display()
    );
    let rotated = format!(
        "{{mode: encrypt, key_id: k2, key_env: STRATA_TEST_PII_K2, retired_keys: [{{id: k1, key_file: '{}'}}]}}",
        old_file.display()
    );
    let old = text_of(&member_with(&before, 5).0, "ssn").unwrap();
    let new = text_of(&member_with(&rotated, 6).0, "ssn").unwrap();
    assert!(
        old.starts_with("enc:k1:") && new.starts_with("enc:k2:"),
        "{old} {new}"
    );

    let keyring = super::pii::Keyring::from_policy(&pii_config(&rotated).pii).unwrap();
    assert_eq!(
        keyring.decrypt(&old).unwrap(),
        "123-45-6789",
        "the retired key"
    );
    assert_eq!(
        keyring.decrypt(&new).unwrap(),
        "123-45-6789",
        "the active key"
    );
    let tampered = format!("{}A{}", &new[..new.len() - 3], &new[new.len() - 2..]);
    assert!(matches!(
        keyring.decrypt(&tampered),
        Err(super::pii::PiiKeyError::Corrupt)
    ));
    let unknown = old.replacen("enc:k1:", "enc:k0:", 1);
    let err = keyring.decrypt(&unknown).unwrap_err();
    assert!(err.to_string().contains("retired_keys"), "{err}");
    // Without the retired key, the old value is refused by name.
    let forgot = "{mode: encrypt, key_id: k2, key_env: STRATA_TEST_PII_K2}";
    let keyring = super::pii::Keyring::from_policy(&pii_config(forgot).pii).unwrap();
    assert!(
        matches!(keyring.decrypt(&old), Err(super::pii::PiiKeyError::UnknownKey(id)) if id == "k1")
    );

    // A retired key that reuses the active id, or a key given twice, is refused.
    let clash: TieringConfig = serde_yaml_ng::from_str(&format!(
        "{{pii: {{mode: encrypt, key_id: k1, key_file: '{0}', retired_keys: [{{id: k1, key_file: '{0}'}}]}}}}",
        old_file.display()
    ))
    .unwrap();
    assert!(clash
        .check()
        .iter()
        .any(|e| e.path == "pii.retired_keys[0].id"));
    let twice: TieringConfig = serde_yaml_ng::from_str(&format!(
        "{{pii: {{mode: encrypt, key_id: k1, key_file: '{}', key_env: STRATA_TEST_PII_K2}}}}",
        old_file.display()
    ))
    .unwrap();
    assert!(twice.check().iter().any(|e| e.path == "pii.key_env"));
}

#[test]
fn an_analysis_reaches_the_cloud_without_quoting_a_sensitive_value() {
    let mut h = harness();
    feed(&mut h, 1, &claim(1, 1, NOW, 20_000 - 10), 0);
    let reason = |detail: &str| {
        Value::Record(vec![
            ("code".into(), Value::String("BAD_DIAGNOSIS_CODE".into())),
            ("contribution".into(), Value::Double(0.2)),
            ("detail".into(), Value::String(detail.into())),
        ])
    };
    let analysis = Value::Record(vec![
        ("analysis_id".into(), Value::String("a-1".into())),
        ("claim_id".into(), Value::Long(1)),
        (
            "reasons".into(),
            Value::Array(vec![
                reason("not ICD-10-CM: [\"E11.9\"]"),
                reason("diagnosis code(s) 1 of 1 not ICD-10-CM"),
            ]),
        ),
    ]);
    let out = feed(&mut h, 1, &analysis, 1);
    assert_eq!(ports(&out), vec!["hot"]);
    let Some(Value::Array(reasons)) = record_field(out[0].value.as_ref().unwrap(), "reasons")
    else {
        panic!("reasons: {:?}", out[0].value)
    };
    let details: Vec<_> = reasons
        .iter()
        .map(|r| record_field(r, "detail").cloned())
        .collect();
    assert_eq!(
        details,
        vec![
            Some(Value::String(
                "withheld: it quoted a sensitive value".into()
            )),
            Some(Value::String(
                "diagnosis code(s) 1 of 1 not ICD-10-CM".into()
            )),
        ]
    );
}

#[test]
fn no_sensitive_value_reaches_a_cloud_tier_in_any_mode() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("pii.key");
    std::fs::write(&key_file, hex::encode([9u8; 32])).unwrap();
    let text = |s: &str| Value::Union(1, Box::new(Value::String(s.into())));
    let secrets = [
        "Adaeze",
        "Okonkwo",
        "987-65-4321",
        "12 Hidden Lane",
        "Smallville",
        "04321",
        "Q99.9X",
    ];
    for mode in ["drop", "tokenize", "encrypt"] {
        let pii = match mode {
            "drop" => "{mode: drop}".to_string(),
            _ => format!(
                "{{mode: {mode}, key_id: k1, key_file: '{}'}}",
                key_file.display()
            ),
        };
        let mut h = Harness::new(Tiering::new(pii_config(&pii)).expect("the key reads"));
        let member = envelope(
            "members",
            1,
            NOW,
            vec![
                ("member_id", Value::Long(9)),
                ("first_name", text(secrets[0])),
                ("last_name", text(secrets[1])),
                ("ssn", text(secrets[2])),
                ("address_line", text(secrets[3])),
                ("city", text(secrets[4])),
                ("postal_code", text(secrets[5])),
                (
                    "date_of_birth",
                    Value::Union(1, Box::new(Value::Date(3000))),
                ),
            ],
        );
        let mut outputs = feed(&mut h, 9, &member, 0);
        let claim = envelope(
            "claims",
            2,
            NOW,
            vec![
                ("claim_id", Value::Long(1)),
                (
                    "service_date_from",
                    Value::Union(1, Box::new(Value::Date(20_000 - 10))),
                ),
                (
                    "diagnosis_codes",
                    Value::Union(
                        1,
                        Box::new(Value::Array(vec![Value::String(secrets[6].into())])),
                    ),
                ),
            ],
        );
        outputs.extend(feed(&mut h, 1, &claim, 1));
        let analysis = Value::Record(vec![
            ("analysis_id".into(), Value::String("a-1".into())),
            ("claim_id".into(), Value::Long(1)),
            (
                "reasons".into(),
                Value::Array(vec![Value::Record(vec![
                    ("code".into(), Value::String("BAD_DIAGNOSIS_CODE".into())),
                    ("contribution".into(), Value::Double(0.2)),
                    (
                        "detail".into(),
                        Value::String(format!("not ICD-10-CM: {}", secrets[6])),
                    ),
                ])]),
            ),
        ]);
        outputs.extend(feed(&mut h, 1, &analysis, 2));
        let cloud: Vec<&Output> = outputs
            .iter()
            .filter(|o| matches!(o.port.as_deref(), Some("hot") | Some("warm")))
            .collect();
        assert!(
            cloud.len() >= 4,
            "{mode}: member to hot and warm, claim and analysis to hot"
        );
        for o in cloud {
            let shown = format!("{:?}", o.value);
            for secret in secrets {
                assert!(
                    !shown.contains(secret),
                    "{mode}: {secret} reaches {:?}: {shown}",
                    o.port
                );
            }
            assert!(
                !shown.contains("Date(3000)"),
                "{mode}: a birth date reaches {:?}",
                o.port
            );
        }
        let cold = outputs
            .iter()
            .find(|o| o.port.as_deref() == Some("cold"))
            .expect("cold");
        assert!(
            format!("{:?}", cold.value).contains(secrets[2]),
            "{mode}: cold keeps it"
        );
    }
}
