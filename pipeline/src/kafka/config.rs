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
