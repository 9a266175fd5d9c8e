//! The configuration's tests: the shipped files, the environment's overrides, the bounds.

use super::*;

/// The production configuration file as shipped (`deploy/engine.toml`).
fn shipped() -> Config {
    toml::from_str(include_str!("../../../deploy/engine.toml")).expect("engine.toml")
}

/// The shipped configuration files parse (every key known) and listen on loopback only.
#[test]
fn the_shipped_configurations_parse_and_bind_loopback() {
    for file in ["engine.toml", "engine.dev.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let config: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for listen in [&config.grpc.listen, &config.metrics.listen] {
            let host = listen.rsplit_once(':').map_or(listen.as_str(), |(h, _)| h);
            assert!(
                listen.is_empty() || host == "127.0.0.1" || host == "[::1]",
                "{file} listens on {listen}"
            );
        }
    }
    // The shipped production file asks for tokens; only the demo's runs without.
    let shipped = shipped();
    assert!(!shipped.auth.allow_unauthenticated);
    assert!(shipped.auth.sources().unwrap().is_configured());
    let defaults = Config::default();
    assert!(!defaults.auth.allow_unauthenticated);
    assert!(defaults.grpc.listen.starts_with("127.0.0.1:"));
    assert!(defaults.metrics.listen.starts_with("127.0.0.1:"));
    assert!(!defaults.outputs.allow_private);
}

/// Inputs from the environment; a topic an input claims is read beside the events and
/// identities topics, and one the engine writes is refused at start, naming both.
#[test]
fn inputs_parse_and_their_topics_are_read() {
    let mut config = Config::default();
    config
        .set(
            "AUDIENCE_INPUTS",
            "ios@app-a:source=ios; feed@app-b:topic=audience-events:source=partner",
        )
        .unwrap();
    config
        .set("AUDIENCE_SOURCE_FIELD", "context.source")
        .unwrap();
    let settings = config.settings().unwrap();
    assert_eq!(settings.source_field, vec!["context", "source"]);
    let names: Vec<&str> = settings
        .inputs
        .inputs()
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, vec!["feed", "ios"], "the most specific first");
    assert_eq!(
        settings.input_topics,
        vec!["audience-events", "audience-identities"]
    );
    assert!(config.set("AUDIENCE_INPUTS", "ios:source=ios").is_err());
    assert!(config.set("AUDIENCE_INPUTS", "ios@a:src=ios").is_err());
    config
        .set("AUDIENCE_INPUTS", "tv@app-c:topic=tv-events")
        .unwrap();
    assert_eq!(
        config.settings().unwrap().input_topics,
        vec!["audience-events", "audience-identities", "tv-events"]
    );
    config
        .set("AUDIENCE_INPUTS", "tv@app-c:topic=audience-deltas")
        .unwrap();
    let refused = config.settings().unwrap_err().to_string();
    assert!(
        refused.contains("input \"tv\"") && refused.contains("\"audience-deltas\""),
        "{refused}"
    );
}

/// The bounds of a client's calls (review R4), from the file's defaults or the environment.
#[test]
fn grpc_call_bounds_come_from_the_environment() {
    let mut config = Config::default();
    let bounds = |c: &Config| (c.grpc.max_calls_per_connection, c.grpc.request_timeout_ms);
    assert_eq!(bounds(&config), (64, 60_000));
    let shipped = shipped();
    assert_eq!(bounds(&shipped), (64, 60_000));
    config
        .set("AUDIENCE_GRPC_MAX_CALLS_PER_CONNECTION", "8")
        .unwrap();
    config
        .set("AUDIENCE_GRPC_REQUEST_TIMEOUT_MS", "1500")
        .unwrap();
    assert_eq!(bounds(&config), (8, 1_500));
    let refused = config
        .set("AUDIENCE_GRPC_REQUEST_TIMEOUT_MS", "soon")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("AUDIENCE_GRPC_REQUEST_TIMEOUT_MS"),
        "{refused}"
    );
}

/// What the start-up log line prints holds no token and no Kafka credential.
#[test]
fn the_logged_configuration_hides_tokens_and_credentials() {
    let mut config = Config::default();
    config
        .set("AUDIENCE_TOKENS", "ops=tok3n-0123456789abcdef")
        .unwrap();
    config
        .set(
            "AUDIENCE_KAFKA_PROPERTIES",
            "sasl.username=engine,sasl.password=hunter2,security.protocol=SASL_SSL",
        )
        .unwrap();
    let logged = format!("{config:?}");
    assert!(
        !logged.contains("tok3n") && !logged.contains("hunter2"),
        "{logged}"
    );
    assert!(
        logged.contains("ops") && logged.contains("SASL_SSL"),
        "{logged}"
    );
}

#[test]
fn the_assignment_is_the_engines_with_the_changelog_unless_told_otherwise() {
    let mut cluster = ClusterConfig::default();
    assert!(!cluster.self_assigned().unwrap(), "no changelog: the group");
    cluster.changelog = true;
    assert!(
        cluster.self_assigned().unwrap(),
        "auto with the changelog: the engine"
    );
    cluster.assignment = "group".into();
    assert!(!cluster.self_assigned().unwrap());
    cluster.assignment = "engine".into();
    cluster.silent_after_ms = cluster.heartbeat_ms;
    let e = cluster.self_assigned().unwrap_err().to_string();
    assert!(e.contains("at least two heartbeats"), "{e}");
    cluster.changelog = false;
    let e = cluster.self_assigned().unwrap_err().to_string();
    assert!(e.contains("needs cluster.changelog = true"), "{e}");
    cluster.assignment = "sticky".into();
    let e = cluster.self_assigned().unwrap_err().to_string();
    assert!(e.contains("not \"sticky\""), "{e}");
}

/// RocksDB's memory budgets: the store's defaults, the shipped file's, and the environment's.
#[test]
fn storage_budgets_come_from_the_file_and_the_environment() {
    let defaults = audience_state::store::StoreOptions::default();
    assert_eq!(Config::default().storage.store_options(), defaults);
    let shipped = shipped();
    assert_eq!(shipped.storage.store_options(), defaults);
    let mut config = Config::default();
    config.set("AUDIENCE_STORE_CACHE_BYTES", "1048576").unwrap();
    config
        .set("AUDIENCE_STORE_WRITE_BUFFER_BYTES", "2097152")
        .unwrap();
    config.set("AUDIENCE_STORE_MMAP_READS", "true").unwrap();
    let options = config.storage.store_options();
    assert_eq!(
        (
            options.cache_bytes,
            options.write_buffer_bytes,
            options.mmap_reads
        ),
        (1 << 20, 2 << 20, true)
    );
    let refused = config
        .set("AUDIENCE_STORE_CACHE_BYTES", "lots")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("AUDIENCE_STORE_CACHE_BYTES"), "{refused}");
}

/// The profile cache is the largest memory budget outside RocksDB's: it is set from the file,
/// and from the environment without editing one.
#[test]
fn the_profile_cache_bound_comes_from_the_file_and_the_environment() {
    let shipped = shipped();
    assert_eq!(
        shipped.engine.max_cached_profiles,
        Config::default().engine.max_cached_profiles
    );
    let mut config = Config::default();
    config.set("AUDIENCE_MAX_CACHED_PROFILES", "2500").unwrap();
    assert_eq!(config.engine.max_cached_profiles, 2500);
    assert_eq!(config.settings().unwrap().max_cached_profiles, 2500);
    let refused = config
        .set("AUDIENCE_MAX_CACHED_PROFILES", "-1")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("AUDIENCE_MAX_CACHED_PROFILES"),
        "{refused}"
    );
}
