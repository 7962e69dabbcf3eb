use rdkafka::ClientConfig;

use crate::topology::KafkaSettings;

/// librdkafka settings for `settings`; producers add `enable.idempotence` themselves.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers);
    let protocol = match (settings.tls, settings.sasl_mechanism.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    config.set("security.protocol", protocol);
    if let Some(ca) = &settings.tls_ca_file {
        config.set("ssl.ca.location", ca.display().to_string());
    }
    if let Some(mechanism) = &settings.sasl_mechanism {
        config.set("sasl.mechanism", mechanism);
    }
    if let Some(user) = &settings.sasl_username {
        config.set("sasl.username", user);
    }
    if let Some(password) = &settings.sasl_password {
        config.set("sasl.password", password.expose());
    }
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
}

/// Consumer defaults that `kafka.properties` may override.
///
/// `fetch.wait.max.ms`: how long the broker may hold a fetch that found nothing. Kafka
/// answers as soon as records arrive, so a short wait only costs idle fetches; tansu
/// 0.6.0 holds every fetch for up to this long (half of it above 250 ms), even when it
/// has records, and each stage of a pipeline would add that to the latency.
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    set_defaults(&mut config, settings, &[("fetch.wait.max.ms", "10")]);
    config
}

/// Sets each (key, value) that `kafka.properties` does not set itself.
pub(super) fn set_defaults(
    config: &mut ClientConfig,
    settings: &KafkaSettings,
    defaults: &[(&str, &str)],
) {
    for (key, value) in defaults {
        if !settings.properties.contains_key(*key) {
            config.set(*key, *value);
        }
    }
}
