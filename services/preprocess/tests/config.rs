//! configs/preprocess.yaml states the defaults.

use chexvision_config::{Config, Loader};
use chexvision_preprocess::PreprocessSettings;

#[test]
fn shipped_config_is_the_defaults() {
    let config: Config<PreprocessSettings> = Loader::new()
        .with_env(Vec::<(String, String)>::new())
        .file(Some(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/preprocess.yaml"
        )))
        .load()
        .unwrap();
    assert_eq!(config.service, PreprocessSettings::default());
}
