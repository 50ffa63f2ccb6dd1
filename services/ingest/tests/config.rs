//! configs/ingest.yaml states the defaults, and bad values are named.

use chexvision_config::{Config, Loader};
use chexvision_ingest::IngestSettings;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/ingest.yaml");

#[test]
fn shipped_config_is_the_defaults() {
    let config: Config<IngestSettings> = Loader::new()
        .with_env(Vec::<(String, String)>::new())
        .file(Some(CONFIG))
        .load()
        .unwrap();
    assert_eq!(config.service, IngestSettings::default());
}

#[test]
fn bad_value_names_key_and_origin() {
    let err = Loader::new()
        .with_env([("CHEXVISION_SERVICE__MAX_REJECTED_SHARE", "1.5")])
        .file(Some(CONFIG))
        .load::<Config<IngestSettings>>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("service.max_rejected_share"), "{err}");
    assert!(
        err.contains("CHEXVISION_SERVICE__MAX_REJECTED_SHARE"),
        "{err}"
    );
}
