//! Any bytes as a Confluent-framed Avro change event: the compiled plan and apache-avro
//! never panic, and whatever the plan decodes, apache-avro decodes to the same value
//! (the plan's documented invariant).
#![no_main]
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use strata_fuzz::avro_plan::Plan;
use strata_fuzz::avro_wire as wire;

/// An envelope shaped like the CDC events: unions, decimals, dates, timestamps,
/// arrays, strings and a nested record.
const SCHEMA: &str = r#"{"type": "record", "name": "Envelope", "namespace": "fuzz", "fields": [
  {"name": "before", "type": ["null", {"type": "record", "name": "Value", "fields": [
    {"name": "claim_id", "type": "long"},
    {"name": "status", "type": ["null", "string"], "default": null},
    {"name": "amount", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}], "default": null},
    {"name": "service_date", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
    {"name": "updated_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": null},
    {"name": "codes", "type": ["null", {"type": "array", "items": ["null", "string"]}], "default": null},
    {"name": "paid", "type": ["null", "boolean"], "default": null},
    {"name": "ratio", "type": ["null", "double"], "default": null},
    {"name": "blob", "type": ["null", "bytes"], "default": null}
  ]}], "default": null},
  {"name": "after", "type": ["null", "Value"], "default": null},
  {"name": "op", "type": "string"},
  {"name": "ts_ms", "type": ["null", "long"], "default": null}
]}"#;

thread_local! {
    static DECODERS: (GenericDatumReader<'static>, Option<Plan>) = {
        let schema: &'static Schema =
            Box::leak(Box::new(Schema::parse_str(SCHEMA).expect("the fuzz schema parses")));
        let reader = GenericDatumReader::builder(schema)
            .build()
            .expect("a reader for the fuzz schema");
        (reader, Plan::compile(schema))
    };
}

// As the codec decodes: the plan when it takes the whole body, else apache-avro.
fuzz_target!(|data: &[u8]| {
    let body = match wire::split(data) {
        Ok((_, body)) => body,
        Err(_) => data,
    };
    DECODERS.with(|(reader, plan)| {
        let mut rest = body;
        let generic = reader
            .read_value(&mut rest)
            .ok()
            .filter(|_| rest.is_empty());
        if let Some(plan) = plan {
            let mut rest = body;
            if let Some(value) = plan.decode(&mut rest).filter(|_| rest.is_empty()) {
                assert_eq!(Some(value), generic, "the plan and apache-avro disagree");
            }
        }
    });
});
